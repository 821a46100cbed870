"""The null for claim 1: the skip's share of the candidate flow along random routes of
the same sources, beside the guided routes' own.

For the first N sentences of an evaluation run (its records give the text, the words,
every source, its search sign and its guided route), the guided route's positions and
DRAWS routes of each source drawn uniformly among the valid routes
(``routes.opponents.random_positions``) and DRAWS drawn in proportion to attention
(``routes.opponents.attention_positions`` on the rollout matrices) go through the search's
stage B alone (``rowwise.rowwise_nodes``): at each layer, the head-or-skip choice and
the candidates' influences at the route's position, as the search computes them along
its own route. The skip's share of the candidate flow is then computed the same way
for the three kinds (``metrics.skip_null``). The guided rows recompute the recorded
``node_candidates``; their largest relative difference is kept in each record
(``skip_null_check``).

    python scripts/skip_null.py RECORDS.jsonl[.gz] OUT.jsonl [--sentences 30]
        [--draws 5] [--seed 0]

The model, the baseline and the steps are the run's: the model and baseline named in
RECORDS' meta file (``RECORDS.meta.json``, beside it), each sentence at the steps its
record used (a converged run doubles them per sentence), else ``--n-steps``.
``--per-task K`` takes the first K records of each task in place of the first N (a
language-model run lists its prefixes task by task).

    python scripts/skip_null.py results/agreement_smollm2/lm_routes.jsonl.gz
        runs/lm_skip_null.jsonl --per-task 5 --draws 4

Resumable: sentences already in OUT are skipped; one line per sentence, written when
it is done; OUT.meta.json holds the settings (the input named as it lies in the results
folder, beside the null's records). The records keep the run's fields the report reads,
with ``skip_null``: kind -> patterns (several per source for the random kinds).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import time

import torch
from tqdm.auto import tqdm

from captum_influence_patterns.attribution import InfluencePatterns
from captum_influence_patterns.graph import analysis_mode
from captum_influence_patterns.models.explanation import prepare_explanation
from captum_influence_patterns.models.loading import load_model
from captum_influence_patterns.routes.opponents import (
    attention_positions,
    random_positions,
)
from captum_influence_patterns.routes.attention import (
    capture_attention,
    rollout_matrices,
)
from captum_influence_patterns.search.rowwise.driver import rowwise_nodes

#: The fields of a run's record kept in the null's records.
KEPT = ("id", "index", "task", "form", "text", "tokens", "input_ids", "roles",
        "output_position", "correct", "wrong", "qoi", "prediction_correct", "sources",
        "source_roles", "token_influence", "convergence_delta", "patterns")


def read_lines(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def records_parser(description, sentences):
    """The arguments every script over a run's records takes: the records, the output
    and how many sentences (the first N, or the first K of each task)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("records")
    parser.add_argument("output")
    parser.add_argument("--sentences", type=int, default=sentences)
    parser.add_argument("--per-task", type=int, default=None, metavar="K")
    return parser


def run_meta(records):
    """The meta file of the run whose records lie at ``records`` (``.gz`` or not)."""
    path = records[:-3] if records.endswith(".gz") else records
    with open(path + ".meta.json", encoding="utf-8") as handle:
        return json.load(handle)


def chosen_records(args):
    """The records the script runs on, by index: the first ``args.sentences``, or the
    first ``args.per_task`` of each task, of those that converged."""
    records = sorted(read_lines(args.records), key=lambda r: r["index"])
    # The pre-registered rule: a sentence whose integral did not converge counts in
    # nothing.
    records = [r for r in records
               if (r.get("convergence") or {}).get("converged", True)]
    if args.per_task is None:
        return records[: args.sentences]
    counts = {}
    chosen = []
    for record in records:
        counts[record["task"]] = counts.get(record["task"], 0) + 1
        if counts[record["task"]] <= args.per_task:
            chosen.append(record)
    return chosen


