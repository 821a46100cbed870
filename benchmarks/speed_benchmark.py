"""Patterns for every source next to Captum's LayerIntegratedGradients, at real lengths.

Randomly initialised (seed 0) BERT encoders of the embedded model's size (384 hidden,
12 heads, 1536 intermediate) with 6 or 12 layers, 50 Gauss-Legendre steps, the [MASK]
id as baseline, every position except the output position as a source.
``--families`` adds the other families at the same size, headless: DistilBERT, ALBERT
(one shared layer), GPT-2 and Llama (4 key/value heads: grouped-query attention, a
gated MLP of 1536), the decoders read at their last position; ``--hidden 768`` with
``--layers 12`` gives the GPT-2-shaped and Llama-shaped larger models. Two heads:

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
the file and the plot are written only with ``--save`` (both are tracked). ``--report``
prints the table (Markdown) from that file, and with ``--save`` redraws the plot.

Run (see docs/performance.md for the commands behind the published numbers)::

    python benchmarks/speed_benchmark.py --quick
    python benchmarks/speed_benchmark.py --lengths 64 128 --layers 6 12 --repeats 2 --save
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
from transformers import (
    AlbertConfig,
    AlbertModel,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaModel,
)

from captum_influence_patterns import (
    InfluencePatterns,
    analysis_mode,
    masked_lm_logit_difference,
)
from captum_influence_patterns.search.forward_mode import forward_mode_search
from captum_influence_patterns.quadrature import IntegrationSettings
from core_benchmark import resident_peak_mib

STEPS, METHOD, MASK = 50, "gausslegendre", 103
HEADS = ("headless", "masked-lm")
FAMILIES = ("bert", "distilbert", "albert", "gpt2", "llama")
CAUSAL = ("gpt2", "llama")
HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "speed.json")
PLOT = os.path.join(HERE, os.pardir, "docs", "_static", "speed_ratio.png")


def encoder(family: str, layers: int, length: int, hidden: int) -> torch.nn.Module:
    """A headless model of ``family``: ``hidden`` wide, 12 heads, MLP 4 x hidden."""
    size = dict(hidden=hidden, heads=12, inner=4 * hidden, positions=max(512, length))
    if family == "bert":
        config = BertConfig(
            hidden_size=size["hidden"],
            num_hidden_layers=layers,
            num_attention_heads=size["heads"],
            intermediate_size=size["inner"],
            max_position_embeddings=size["positions"],
        )
        return BertModel(config, add_pooling_layer=False)
    if family == "distilbert":
        return DistilBertModel(
            DistilBertConfig(
                dim=size["hidden"],
                n_layers=layers,
                n_heads=size["heads"],
                hidden_dim=size["inner"],
                max_position_embeddings=size["positions"],
            )
        )
    if family == "albert":
        config = AlbertConfig(
            hidden_size=size["hidden"],
            num_hidden_layers=layers,
            num_attention_heads=size["heads"],
            intermediate_size=size["inner"],
            max_position_embeddings=size["positions"],
        )
        return AlbertModel(config, add_pooling_layer=False)
    if family == "gpt2":
        return GPT2Model(
            GPT2Config(
                n_embd=size["hidden"],
                n_layer=layers,
                n_head=size["heads"],
                n_positions=size["positions"],
            )
        )
    return LlamaModel(
        LlamaConfig(
            hidden_size=size["hidden"],
            num_hidden_layers=layers,
            num_attention_heads=size["heads"],
            num_key_value_heads=4,
            intermediate_size=size["inner"],
            max_position_embeddings=size["positions"],
        )
    )


class Case:
    """One model and input: its LIG, patterns and variant runs."""

    def __init__(
        self,
        head: str,
        layers: int,
        length: int,
        family: str = "bert",
        hidden: int = 384,
    ) -> None:
        torch.manual_seed(0)
        self.length = length
        self.output = length - 1 if family in CAUSAL else length // 2
        self.ids = torch.randint(1000, 2000, (1, length))
        self.ids[0, self.output] = MASK
        output = self.output
        if head == "headless":
            model = encoder(family, layers, length, hidden).eval()
            readout = torch.nn.Linear(hidden, 1)
            self.model = model

            def forward(input_ids: torch.Tensor) -> torch.Tensor:
                states = model(input_ids=input_ids).last_hidden_state
                return readout(states[:, output])[:, 0]

            self.args: Tuple = ()
        else:
            config = BertConfig(
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=12,
                intermediate_size=4 * hidden,
                max_position_embeddings=max(512, length),
            )
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


Spec = Tuple[str, int, int, str, int]  # head, layers, length, family, hidden


def key(head: str, layers: int, length: int, family: str, hidden: int) -> str:
    """``head/L6/T11`` for the 384-wide BERT, ``gpt2-headless/L12/T128/H768``."""
    name = head if family == "bert" else f"{family}-{head}"
    return f"{name}/L{layers}/T{length}" + ("" if hidden == 384 else f"/H{hidden}")


def _parse(name: str) -> Tuple[str, str, int, int, int]:
    """(family, head, layers, length, hidden) of a result key (the inverse of
    :func:`key`; a head's name may hold a hyphen, ``masked-lm``)."""
    parts = name.split("/")
    family, head = "bert", parts[0]
    for other in FAMILIES:
        if parts[0].startswith(f"{other}-") and parts[0] not in HEADS:
            family, head = other, parts[0][len(other) + 1 :]
    hidden = int(parts[3][1:]) if len(parts) > 3 else 384
    return family, head, int(parts[1][1:]), int(parts[2][1:]), hidden


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


def _peak(spec: Spec, name: str, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    case = Case(*spec)
    before = resident_peak_mib()
    case.runs(False)[name]()
    queue.put((before, resident_peak_mib()))


def peak_memory(spec: Spec, threads: int) -> Dict[str, object]:
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
        "| family | head | hidden | layers | tokens | LIG | patterns, all sources "
        "| per source / LIG "
        + "".join(f"| {name} per source / LIG " for name in variants)
        + "| pairs | peak memory patterns / LIG |",
        "|---" * (10 + len(variants)) + "|",
    ]

    def order(item: Tuple[str, dict]) -> Tuple:
        family, head, layers, length, hidden = _parse(item[0])
        return FAMILIES.index(family), HEADS.index(head), hidden, layers, length

    for name, result in sorted(results.items(), key=order):
        family, head, layers, length, hidden = _parse(name)
        seconds, ratios = result["seconds"], result["per_source_ratio"]
        memory = result.get("memory")
        peak = (
            f"{memory['patterns']['peak_mib']:.0f} / {memory['LIG']['peak_mib']:.0f} "
            f"MiB ({memory['peak_ratio']:.2f}x)"
            if memory
            else "–"
        )
        lines.append(
            f"| {family} | {head} | {hidden} | {layers} | {length} "
            f"| {seconds['LIG']:.3f} s "
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
        family, head, layers, length, hidden = _parse(name)
        label = f"{family}, {head}, {layers} layers" + (
            "" if hidden == 384 else f", {hidden} wide"
        )
        series.setdefault(label, []).append(
            (length, result["per_source_ratio"]["patterns"])
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="11 and 32 tokens")
    parser.add_argument("--lengths", type=int, nargs="+", default=[11, 32, 64, 128])
    parser.add_argument("--layers", type=int, nargs="+", default=[6])
    parser.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
    parser.add_argument(
        "--families",
        nargs="+",
        choices=FAMILIES,
        default=["bert"],
        help="families other than BERT run headless only",
    )
    parser.add_argument("--hidden", type=int, default=384, help="model width")
    parser.add_argument("--repeats", type=int, default=5, help="timed pairs per case")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--variants", action="store_true", help="also time the earlier schedules"
    )
    parser.add_argument(
        "--memory", action="store_true", help="also measure peak memory"
    )
    parser.add_argument(
        "--results", default=RESULTS, help="the JSON file results merge into"
    )
    parser.add_argument("--plot", default=PLOT, help="where --save writes the plot")
    parser.add_argument(
        "--save",
        action="store_true",
        help="write the measured cases into --results and the plot into --plot "
        "(tracked files; without --save nothing is written)",
    )
    parser.add_argument("--report", action="store_true", help="table and plot only")
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    options = build_parser().parse_args(argv)
    if options.quick:
        options.lengths = [11, 32]
    results = load(options.results)
    if not options.report:
        torch.set_num_threads(options.threads)
        cases = [
            (head, layers, length, family, options.hidden)
            for family in options.families
            for head in (options.heads if family == "bert" else ["headless"])
            for layers in options.layers
            for length in options.lengths
        ]
        print(
            f"{len(cases)} case(s) x {options.repeats} pair(s); --quick --repeats 5 "
            "--memory took about 5 minutes on one CPU thread (docs/performance.md)"
            + ("" if options.save else "; not saved (pass --save to write them)"),
            flush=True,
        )
        for spec in cases:  # with --save each case is saved as it finishes
            result = time_case(Case(*spec), options.repeats, options.variants)
            if options.memory:
                result["memory"] = peak_memory(spec, options.threads)
            result["environment"] = environment(options.threads)
            results[key(*spec)] = {**results.get(key(*spec), {}), **result}
            if options.save:
                save(options.results, results)
            ratios = result["per_source_ratio"]
            print(
                f"{key(*spec):<28} LIG {result['seconds']['LIG']:7.3f} s  "
                + "  ".join(f"{n} {r:.3f}x" for n, r in ratios.items()),
                flush=True,
            )
    print(table(results))
    if results and options.save:
        plot(results, options.plot)


if __name__ == "__main__":
    main()
