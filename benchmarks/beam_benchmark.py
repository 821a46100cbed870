"""Beam routes against the greedy search on the embedded model (docs/beam.md).

The embedded all-MiniLM-L6-v2 (6 layers, 12 heads) with its linear agreement readout,
``n`` generated sentences of every agreement task, the [MASK] baseline, every token a
source. Per sentence, in rotating order (so machine noise hits every setting alike):
the greedy search (``schedule="fast"``), and beams of width 3 and 5. Printed:

- per width, the share of sources whose beam route has a strictly larger
  sign-adjusted ``I(pi^e)`` than the greedy route (beyond a relative ``1e-5``, above
  float32 noise), the share where it is smaller, over the improved sources the median
  relative gain ``sign (I_beam - I_greedy) / |I_greedy|`` and the median gain in
  sufficiency ``sign (I_beam - I_greedy) / g``, and over all sources the ratio of sums
  ``sum sign I_beam / sum sign I_greedy``; the same for ``I(pi^a)`` after stage B;
- the median time per sentence and its ratio to the greedy search.

``--tiny SEEDS`` instead measures, on small random BERTs (captum_influence_patterns/testing/models.py: 3
layers, 7 positions, 6 sources), how often greedy misses the best embedding-level
route, which the full-width beam (49 prefixes: exhaustive, tests/test_search_beam.py) finds,
and how often beams of width 3 and 5 find it.

``--schedules N`` instead times, on N sentences of the first task, the beam as the
optimality test runs it (width 8, 50 steps) on the row-wise schedule
(``rowwise_beam``) against the forward-mode sweeps (``forward_mode_beam``), as
interleaved pairs (the order alternating) in one process, checks that both keep the
same routes, and prints the median ratio of the pairs.

Run: ``python benchmarks/beam_benchmark.py [--n 4] [--steps 20] [--output FILE]``,
``python benchmarks/beam_benchmark.py --tiny 20`` or
``python benchmarks/beam_benchmark.py --schedules 3`` (from the repository root, with
``PYTHONPATH=.``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Dict, List

import torch

from captum_influence_patterns import InfluencePatterns, analysis_mode
from captum_influence_patterns.search.beam import (
    beam_search,
    forward_mode_beam,
    rowwise_beam,
)
from captum_influence_patterns.paper.agreement_tasks import (
    TASKS,
    generate,
    readout_sign,
)
from captum_influence_patterns.models.embedded import (
    load_embedded_model,
    readout_forward,
)

WIDTHS = (1, 3, 5)
NOISE = 1e-5


def _relative(beam: float, greedy: float, sign: int) -> float:
    return sign * (beam - greedy) / max(abs(greedy), 1e-12)


def run(n: int, steps: int, threads: int) -> Dict[str, Any]:
    torch.set_num_threads(threads)
    model, tokenizer = load_embedded_model()
    rows: List[Dict[str, Any]] = []
    times: Dict[int, List[float]] = {w: [] for w in WIDTHS}
    for t, task in enumerate(TASKS):
        for e, example in enumerate(generate(task, n, tokenizer)):
            kind, sign = readout_sign(example)
            ip = InfluencePatterns(readout_forward(model, kind), model)
            ids = torch.tensor([example.input_ids])
            results = {}
            order = WIDTHS[e % 3 :] + WIDTHS[: e % 3]  # rotate which runs first
            for width in order:
                start = time.perf_counter()
                results[width] = ip.attribute(
                    ids,
                    baselines=tokenizer.mask_token_id,
                    additional_forward_args=(example.output_position, sign),
                    output_position=example.output_position,
                    n_steps=steps,
                    beam_width=width,
                )
                times[width].append(time.perf_counter() - start)
            for s, greedy in enumerate(results[1].patterns[0]):
                row = {
                    "task": task,
                    "example": e,
                    "source": greedy.source,
                    "sign": greedy.sign,
                    "g": greedy.token_influence,
                }
                for width in WIDTHS:
                    p = results[width].patterns[0][s]
                    row[f"e{width}"] = p.embedding_influence
                    row[f"a{width}"] = p.influence
                rows.append(row)
            print(f"{task} {e}: {len(results[1].patterns[0])} sources", flush=True)
    return {"rows": rows, "times": times, "n": n, "steps": steps}


def summary(data: Dict[str, Any]) -> List[str]:
    rows, times = data["rows"], data["times"]
    greedy_time = statistics.median(times[1])
    lines = [
        f"{len(rows)} sources, {len(times[1])} sentences, n_steps={data['steps']}",
        "width  level  beam>greedy  beam<greedy  improved: median gain  "
        "median gain/g  all: ratio of sums  median s/sentence  x greedy",
    ]
    for width in WIDTHS[1:]:
        for level in ("e", "a"):
            beam, greedy = f"{level}{width}", f"{level}1"
            gains = [_relative(r[beam], r[greedy], r["sign"]) for r in rows]
            better = [r for r, g in zip(rows, gains) if g > NOISE]
            worse = [g for g in gains if g < -NOISE]
            per_g = [r["sign"] * (r[beam] - r[greedy]) / r["g"] for r in better]
            ratio = sum(r["sign"] * r[beam] for r in rows) / sum(
                r["sign"] * r[greedy] for r in rows
            )
            median_time = statistics.median(times[width])
            lines.append(
                f"{width:>5}  {'I(e)' if level == 'e' else 'I(a)'}  "
                f"{len(better) / len(rows):>11.1%}  {len(worse) / len(rows):>11.1%}  "
                f"{statistics.median(g for g in gains if g > NOISE):>21.1%}  "
                f"{statistics.median(per_g):>13.3f}  {ratio:>18.3f}  "
                f"{median_time:>17.2f}  {median_time / greedy_time:>8.2f}"
            )
    lines.append(f"greedy (fast schedule): {greedy_time:.2f} s/sentence (median)")
    return lines


def tiny(seeds: int) -> List[str]:
    from captum_influence_patterns.testing import agreement_batch, masked_lm, problem

    sources = torch.tensor([0, 1, 2, 3, 5, 6])
    found = {w: 0 for w in (1, 3, 5)}
    shortfall = []
    for seed in range(seeds):
        model = masked_lm("bert", seed=seed)
        ids, args = agreement_batch(batch=1, seed=seed + 1)
        built = problem(model, ids, args, n_steps=8)
        patterns = {}
        with analysis_mode(model):
            for width in (1, 3, 5, 49):
                state, g = beam_search(width)(built, sources, 4)
                patterns[width] = state.patterns(g)
        for s, best in enumerate(patterns[49]):
            optimum = best.sign * best.embedding_influence
            for width in found:
                p = patterns[width][s]
                gap = optimum - p.sign * p.embedding_influence
                found[width] += gap <= 1e-9
                if width == 1 and gap > 1e-9:
                    shortfall.append(gap / abs(optimum))
    total = seeds * sources.shape[0]
    return [
        f"{total} sources of {seeds} random BERTs: the optimum is found by "
        + ", ".join(f"width {w}: {n / total:.1%}" for w, n in found.items()),
        f"greedy's shortfall where it misses: median "
        f"{statistics.median(shortfall) if shortfall else 0.0:.1%} of the optimum",
    ]


def schedules(count: int, threads: int, width: int = 8, steps: int = 50) -> List[str]:
    torch.set_num_threads(threads)
    model, tokenizer = load_embedded_model()
    searches = {"row-wise": rowwise_beam, "forward-mode": forward_mode_beam}
    times: Dict[str, List[float]] = {name: [] for name in searches}
    ratios = []
    task = next(iter(TASKS))
    for e, example in enumerate(generate(task, count, tokenizer)):
        kind, sign = readout_sign(example)
        ip = InfluencePatterns(readout_forward(model, kind), model)
        ids = torch.tensor([example.input_ids])
        output = example.output_position
        request = ip.request(
            ids,
            baselines=tokenizer.mask_token_id,
            additional_forward_args=(output, sign),
            output_position=output,
            n_steps=steps,
        )
        sources = torch.tensor([j for j in range(ids.shape[1]) if j != output])
        routes = {}
        names = list(searches) if e % 2 == 0 else list(searches)[::-1]
        with analysis_mode(model):
            problem = ip.request_problem(request, 0)
            for name in names:
                start = time.perf_counter()
                state, _ = searches[name](problem, sources, output, beam_width=width)
                times[name].append(time.perf_counter() - start)
                routes[name] = state.positions.tolist()
        if routes["row-wise"] != routes["forward-mode"]:
            raise AssertionError(f"sentence {e}: the two beams keep other routes")
        ratios.append(times["row-wise"][-1] / times["forward-mode"][-1])
        print(f"sentence {e}: row-wise / forward-mode {ratios[-1]:.3f}", flush=True)
    return [
        f"width {width}, {steps} steps, {len(ratios)} sentences of {task}, "
        f"{sources.shape[0]} sources each, {threads} thread(s):",
        *(
            f"{name}: {statistics.median(seconds):.2f} s/sentence (median)"
            for name, seconds in times.items()
        ),
        f"row-wise / forward-mode: {statistics.median(ratios):.3f} "
        f"(median of interleaved pairs; all: "
        f"{', '.join(f'{r:.3f}' for r in ratios)})",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="sentences per task")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", help="JSON file for the per-source numbers")
    parser.add_argument("--tiny", type=int, help="seeds of small random BERTs")
    parser.add_argument(
        "--schedules", type=int, help="sentences: row-wise against forward-mode beam"
    )
    args = parser.parse_args()
    if args.tiny:
        print("\n".join(tiny(args.tiny)))
        return
    if args.schedules:
        print("\n".join(schedules(args.schedules, args.threads)))
        return
    data = run(args.n, args.steps, args.threads)
    print("\n".join(summary(data)))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(data, handle)


if __name__ == "__main__":
    main()
