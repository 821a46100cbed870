"""Cost of the reference routes next to the fast pattern search, in one process.

The model and input of ``core_benchmark.py``: a randomly initialised 6-layer,
384-hidden, 12-head BERT masked LM, an 11-token input with [MASK] at position 6, 50
steps, all 10 source tokens. Times (median of interleaved repeats, so machine noise
hits every method alike) for:

- ``fast search``: :meth:`InfluencePatterns.attribute` (both stages), the reference;
- ``capture``: one forward pass reading the attention of every layer;
- each reference route: building its 10 routes from the captured attention (conductance
  routes include their Captum ``LayerConductance`` passes);
- ``score``: :meth:`InfluencePatterns.pattern_influence` of 10 routes at both levels;
- ``compare``: :func:`compare` with the default routes, end to end, with
  ``internal_batch_size=500`` (scoring all routes in one pass would hold about
  ``routes x 50`` rows of activations for the backward pass: ~10 GB here).

A second table times attention flow alone (networkx max-flow, one source) on random
attention as the sequence length and depth grow.

Run: ``python benchmarks/routes_benchmark.py [--repeats 3] [--threads N]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch
from core_benchmark import LENGTH, MASK, OUTPUT, STEPS, build

from captum_influence_patterns import (
    InfluencePatterns,
    analysis_mode,
    masked_lm_logit_difference,
)
from captum_influence_patterns.quadrature import IntegrationSettings
from captum_influence_patterns.routes.attention import capture_attention
from captum_influence_patterns.routes.compare import (
    DEFAULT_METHODS,
    ROUTES,
    compare,
    reference_routes,
    route_nodes,
    route_pattern,
    score_patterns,
)
from captum_influence_patterns.routes.conductance import layer_conductance
from captum_influence_patterns.routes.contributions import example_contributions
from captum_influence_patterns.routes.finders import ROUTE_FINDERS, flow_graph, flow_route

BATCH = 500
SOURCES = [j for j in range(LENGTH) if j != OUTPUT]


def tasks(model, ids, args) -> Dict[str, Callable[[], object]]:
    ip = InfluencePatterns(masked_lm_logit_difference(model), model)
    attention = capture_attention(model, ip.forward_func, ids, args)[0]

    def search():
        return ip.attribute(
            ids, MASK, None, args, output_position=OUTPUT, n_steps=STEPS
        )

    def routes(name: str) -> Callable[[], object]:
        spec = ROUTES[name]

        def run():
            finder = ROUTE_FINDERS[spec.search]
            conductance = contributions = None
            if finder.conductance is None and not finder.contributions:
                # attention-only routes: time the finder alone, as before
                return reference_routes(spec, attention, SOURCES, OUTPUT)
            with analysis_mode(model):
                problem = ip.example_problem(
                    ids, torch.full_like(ids, MASK), None, args, 0,
                    IntegrationSettings(STEPS),
                )
                if finder.conductance is not None:
                    conductance = layer_conductance(
                        problem, SOURCES if spec.search == "conductance" else None
                    )
                if finder.contributions:  # ALTI and its kin read the decomposition
                    contributions = example_contributions(problem, OUTPUT)
            return reference_routes(
                spec, attention, SOURCES, OUTPUT, conductance,
                contributions=contributions,
            )

        return run

    greedy = reference_routes(ROUTES["greedy"], attention, SOURCES, OUTPUT)
    patterns = [
        route_pattern("greedy", r.positions, route_nodes(attention, r.positions))
        for r in greedy
    ]

    def score():
        fresh = [
            route_pattern(p.label, p.positions, [type(n)(**vars(n)) for n in p.nodes])
            for p in patterns
        ]
        score_patterns(ip, ip.request(ids, MASK, None, args, n_steps=STEPS), [fresh])

    def run_compare():
        request = ip.request(
            ids, MASK, None, args, output_position=OUTPUT, n_steps=STEPS
        )
        return compare(ip, request)

    out: Dict[str, Callable[[], object]] = {
        "fast search": search,
        "capture": lambda: capture_attention(model, ip.forward_func, ids, args),
    }
    out.update({name: routes(name) for name in ROUTES})
    out["score (10 routes)"] = score
    out["compare (defaults)"] = run_compare
    return out


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def flow_scaling(repeats: int) -> List[tuple]:
    rows = []
    torch.manual_seed(0)
    for layers, length in [(6, 11), (6, 32), (12, 32), (12, 64), (12, 128)]:
        attention = torch.softmax(torch.randn(layers, 12, length, length), -1)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            graph = flow_graph(attention, 0)
            flow_route(attention, 1, 0, graph)
            times.append(time.perf_counter() - start)
        rows.append((layers, length, statistics.median(times)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    model, ids, args = build()
    jobs = tasks(model, ids, args)
    for job in jobs.values():  # warm-up
        job()
    times: Dict[str, List[float]] = {name: [] for name in jobs}
    for repeat in range(options.repeats):
        for name, job in jobs.items():
            times[name].append(timed(job))
        print(f"repeat {repeat + 1}/{options.repeats} done", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    reference = medians["fast search"]
    print(
        f"6-layer 384-hidden 12-head BERT, {LENGTH} tokens, {len(SOURCES)} sources, "
        f"{STEPS} steps, {torch.get_num_threads()} threads, median of "
        f"{options.repeats}; default compare methods: {', '.join(DEFAULT_METHODS)}"
    )
    print(f"{'task':<22} {'seconds':>9} {'/ fast search':>14}")
    for name, seconds in medians.items():
        print(f"{name:<22} {seconds:>9.4f} {seconds / reference:>14.3f}")
    print("\nattention flow, one source (graph build + max-flow), random attention")
    print(f"{'layers':>6} {'tokens':>6} {'seconds':>9}")
    for layers, length, seconds in flow_scaling(options.repeats):
        print(f"{layers:>6} {length:>6} {seconds:>9.3f}")


if __name__ == "__main__":
    main()
