#!/usr/bin/env bash
# The evaluation runs behind docs/results.md, on the embedded model. Both are resumable
# (rerun the same command after a kill) and can be split into shards
# (SHARDS=8 runs shards 0..7 as parallel processes; add --device cuda for the search
# and the optimality test on a GPU).
#   1. every task, 100 sentences each, every token a source, 50 Gauss-Legendre steps,
#      the optimality test against 20 random routes per source;
#   2. every task, 30 sentences each, every token, the default reference routes and
#      the ablation with mean and zero references (CPU only): 0.2.0's routes run,
#      superseded by scripts/run_routes.sh (100 per task).
# STEPS="agreement" (or "routes") runs one of them.
# Results go to runs/ (uncompressed); results/agreement_minilm/ holds the committed,
# compressed copies (scripts/compact_results.py) and scripts/make_results.sh makes
# docs/results.md from them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RUNS=${RUNS:-runs}
SHARDS=${SHARDS:-1}
mkdir -p "$RUNS"

run() {  # run OUTPUT ARGS...: the evaluation, in SHARDS parallel processes
    local out=$1; shift
    if [ "$SHARDS" -eq 1 ]; then
        "$PY" -m captum_influence_patterns evaluate "$@" --output "$out"
        return
    fi
    local pids=()
    for i in $(seq 0 $((SHARDS - 1))); do
        "$PY" -m captum_influence_patterns evaluate "$@" --shard "$i/$SHARDS" \
            --output "$out" -q &
        pids+=($!)
    done
    wait "${pids[@]}"
    "$PY" -m captum_influence_patterns evaluate --merge "$SHARDS" --delete-parts --output "$out"
}

STEPS=${STEPS:-agreement routes}
if [[ " $STEPS " == *" agreement "* ]]; then
    run "$RUNS/agreement.jsonl" --model embedded --tasks all --n-per-task 100 \
        --seed 0 --n-steps 50 --sources all --optimality 20 ${DEVICE:+--device "$DEVICE"}
fi
if [[ " $STEPS " == *" routes "* ]]; then
    run "$RUNS/routes.jsonl" --model embedded --tasks all --n-per-task 30 --seed 0 \
        --n-steps 50 --sources all --routes default \
        --ablation --ablation-reference mean zero
fi
