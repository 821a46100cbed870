#!/usr/bin/env bash
# Claim 3 at n >= 100 per task: reference routes and ablation on the embedded model.
#   STAGE=routes (default): the 600 sentences of results/agreement_minilm/items_100.jsonl
#       (100 per task, seed 0, tasks interleaved: scripts/interleave_items.py), every
#       token a source, 50 Gauss-Legendre steps, the default reference routes and the
#       ablation with mean and zero references -> $RUNS/routes100.jsonl
#   STAGE=authors: the authors' protocol on the first 180 of them (30 per task):
#       --method authors --n-steps 51 --route-orientation attends, same routes and
#       ablation -> $RUNS/routes_authors.jsonl
#   STAGE=peers: the same 600 sentences with the default reference routes and the
#       contribution-based ones (alti, alti_logit, attention_norm, information_flow),
#       the ablation with mean and zero references, and the token-faithfulness
#       measures -> $RUNS/routes_peers.jsonl
#   STAGE=lm: the pre-registered run on SmolLM2 (docs/preregistration.md): 100
#       prefixes per task, the reference and contribution routes, the ablation and
#       the token-faithfulness measures -> $RUNS/lm_routes.jsonl
#   STAGE=lm_optimality: its optimality test on 10 prefixes per task
#       -> $RUNS/lm_optimality.jsonl
#   STAGE=optimality: the optimality test against every opponent (the optimum,
#       stay-then-jump, the best attention route, attention-drawn and uniform random
#       routes, 20 of each) on the first N_ITEMS of them (default 60: 10 per task),
#       50 steps, no reference routes -> $RUNS/optimality_subset.jsonl, or with
#       N_ITEMS=600 (every sentence) -> $RUNS/optimality.jsonl
# Resumable: rerun the same command after a kill (a fresh run must not mix with the
# 180-sentence routes.jsonl of 0.2.0: the mean reference is a mean over the run's own
# data set). SHARDS=k runs k round-robin shards as parallel processes and merges them.
# Every shard appends a line to $RUNS/<run>.log: commit (+dirty when the working tree
# differs from it), host, threads, start, end, exit status and records so far; RUNS.md
# copies these lines. Commit progress with
#   python scripts/compact_results.py $RUNS/routes100.jsonl results/agreement_minilm
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RUNS=${RUNS:-runs}
SHARDS=${SHARDS:-1}
STAGE=${STAGE:-routes}
ITEMS=${ITEMS:-results/agreement_minilm/items_100.jsonl}
mkdir -p "$RUNS"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

case "$STAGE" in
    routes)
        name=routes100
        input=$ITEMS
        protocol=(--n-steps 50)
        ;;
    authors)
        name=routes_authors
        input=$RUNS/items_authors.jsonl
        head -n 180 "$ITEMS" > "$input.tmp" && mv "$input.tmp" "$input"
        protocol=(--method authors --n-steps 51 --route-orientation attends)
        ;;
    peers)
        name=routes_peers
        input=$ITEMS
        protocol=(--n-steps 50 --faithfulness)
        ;;
    lm)
        name=lm_routes
        protocol=(--n-steps 50 --faithfulness)
        ;;
    lm_optimality)
        name=lm_optimality
        protocol=(--n-steps 50)
        ;;
    optimality)
        name=optimality_subset
        input=$RUNS/items_optimality.jsonl
        head -n "${N_ITEMS:-60}" "$ITEMS" > "$input.tmp" && mv "$input.tmp" "$input"
        if [ "$(grep -c . "$input")" -eq "$(grep -c . "$ITEMS")" ]; then
            name=optimality
        fi
        protocol=(--n-steps 50)
        ;;
    *)
        echo "STAGE must be routes, authors, peers, lm, lm_optimality or optimality, got $STAGE" >&2
        exit 2
        ;;
esac
out=$RUNS/$name.jsonl
case "$STAGE" in
    lm) args=(--model smollm2 --tasks all --n-per-task 100 --seed 0) ;;
    lm_optimality) args=(--model smollm2 --tasks all --n-per-task 10 --seed 0) ;;
    *) args=(--model embedded --input "$input") ;;
esac
args+=(--sources all "${protocol[@]}")
case "$STAGE" in
    lm*) args+=(--tolerance 0.05 --max-steps 400) ;;
esac
if [ "$STAGE" = optimality ] || [ "$STAGE" = lm_optimality ]; then
    args+=(--optimality 20)
elif [ "$STAGE" = peers ] || [ "$STAGE" = lm ]; then
    args+=(--routes default,alti,alti_logit,attention_norm,information_flow --ablation
           --ablation-reference mean zero)
else
    args+=(--routes default --ablation --ablation-reference mean zero)
fi

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- captum_influence_patterns 2>/dev/null || commit="$commit+dirty"

records() {  # records written so far (the output and any shard parts)
    cat "$out" "$out".part-*-of-*.jsonl 2>/dev/null | grep -c . || true
}

shard() {  # shard INDEX: one process, logged
    local i=$1 start status=0
    start=$(date -u +%FT%TZ)
    if [ "$SHARDS" -eq 1 ]; then
        "$PY" -m captum_influence_patterns evaluate "${args[@]}" --output "$out" \
            || status=$?
    else
        "$PY" -m captum_influence_patterns evaluate "${args[@]}" \
            --shard "$i/$SHARDS" --output "$out" -q || status=$?
    fi
    echo "shard $i/$SHARDS commit $commit host $(hostname) threads" \
        "$OMP_NUM_THREADS start $start end $(date -u +%FT%TZ) status $status" \
        "records $(records)" >> "$RUNS/$name.log"
    return "$status"
}

if [ "$SHARDS" -eq 1 ]; then
    shard 0
else
    pids=()
    for i in $(seq 0 $((SHARDS - 1))); do
        shard "$i" &
        pids+=($!)
    done
    wait "${pids[@]}"
    "$PY" -m captum_influence_patterns evaluate --merge "$SHARDS" --delete-parts --output "$out"
fi
