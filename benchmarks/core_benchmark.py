"""Speed of the pattern search next to Captum's LayerIntegratedGradients, in one
process.

A randomly initialised 6-layer, 384-hidden, 12-head BERT masked LM, an 11-token input
with [MASK] at position 6, 50 steps. Times (median of interleaved repeats, so machine
noise hits every method alike) for:

- LIG: Captum's LayerIntegratedGradients over all tokens (one pass of 50 rows);
- fast: the fast schedule, both stages, all 10 source tokens;
- reference: the literal per-layer schedule, both stages, all 10 source tokens.

Peak memory is each method's peak resident set size, measured in a fresh child process.

Run: ``python benchmarks/core_benchmark.py [--repeats 3] [--threads N]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from typing import Callable, Dict, List

import torch
from captum.attr import LayerIntegratedGradients
from transformers import BertConfig, BertForMaskedLM

from captum_influence_patterns import (
    InfluencePatterns,
    analysis_mode,
    masked_lm_logit_difference,
)

LENGTH, OUTPUT, STEPS, MASK = 11, 6, 50, 103


def build() -> tuple:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
    )
    model = BertForMaskedLM(config).eval()
    ids = torch.randint(1000, 2000, (1, LENGTH))
    ids[0, OUTPUT] = MASK
    args = (torch.tensor([OUTPUT]), torch.tensor([2003]), torch.tensor([2024]))
    return model, ids, args


def methods(model, ids, args) -> Dict[str, Callable[[], object]]:
    forward = masked_lm_logit_difference(model)
    ip = InfluencePatterns(forward, model)
    lig = LayerIntegratedGradients(forward, model.bert.embeddings.word_embeddings)
    baseline = torch.full_like(ids, MASK)

    def run_lig():
        with analysis_mode(model):  # same eager attention as the search, like for like
            return lig.attribute(
                ids, baseline, additional_forward_args=args, n_steps=STEPS
            )

    def search(schedule):
        return lambda: ip.attribute(
            ids,
            baselines=MASK,
            additional_forward_args=args,
            output_position=OUTPUT,
            n_steps=STEPS,
            schedule=schedule,
        )

    return {"LIG": run_lig, "fast": search("fast"), "reference": search("reference")}


def resident_peak_mib() -> float:
    # VmHWM belongs to this process image (ru_maxrss would carry the parent's over
    # exec).
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def interleaved_times(
    runs: Dict[str, Callable[[], object]], repeats: int, warm_up: bool = True
) -> Dict[str, List[float]]:
    """Each run's seconds in ``repeats`` rounds of one call of every run (interleaved,
    so machine noise hits every method alike), after one warm-up call of each unless
    ``warm_up`` is False."""
    if warm_up:
        for run in runs.values():
            run()
    times: Dict[str, List[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def _peak_memory(name: str, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    model, ids, args = build()
    before = resident_peak_mib()
    methods(model, ids, args)[name]()
    queue.put((before, resident_peak_mib()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-reference", action="store_true")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    model, ids, args = build()
    runs = methods(model, ids, args)
    if options.skip_reference:
        runs.pop("reference")
    times = interleaved_times(runs, options.repeats)
    median = {name: statistics.median(values) for name, values in times.items()}
    sources = LENGTH - 1
    print(
        f"torch {torch.__version__}, {options.threads} threads, "
        f"{options.repeats} repeats (median)"
    )
    print(
        f"BERT 6 layers x 384 hidden x 12 heads, {LENGTH} tokens, {STEPS} steps, "
        f"{sources} source tokens"
    )
    for name, seconds in median.items():
        print(f"  {name:<10} {seconds:8.3f} s")
    per_source = median["fast"] / sources
    print(
        f"fast per source token / LIG          : {per_source / median['LIG']:.2f} x "
        "(bar: <= 3, goal: <= 1)"
    )
    if "reference" in median:
        print(
            f"reference / fast (speed-up)          : "
            f"{median['reference'] / median['fast']:.1f} x (bar: >= 10)"
        )
    context = multiprocessing.get_context("spawn")
    print("peak resident memory in a fresh process (MiB; model + method):")
    for name in runs:
        queue = context.Queue()
        child = context.Process(
            target=_peak_memory, args=(name, options.threads, queue)
        )
        child.start()
        before, after = queue.get()
        child.join()
        print(f"  {name:<10} {after:8.0f} (model and inputs alone: {before:.0f})")


if __name__ == "__main__":
    main()
