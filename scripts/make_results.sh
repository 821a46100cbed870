#!/usr/bin/env bash
# docs/results.md and docs/results_routes.md (with their figures) from the committed
# results in results/agreement_minilm/ (the discussion is its discussion.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
R=results/agreement_minilm
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for name in agreement routes; do
    gunzip -c "$R/$name.jsonl.gz" > "$TMP/$name.jsonl"
    cp "$R/$name.jsonl.meta.json" "$TMP/"
done
"$PY" -m captum_influence_patterns report "$TMP/agreement.jsonl" \
    --output docs/results.md --static docs/_static/results \
    --notes "$R/discussion.md" --summary "$R/summary.json" \
    --title "Results on the agreement tasks"
"$PY" -m captum_influence_patterns report "$TMP/routes.jsonl" \
    --output docs/results_routes.md --static docs/_static/results_routes \
    --summary "$R/summary_routes.json" \
    --title "Reference routes and ablation on the agreement tasks"
