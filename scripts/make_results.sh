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
# complete RUN ITEMS: whether results/agreement_minilm/RUN.jsonl.gz holds a record for
# every line of ITEMS (a run in progress is reported on no page).
complete() {
    [ -f "$R/$1.jsonl.gz" ] && [ "$(gunzip -c "$R/$1.jsonl.gz" | grep -c .)" \
        -eq "$(grep -c . "$2")" ]
}
# The routes page: the 100-per-task run once it is complete, else 0.2.0's 30 per task.
ROUTES=routes
if complete routes100 "$R/items_100.jsonl"; then
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
NOTES=(--notes-summary "routes=$DOCS/_static/results_routes/summary.json")
# supplement RUN PAGE NAME TITLE: when results/agreement_minilm/RUN.jsonl.gz exists,
# docs/PAGE.md from it, and its summary for the discussion's NAME: placeholders.
supplement() {
    local run=$1 page=$2 name=$3 title=$4
    [ -f "$R/$run.jsonl.gz" ] || return 0
    gunzip -c "$R/$run.jsonl.gz" > "$TMP/$run.jsonl"
    cp "$R/$run.jsonl.meta.json" "$TMP/"
    "$PY" -m captum_influence_patterns report "$TMP/$run.jsonl" \
        --output "$DOCS/$page.md" --static "$DOCS/_static/$page" \
        --summary "$DOCS/_static/$page/summary.json" --title "$title"
    NOTES+=(--notes-summary "$name=$DOCS/_static/$page/summary.json")
}
# Claim 3 against the contribution-based routes, and the token-faithfulness measures
# (STAGE=peers scripts/run_routes.sh), once all 600 sentences are in.
if complete routes_peers "$R/items_100.jsonl"; then
    supplement routes_peers results_peers peers \
        "Claim 3 against the contribution-based routes, and token faithfulness"
fi
# The optimality test against the stronger opponents: on all 600 sentences once that
# run is complete, else on the first 60.
OPTIMALITY=optimality_subset
if complete optimality "$R/items_100.jsonl"; then
    OPTIMALITY=optimality
fi
supplement "$OPTIMALITY" results_optimality optimality \
    "The optimality test against stronger opponents"
# Claim 1's null (scripts/skip_null.py): random routes of the optimality subset's
# sources through the search's stage B.
supplement skip_null results_null null \
    "Claim 1 against random routes of the same sources"
# The beam's width and the exhaustive optimum (scripts/optimum_sweep.py) on the first
# sentences of the optimality subset.
supplement optimum_sweep results_sweep sweep \
    "The best route found against the beam's width and every route"
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
# The pre-registered SmolLM2 run's pages, once it is complete (one look).
DOCS=$DOCS PYTHON=$PY scripts/make_results_smollm2.sh
