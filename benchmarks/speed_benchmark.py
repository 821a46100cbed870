"""Patterns for every source next to Captum's LayerIntegratedGradients, at real lengths.

Randomly initialised (seed 0) BERT encoders of the embedded model's size (384 hidden,
12 heads, 1536 intermediate) with 6 or 12 layers, 50 Gauss-Legendre steps, the [MASK]
id as baseline, every position except the output position as a source. Two heads:

- ``headless``: ``BertModel`` (no pooler) with a linear readout of the output position,
  the embedded model's case (LIG pays for the encoder only);
- ``masked-lm``: ``BertForMaskedLM`` with the logit difference of two words at [MASK]
  (LIG also pays for the 30,522-way decoder at every position and step).

LIG is ``captum.attr.LayerIntegratedGradients`` on the word embeddings with the same
``n_steps``, method, baseline and ``internal_batch_size`` (None: all steps in one pass),
under the same eager attention. The two run as interleaved pairs in one process (the
order alternates), and the reported ratio is the median over pairs of

    per-source ratio = patterns time / (LIG time x number of sources).

``--variants`` adds the schedules that came before, for the record of what each step
bought: ``forward-mode`` (the generic forward-mode schedule with its automatic
chunking) and ``forward-mode-all`` (the same with every source in one pass, the old
default). Peak memory (``--memory``): each method alone in a fresh child process, the
peak resident set size (VmHWM) and its growth over the model and inputs alone.

Results merge into a JSON file keyed by case, so runs of different sizes accumulate;
``--report`` writes the table (Markdown) and the plot from that file.

Run (see docs/performance.md for the commands behind the published numbers)::

    python benchmarks/speed_benchmark.py --quick
    python benchmarks/speed_benchmark.py --lengths 64 128 --layers 6 12 --repeats 2
    python benchmarks/speed_benchmark.py --report
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from captum.attr import LayerIntegratedGradients
from transformers import BertConfig, BertForMaskedLM, BertModel

from captum_influence_patterns import (
    InfluencePatterns,
    analysis_mode,
    masked_lm_logit_difference,
)
from captum_influence_patterns.forward_mode import forward_mode_search
from captum_influence_patterns.integration import IntegrationSettings
from core_benchmark import resident_peak_mib

STEPS, METHOD, MASK = 50, "gausslegendre", 103
HEADS = ("headless", "masked-lm")
HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "speed.json")
PLOT = os.path.join(HERE, os.pardir, "docs", "_static", "speed_ratio.png")


class Case:
    """One model and input: its LIG, patterns and variant runs."""

    def __init__(self, head: str, layers: int, length: int) -> None:
        torch.manual_seed(0)
        config = BertConfig(
            hidden_size=384,
            num_hidden_layers=layers,
            num_attention_heads=12,
            intermediate_size=1536,
            max_position_embeddings=max(512, length),
        )
        self.length, self.output = length, length // 2
        self.ids = torch.randint(1000, 2000, (1, length))
        self.ids[0, self.output] = MASK
        output = self.output
        if head == "headless":
            encoder = BertModel(config, add_pooling_layer=False).eval()
            readout = torch.nn.Linear(config.hidden_size, 1)
            self.model = encoder

            def forward(input_ids: torch.Tensor) -> torch.Tensor:
                hidden = encoder(input_ids=input_ids).last_hidden_state
                return readout(hidden[:, output])[:, 0]

            self.args: Tuple = ()
        else:
            self.model = BertForMaskedLM(config).eval()
            forward = masked_lm_logit_difference(self.model)
            self.args = (
                torch.tensor([output]),
                torch.tensor([2003]),
                torch.tensor([2024]),
            )
        self.forward = forward
        self.patterns = InfluencePatterns(forward, self.model)
        self.lig = LayerIntegratedGradients(
            forward, self.patterns.graph.word_embeddings
        )
        self.sources = length - 1

    def run_lig(self) -> object:
        with analysis_mode(self.model):  # the search's eager attention: like for like
            return self.lig.attribute(
                self.ids,
                torch.full_like(self.ids, MASK),
                additional_forward_args=self.args or None,
                n_steps=STEPS,
                method=METHOD,
                internal_batch_size=None,
            )

    def run_patterns(self) -> object:
        return self.patterns.attribute(
            self.ids,
            baselines=MASK,
            additional_forward_args=self.args or None,
            output_position=self.output,
            n_steps=STEPS,
            method=METHOD,
        )

    def run_variant(self, all_at_once: bool) -> object:
        """The generic forward-mode schedule (automatic chunks, or all sources)."""
        rows = self.sources * STEPS if all_at_once else None
        with analysis_mode(self.model):
            problem = self.patterns.example_problem(
                self.ids,
                torch.full_like(self.ids, MASK),
                None,
                self.args or None,
                0,
                IntegrationSettings(STEPS, METHOD, rows),
            )
            sources = torch.tensor([i for i in range(self.length) if i != self.output])
            return forward_mode_search(problem, sources, self.output)

    def runs(self, variants: bool) -> Dict[str, Callable[[], object]]:
        runs = {"LIG": self.run_lig, "patterns": self.run_patterns}
        if variants:
            runs["forward-mode"] = lambda: self.run_variant(False)
            runs["forward-mode-all"] = lambda: self.run_variant(True)
        return runs


def key(head: str, layers: int, length: int) -> str:
    return f"{head}/L{layers}/T{length}"


def time_case(case: Case, repeats: int, variants: bool) -> Dict[str, object]:
    """Interleaved repeats; medians of per-pair ratios against the paired LIG."""
    runs = case.runs(variants)
    for run in runs.values():  # warm up
        run()
    times: Dict[str, List[float]] = {name: [] for name in runs}
    names = list(runs)
    for repeat in range(repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    ratios = {
        name: [t / (lig * case.sources) for t, lig in zip(times[name], times["LIG"])]
        for name in names
        if name != "LIG"
    }
    return {
        "sources": case.sources,
        "repeats": repeats,
        "seconds": {name: statistics.median(v) for name, v in times.items()},
        "all_seconds": times,
        "per_source_ratio": {name: statistics.median(v) for name, v in ratios.items()},
        "all_ratios": ratios,
    }


def _peak(spec: Tuple[str, int, int], name: str, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    case = Case(*spec)
    before = resident_peak_mib()
    case.runs(False)[name]()
    queue.put((before, resident_peak_mib()))


def peak_memory(spec: Tuple[str, int, int], threads: int) -> Dict[str, object]:
    """Each method alone in a fresh process: peak RSS and its growth, MiB."""
    context = multiprocessing.get_context("spawn")
    out: Dict[str, object] = {}
    for name in ("LIG", "patterns"):
        queue = context.Queue()
        child = context.Process(target=_peak, args=(spec, name, threads, queue))
        child.start()
        before, after = queue.get()
        child.join()
        out[name] = {
            "peak_mib": after,
            "model_mib": before,
            "growth_mib": after - before,
        }
    out["growth_ratio"] = out["patterns"]["growth_mib"] / out["LIG"]["growth_mib"]
    out["peak_ratio"] = out["patterns"]["peak_mib"] / out["LIG"]["peak_mib"]
    return out


def load(path: str) -> Dict[str, dict]:
    if os.path.exists(path):
        with open(path) as handle:
            return json.load(handle)
    return {}


def save(path: str, results: Dict[str, dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(results, handle, indent=1, sort_keys=True)
    os.replace(temporary, path)


def table(results: Dict[str, dict]) -> str:
    """Markdown table of every case, sorted by head, layers, length; one more column
    per earlier schedule where ``--variants`` measured it."""
    variants = sorted(
        {name for r in results.values() for name in r["per_source_ratio"]}
        - {"patterns"}
    )
    lines = [
        "| head | layers | tokens | LIG | patterns, all sources | per source / LIG "
        + "".join(f"| {name} per source / LIG " for name in variants)
        + "| pairs | peak memory patterns / LIG |",
        "|---" * (8 + len(variants)) + "|",
    ]

    def order(item: Tuple[str, dict]) -> Tuple:
        head, layers, length = item[0].split("/")
        return HEADS.index(head), int(layers[1:]), int(length[1:])

    for name, result in sorted(results.items(), key=order):
        head, layers, length = name.split("/")
        seconds, ratios = result["seconds"], result["per_source_ratio"]
        memory = result.get("memory")
        peak = (
            f"{memory['patterns']['peak_mib']:.0f} / {memory['LIG']['peak_mib']:.0f} "
            f"MiB ({memory['peak_ratio']:.2f}x)"
            if memory
            else "–"
        )
        lines.append(
            f"| {head} | {layers[1:]} | {length[1:]} | {seconds['LIG']:.3f} s "
            f"| {seconds['patterns']:.2f} s | {ratios['patterns']:.3f}x "
            + "".join(
                f"| {ratios[v]:.3f}x " if v in ratios else "| – " for v in variants
            )
            + f"| {result['repeats']} | {peak} |"
        )
    return "\n".join(lines)


def plot(results: Dict[str, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    series: Dict[str, List[Tuple[int, float]]] = {}
    for name, result in results.items():
        head, layers, length = name.split("/")
        series.setdefault(f"{head}, {layers[1:]} layers", []).append(
            (int(length[1:]), result["per_source_ratio"]["patterns"])
        )
    for label, points in sorted(series.items()):
        points.sort()
        axis.plot(*zip(*points), marker="o", label=label)
    axis.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="one LIG")
    axis.set_xscale("log", base=2)
    lengths = sorted({x for points in series.values() for x, _ in points})
    axis.set_xticks(lengths, [str(x) for x in lengths])
    axis.minorticks_off()
    axis.set_yscale("log")
    axis.set_xlabel("tokens")
    axis.set_ylabel("patterns per source / LIG")
    axis.set_title("Cost of one source's pattern, in LIG attributions")
    axis.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.savefig(path, dpi=120)


def environment(threads: int) -> Dict[str, object]:
    return {
        "torch": torch.__version__,
        "threads": threads,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="11 and 32 tokens")
    parser.add_argument("--lengths", type=int, nargs="+", default=[11, 32, 64, 128])
    parser.add_argument("--layers", type=int, nargs="+", default=[6])
    parser.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", action="store_true")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--results", default=RESULTS)
    parser.add_argument("--plot", default=PLOT)
    parser.add_argument("--report", action="store_true", help="table and plot only")
    options = parser.parse_args(argv)
    if options.quick:
        options.lengths = [11, 32]
    results = load(options.results)
    if not options.report:
        torch.set_num_threads(options.threads)
        for head in options.heads:
            for layers in options.layers:
                for length in options.lengths:
                    spec = (head, layers, length)
                    result = time_case(Case(*spec), options.repeats, options.variants)
                    if options.memory:
                        result["memory"] = peak_memory(spec, options.threads)
                    result["environment"] = environment(options.threads)
                    results[key(*spec)] = {**results.get(key(*spec), {}), **result}
                    save(options.results, results)  # every case, so a stop loses one
                    ratios = result["per_source_ratio"]
                    print(
                        f"{key(*spec):<22} LIG {result['seconds']['LIG']:7.3f} s  "
                        + "  ".join(f"{n} {r:.3f}x" for n, r in ratios.items()),
                        flush=True,
                    )
    print(table(results))
    if results:
        plot(results, options.plot)


if __name__ == "__main__":
    main()
