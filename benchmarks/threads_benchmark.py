"""Threads: the search's time at 1 thread and at every core, next to what
:func:`captum_influence_patterns.utils.threads.fastest_threads` chooses.

The case ``explain`` runs: the embedded all-MiniLM-L6-v2 with its linear agreement
readout, one agreement sentence, every token a source, 50 steps. Each round runs the
calibration, then the search at each thread count (the order rotates per round);
the table gives medians over rounds and how often the calibration chose each count.

Run: ``python benchmarks/threads_benchmark.py [--rounds 5]`` (without
``OMP_NUM_THREADS``, so that torch may use every core).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch

from captum_influence_patterns.paper.datasets import task_items
from captum_influence_patterns.models.explanation import explain, prepare_explanation
from captum_influence_patterns.models.loading import load_model
from captum_influence_patterns.utils.threads import available_cores, fastest_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    loaded = load_model(None)
    item = task_items(["sva_obj_rc"], 1, loaded.tokenizer)[0]
    explanation = prepare_explanation(loaded, item.text, item.target, item.contrast)
    counts = sorted({1, available_cores()})
    times = {n: [] for n in counts}
    chosen: Counter = Counter()
    explain(loaded, explanation, n_steps=50)  # warm-up
    for round_ in range(args.rounds):
        chosen[fastest_threads()["threads"]] += 1
        order = counts[round_ % len(counts):] + counts[: round_ % len(counts)]
        for n in order:
            torch.set_num_threads(n)
            start = time.perf_counter()
            explain(loaded, explanation, n_steps=50)
            times[n].append(time.perf_counter() - start)
    for n in counts:
        print(
            f"{n} thread(s): search {statistics.median(times[n]):.2f} s "
            f"(runs: {', '.join(f'{t:.1f}' for t in times[n])}); "
            f"calibration chose it {chosen[n]}/{args.rounds}"
        )


if __name__ == "__main__":
    main()
