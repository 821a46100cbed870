#!/usr/bin/env bash
# The evaluation run behind docs/results.md (shared 2-core CPU, one thread: 25 min).
# Per task: 20 generated sentences (5 per form), n_steps 20, role sources (subject,
# attractor, verbs), the default baselines, ablation with mean and zero references.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/work/venv/bin/python}
OUT=${OUT:-/work/runs/agreement_minilm.jsonl}
mkdir -p "$(dirname "$OUT")"

# Resumable: rerunning the same command continues where a killed run stopped.
PYTHONPATH=. "$PY" -m captum_influence_patterns evaluate \
    --model embedded --tasks all --n-per-task 20 --seed 0 --n-steps 20 \
    --sources roles --baselines default \
    --ablation --ablation-reference mean zero \
    --threads 1 --output "$OUT"

PYTHONPATH=. "$PY" -m captum_influence_patterns report "$OUT" \
    --output docs/results.md --static docs/_static/results \
    --notes docs/_static/results/discussion.md \
    --summary "$(dirname "$OUT")/summary.json"
