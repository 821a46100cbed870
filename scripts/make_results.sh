#!/usr/bin/env bash
# docs/results.md and docs/results_routes.md (with their figures and summary.json) from
# the committed results in results/agreement_minilm/. The discussion, appended to
# results.md, is the template results/agreement_minilm/discussion.md with every number
# filled in from the two summaries (the routes page's first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
R=results/agreement_minilm
DOCS=${DOCS:-docs}  # where the pages go (the tests write elsewhere)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# The routes page: the 100-per-task run once it is complete, else 0.2.0's 30 per task.
ROUTES=routes
if [ -f "$R/routes100.jsonl.gz" ] && [ "$(gunzip -c "$R/routes100.jsonl.gz" | grep -c .)" \
        -eq "$(grep -c . "$R/items_100.jsonl")" ]; then
    ROUTES=routes100
fi
for name in agreement "$ROUTES"; do
    gunzip -c "$R/$name.jsonl.gz" > "$TMP/$name.jsonl"
    cp "$R/$name.jsonl.meta.json" "$TMP/"
done
"$PY" -m captum_influence_patterns report "$TMP/$ROUTES.jsonl" \
    --output "$DOCS/results_routes.md" --static "$DOCS/_static/results_routes" \
    --summary "$DOCS/_static/results_routes/summary.json" \
    --title "Reference routes and ablation on the agreement tasks"
# The optimality test against the stronger opponents, on a subset, once it has run.
NOTES=(--notes-summary "routes=$DOCS/_static/results_routes/summary.json")
if [ -f "$R/optimality_subset.jsonl.gz" ]; then
    gunzip -c "$R/optimality_subset.jsonl.gz" > "$TMP/optimality_subset.jsonl"
    cp "$R/optimality_subset.jsonl.meta.json" "$TMP/"
    "$PY" -m captum_influence_patterns report "$TMP/optimality_subset.jsonl" \
        --output "$DOCS/results_optimality.md" \
        --static "$DOCS/_static/results_optimality" \
        --summary "$DOCS/_static/results_optimality/summary.json" \
        --title "The optimality test against stronger opponents"
    NOTES+=(--notes-summary
            "optimality=$DOCS/_static/results_optimality/summary.json")
fi
# Claim 1's null (scripts/skip_null.py): random routes of the optimality subset's
# sources through the search's stage B.
if [ -f "$R/skip_null.jsonl.gz" ]; then
    gunzip -c "$R/skip_null.jsonl.gz" > "$TMP/skip_null.jsonl"
    cp "$R/skip_null.jsonl.meta.json" "$TMP/"
    "$PY" -m captum_influence_patterns report "$TMP/skip_null.jsonl" \
        --output "$DOCS/results_null.md" --static "$DOCS/_static/results_null" \
        --summary "$DOCS/_static/results_null/summary.json" \
        --title "Claim 1 against random routes of the same sources"
    NOTES+=(--notes-summary "null=$DOCS/_static/results_null/summary.json")
fi
# The authors' protocol (a second run on the first sentences of the 100-per-task run),
# and our protocol on the same sentences, for the discussion's comparison.
if [ -f "$R/routes_authors.jsonl.gz" ]; then
    gunzip -c "$R/routes_authors.jsonl.gz" > "$TMP/routes_authors.jsonl"
    cp "$R/routes_authors.jsonl.meta.json" "$TMP/"
    "$PY" -m captum_influence_patterns report "$TMP/routes_authors.jsonl" \
        --output "$DOCS/results_authors.md" \
        --static "$DOCS/_static/results_authors" \
        --summary "$DOCS/_static/results_authors/summary.json" \
        --title "Reference routes and ablation under the authors' protocol"
    gunzip -c "$R/routes100.jsonl.gz" > "$TMP/routes100_all.jsonl"
    cp "$R/routes100.jsonl.meta.json" "$TMP/routes100_all.jsonl.meta.json"
    "$PY" scripts/select_records.py "$TMP/routes100_all.jsonl" \
        "$TMP/routes_authors.jsonl" "$TMP/same_sentences.jsonl" > /dev/null
    "$PY" -m captum_influence_patterns report "$TMP/same_sentences.jsonl" \
        --output "$TMP/same_sentences.md" --static "$TMP/same_static" \
        --summary "$DOCS/_static/results_authors/ours_same_sentences.json" -q \
        > /dev/null
    NOTES+=(--notes-summary "authors=$DOCS/_static/results_authors/summary.json"
            --notes-summary
            "same=$DOCS/_static/results_authors/ours_same_sentences.json")
fi
"$PY" -m captum_influence_patterns report "$TMP/agreement.jsonl" \
    --output "$DOCS/results.md" --static "$DOCS/_static/results" \
    --notes "$R/discussion.md" "${NOTES[@]}" --claims-from 3=routes \
    --summary "$DOCS/_static/results/summary.json" \
    --title "Results on the agreement tasks"
