#!/usr/bin/env bash
# docs/results_smollm2.md, with results_smollm2_optimality.md and
# results_smollm2_null.md (their figures and summaries), from the pre-registered SmolLM2
# run in results/agreement_smollm2/ (docs/preregistration.md). The plan allows one look,
# so nothing is made until run 1 (600 prefixes), run 2 (60) and claim 1's null (30) are
# all complete. Prefixes that did not converge are left out of every page
# (--exclude-unconverged), and claim 3 shows no sequential looks: the sample size and
# stopping rule were fixed in advance (--one-look). The discussion,
# results/agreement_smollm2/discussion.md with every number filled in, compares the
# claims with the encoder probe's pages, which scripts/make_results.sh makes before it
# calls this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
S=${SMOLLM2_RESULTS:-results/agreement_smollm2}
DOCS=${DOCS:-docs}
MINILM=${MINILM_STATIC:-$DOCS/_static}  # the encoder probe's summaries
records() {  # records RUN: the lines of $S/RUN.jsonl.gz (0 when absent)
    if [ -f "$S/$1.jsonl.gz" ]; then gunzip -c "$S/$1.jsonl.gz" | grep -c . || true
    else echo 0; fi
}
run1=$(records lm_routes) run2=$(records lm_optimality) null=$(records lm_skip_null)
if [ "$run1" -ne 600 ] || [ "$run2" -ne 60 ] || [ "$null" -ne 30 ]; then
    echo "make_results_smollm2: the pre-registered run is in progress (run 1 $run1 of" \
        "600, run 2 $run2 of 60, the null $null of 30): no page yet" >&2
    exit 0
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
page() {  # page RUN PAGE TITLE [report options]
    local run=$1 name=$2 title=$3
    shift 3
    gunzip -c "$S/$run.jsonl.gz" > "$TMP/$run.jsonl"
    cp "$S/$run.jsonl.meta.json" "$TMP/"
    "$PY" -m captum_influence_patterns report "$TMP/$run.jsonl" \
        --exclude-unconverged --one-look --output "$DOCS/$name.md" \
        --static "$DOCS/_static/$name" --summary "$DOCS/_static/$name/summary.json" \
        --title "$title" "$@"
}
page lm_optimality results_smollm2_optimality "SmolLM2: the optimality test (run 2)"
page lm_skip_null results_smollm2_null "SmolLM2: claim 1 against random routes"
page lm_routes results_smollm2 \
    "SmolLM2-135M: the paper's claims on a language model's own predictions" \
    --notes "$S/discussion.md" \
    --notes-summary "optimality=$DOCS/_static/results_smollm2_optimality/summary.json" \
    --notes-summary "null=$DOCS/_static/results_smollm2_null/summary.json" \
    --notes-summary "minilm=$MINILM/results/summary.json" \
    --notes-summary "minilm_peers=$MINILM/results_peers/summary.json" \
    --notes-summary "minilm_optimality=$MINILM/results_optimality/summary.json" \
    --notes-summary "minilm_null=$MINILM/results_null/summary.json"