def open_run(args, run, records, settings):
    """The ids already in ``args.output`` (resuming), after writing OUT.meta.json with
    the model of ``run`` (the run's meta, :func:`run_meta`), the count of ``records``
    and ``settings``."""
    meta = {
        "model": run["model"],
        # the run's records lie beside these in the results folder
        "dataset": {"input": os.path.basename(args.records),
                    "sentences": len(records)},
        "settings": settings,
    }
    with open(args.output + ".meta.json", "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=1)
    if not os.path.exists(args.output):
        return set()
    return {r["id"] for r in read_lines(args.output)}


def append_line(output, line, start, check):
    """Appends one sentence's ``line`` to ``output``; reports its time and ``check``."""
    with open(output, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
    print(f"{line['id']}: {time.time() - start:.1f} s, check {line[check]:.1e}",
          file=sys.stderr)


def null_record(loaded, record, draws, seed, n_steps, baseline):
    explanation = prepare_explanation(
        loaded, record["text"], record["correct"], record["wrong"], baseline=baseline
    )
    n_steps = record.get("n_steps", n_steps)
    if explanation.input_ids[0].tolist() != record["input_ids"]:
        raise SystemExit(f"{record['id']}: the tokens differ from the record's")
    ip = InfluencePatterns(explanation.forward_func, loaded.model)
    request = explanation.request(ip, n_steps=n_steps, method="gausslegendre")
    rng = random.Random(f"{seed}/{record['id']}")
    output = record["output_position"]
    kinds, positions, signs = [], [], []
    with analysis_mode(loaded.model):
        problem = ip.request_problem(request, 0)
        attention = capture_attention(ip.model, ip.forward_func, request.inputs,
                                      request.additional_forward_args, ip.graph)[0]
        matrices = rollout_matrices(attention)
        layers, length = attention.shape[0], attention.shape[-1]
        for pattern in record["patterns"]:
            source, sign = pattern["source"], pattern["sign"]
            rows = [("guided", pattern["positions"])]
            for _ in range(draws):
                rows.append(("uniform_random", random_positions(
                    source, output, length, layers, causal=ip.graph.is_causal,
                    rng=rng)))
                drawn = attention_positions(matrices, source, output, rng)
                if drawn is not None:
                    rows.append(("attention_random", drawn))
            for kind, route in rows:
                kinds.append(kind)
                positions.append(route)
                signs.append(sign)
        state = rowwise_nodes(problem, torch.tensor(positions),
                              torch.tensor(signs, dtype=problem.delta.dtype))
    found = state.patterns(torch.tensor(record["token_influence"]))
    out = {key: record[key] for key in KEPT if key in record}
    out["skip_null"] = {}
    for kind, pattern in zip(kinds, found):
        row = pattern.to_dict()
        row.pop("position_candidates", None)  # stage A did not run: zeros
        out["skip_null"].setdefault(kind, []).append(row)
    worst = 0.0
    for old, new in zip(record["patterns"], out["skip_null"]["guided"]):
        scale = max(abs(v) for row in old["node_candidates"] for v in row)
        diff = max(abs(a - b) for r, s in zip(old["node_candidates"],
                                              new["node_candidates"])
                   for a, b in zip(r, s))
        worst = max(worst, diff / scale if scale else diff)
    out["skip_null_check"] = worst
    out["skip_null_settings"] = {"draws": draws, "seed": seed, "n_steps": n_steps}
    return out


def main(argv=None):
    parser = records_parser(__doc__.splitlines()[0], sentences=30)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-steps", type=int, default=50,
                        help="steps for records that do not carry their own")
    args = parser.parse_args(argv)
    run = run_meta(args.records)
    baseline = run["settings"].get("baseline", "mask")
    records = chosen_records(args)
    steps = {r.get("n_steps", args.n_steps) for r in records}
    done = open_run(args, run, records, {
        "n_steps": args.n_steps if steps == {args.n_steps} else "the record's",
        "method": "gausslegendre", "sources": "all", "baseline": baseline,
        "skip_null_draws": args.draws, "seed": args.seed,
    })
    # The run's meta names the model as loaded ("embedded (all-MiniLM-L6-v2 + ...)").
    loaded = load_model(run["model"].split()[0])
    for record in tqdm([r for r in records if r["id"] not in done], desc="skip null"):
        start = time.time()
        line = null_record(loaded, record, args.draws, args.seed, args.n_steps,
                           baseline)
        append_line(args.output, line, start, "skip_null_check")


if __name__ == "__main__":
    main()
