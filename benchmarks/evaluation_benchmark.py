"""Cost per sentence of the evaluation on the embedded model: time and peak memory.

The case ``evaluate`` runs: the embedded all-MiniLM-L6-v2 with its linear agreement
readout, generated agreement sentences, every token a source, the ``[MASK]`` baseline,
50 Gauss-Legendre steps. Phases, each run as :func:`evaluate_example` with the settings
of one ``evaluate`` option:

- ``search``: the pattern search alone (no option);
- ``optimality``: ``--optimality 20`` (the search, then the optimality test);
- ``routes``: ``--routes default``;
- ``ablation``: ``--routes default --ablation`` (routes plus ablation).

Every phase runs in its own child process, so that each reports its own peak resident
memory (``ru_maxrss``; loading the model is included and reported alone as ``load``).
Within a child the sentences run one after the other; the time per sentence is the
median over them (the first sentence warms up and is left out of the median when more
than one ran). The parent prints one table.

Run: ``python benchmarks/evaluation_benchmark.py [--n 3] [--threads 1]
[--phases search,optimality,routes,ablation] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List

PHASES = {
    "load": {},
    "search": {},
    "optimality": {"optimality": 20},
    "routes": {"routes": "default"},
    "ablation": {"routes": "default", "ablation": True},
}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(phase: str, n: int, threads: int) -> Dict[str, Any]:
    """Run one phase in this process; the numbers as a dict."""
    import torch

    torch.set_num_threads(threads)
    from captum_influence_patterns.paper.datasets import task_items
    from captum_influence_patterns.paper.example import (
        AblationReferences,
        evaluate_example,
    )
    from captum_influence_patterns.paper.settings import EvaluationSettings
    from captum_influence_patterns.models.loading import load_model
    from captum_influence_patterns.routes.compare import DEFAULT_METHODS

    loaded = load_model(None)
    items = task_items(["sva_obj_rc"], n + 1, loaded.tokenizer, seed=0)[: n + 1]
    options = dict(PHASES[phase])
    if options.get("routes") == "default":
        options["routes"] = DEFAULT_METHODS
    settings = EvaluationSettings(**options)
    references = AblationReferences(loaded, items, settings)
    seconds: List[float] = []
    sources: List[int] = []
    if phase != "load":
        if settings.ablation:
            references.for_task(items[0].task)  # the task's means: once per run
        for item in items:
            start = time.perf_counter()
            record = evaluate_example(loaded, item, settings, references)
            seconds.append(time.perf_counter() - start)
            sources.append(len(record["sources"]))
    timed = seconds[1:] if len(seconds) > 1 else seconds
    return {
        "phase": phase,
        "threads": threads,
        "sentences": len(timed),
        "sources": statistics.median(sources) if sources else 0,
        "seconds": statistics.median(timed) if timed else 0.0,
        "all_seconds": seconds,
        "peak_mb": _peak_mb(),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3, help="timed sentences per phase")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--phases", default=",".join(PHASES), help="comma-separated phases to time"
    )
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.threads)))
        return
    rows = []
    for phase in args.phases.split(","):
        command = [sys.executable, __file__, "--child", phase, "--n", str(args.n),
                   "--threads", str(args.threads)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        output = subprocess.run(
            command, env=env, check=True, capture_output=True, text=True
        ).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        row = rows[-1]
        print(
            f"{row['phase']:<11} {row['seconds']:7.2f} s/sentence  "
            f"peak {row['peak_mb']:7.0f} MB  ({row['sentences']} sentences, "
            f"{row['sources']} sources, {row['threads']} thread(s); all: "
            f"{', '.join(f'{s:.1f}' for s in row['all_seconds'])})",
            flush=True,
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
