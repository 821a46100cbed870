"""The optimality test: each explained source's route against other routes of the same
source (docs/beam.md).

The authors test their greedy patterns against random patterns. Uniform random routes
are weak opponents (most carry almost nothing), so each route also meets:

- ``"optimum"``: the best route of all, by exhaustive enumeration where the source has
  at most ``exhaustive_limit`` routes, else the beam's route at width ``beam_width``
  (:mod:`.search.beam`);
- ``"stay_then_jump"``: the route that stays at the source and jumps to the output
  position at the last layer (at the attention level: the skip while it stays, the
  best head for the jump);
- ``"attention_route"``: the best of the attention-based reference routes
  (:data:`ATTENTION_ROUTES`, :mod:`.routes.compare`);
- ``"contribution_route"``: the best of the contribution-based reference routes
  (:data:`~.routes.compare.CONTRIBUTION_ROUTES`: ALTI, ALTI-Logit, attention-norm
  rollout and information flow routes);
- ``"attention_random"``: random routes drawn in proportion to attention (each step
  follows the rollout matrix's column, Abnar & Zuidema's ``(A + I) / 2``), conditioned
  to be valid (they reach the output position) and non-trivial (not the
  stay-then-jump route);
- ``"random"``: routes drawn uniformly among the valid routes, as the authors do.

Every random route starts at the source and ends at the output position (searched like
the others for a pooled QoI); in a causal model its positions never decrease; with an
``attention_mask`` it never visits padding. Every route, the explained one included,
is scored by the same gated integrated gradient (:func:`.routes.scoring.score_routes`)
with the arguments and the ``n_steps`` and ``method`` the result was computed with.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._validation import describe_baseline, validate_attention_mask, validate_settings
from ..attribution import InfluencePatterns
from ..graph import REDUCED_PRECISION, analysis_mode
from ..request import AttributionRequest, expect_request
from ..results import LEVELS, InfluencePatternsResult, Level, Pattern
from .attention import capture_attention
from .compare import (
    CONTRIBUTION_ROUTES,
    request_contributions,
    resolve_methods,
    route_patterns,
)
from .finders import ORIENTATIONS
from .opponents import (
    all_routes,
    attention_draws,
    make_route,
    random_nodes,
    random_positions,
    route_count,
    stay_then_jump,
)
from .optimality_records import (
    OptimalityRow,
    best_route,
    comparison,
    scored_routes,
    source_fields,
)
from .scoring import score_routes

#: The opponents :func:`optimality_test` can run, besides uniform random routes.
OPPONENTS = (
    "optimum",
    "stay_then_jump",
    "attention_route",
    "contribution_route",
    "attention_random",
)
#: The attention-based reference routes of the ``"attention_route"`` opponent.
ATTENTION_ROUTES = ("greedy", "greedy_residual", "best", "beam", "rollout", "flow")
#: Largest relative difference between a result's route influence and its re-scored
#: value (besides rounding: 100 machine epsilons of sum |g|) before the arguments are
#: judged not to be the result's.
_RESCORE_TOLERANCE = 1e-3


# --------------------------------------------------------------------------- the test
def _in_analysis(test: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``test(ip, request, ...)`` inside one :func:`analysis_mode` of
    ``ip.model``, so that its many scoring passes do not enter and leave it each
    time; what is not a request is refused before."""

    @functools.wraps(test)
    def run(ip: InfluencePatterns, request: Any, *args: Any, **kwargs: Any) -> Any:
        expect_request(request)
        with analysis_mode(ip.model):
            return test(ip, request, *args, **kwargs)

    return run


@_in_analysis
def optimality_test(
    ip: InfluencePatterns,
    request: AttributionRequest,
    result: InfluencePatternsResult,
    *,
    n_random: int = 100,
    seed: int = 0,
    level: Level = "embedding",
    opponents: Sequence[str] = OPPONENTS,
    beam_width: int = 8,
    exhaustive_limit: int = 1000,
    orientation: str = "flow",
    return_routes: bool = False,
    show_progress: bool = False,
) -> List[OptimalityRow]:
    """Test every explained route against the best routes other searches find and
    ``n_random`` random routes of its source.

    Args:
        ip (InfluencePatterns): The attribution that produced ``result``.
        request (AttributionRequest): The request of ``result``
            (:meth:`~.attribution.InfluencePatterns.request`, e.g.
            ``ip.request(inputs, baselines=..., output_position=...)``): its inputs,
            ``baselines``, ``target``, ``additional_forward_args``,
            ``attention_mask`` and ``internal_batch_size`` (the routes are scored
            with the result's ``n_steps`` and ``method``). The routes are scored
            under it (validated once) inside one
            :func:`~.graph.session.analysis_mode`. The explained routes are re-scored
            first; a re-scored influence that differs from the result's (other
            arguments than the result's, e.g. a padded batch without its
            ``attention_mask``) is refused.
        result (InfluencePatternsResult): The patterns to test.
        n_random (int, optional): Random routes per source, drawn uniformly, and as
            many drawn in proportion to attention (``"attention_random"``).
            Default: 100
        seed (int, optional): Seed of the route draws. Default: 0
        level (str, optional): ``"embedding"`` compares ``I(pi^e)`` over position
            sequences; ``"attention"`` compares ``I(pi^a)`` over attention-level
            routes. Default: ``"embedding"``
        opponents (sequence of str, optional): Some of :data:`OPPONENTS`; uniform
            random routes always run. Default: all
        beam_width (int, optional): Width of the beam searched where a source has
            more than ``exhaustive_limit`` routes. Default: 8
        exhaustive_limit (int, optional): Most routes per source enumerated for the
            optimum (at the attention level node choices count). Default: 1000
        orientation (str, optional): Orientation of the attention reference routes
            (``"flow"`` or ``"attends"``). Default: ``"flow"``
        return_routes (bool, optional): Also return every random route and its
            influence. Default: False
        show_progress (bool, optional): A tqdm bar over the examples. Default: False

    Returns:
        list of OptimalityRow: one row per (example, source), in result order
        (:class:`~.optimality_records.OptimalityRow`: the guided route's influence
        against the uniform random routes, every opponent's best route
        (:class:`~.optimality_records.OpponentRoute`, ``"random"`` among them), the
        best found and the guided route's ``shortfall``; with ``return_routes``
        every random route too). ``row.to_dict()`` is the JSON object an evaluation
        record holds.

    Raises:
        TypeError: for a ``request`` that is not an
            :class:`~.request.AttributionRequest`.
        ValueError: for a bad ``level``, ``n_random``, ``opponents``,
            ``beam_width``, ``exhaustive_limit`` or ``orientation``, inputs that are
            not the result's, baselines other than the result's, or arguments under
            which the explained routes' influences are not the result's.
    """
    inputs, mask = request.inputs, request.attention_mask
    _check(
        ip, inputs, result, request.baselines, mask, n_random, level, opponents,
        beam_width, exhaustive_limit, orientation,
    )
    # the routes are scored with the result's settings (the request is validated
    # already: only its settings become the result's)
    settings = validate_settings(
        result.metadata["n_steps"], result.metadata["method"],
        request.settings.internal_batch_size,
    )
    scoring_request = replace(request, settings=settings)
    test = _Test(
        ip, result, scoring_request, level, n_random, opponents, orientation,
        return_routes, random.Random(seed), random.Random(f"{seed}/attention"),
        inputs.shape[1], mask is not None, exhaustive_limit,
    )
    _check_rescored(
        ip, result,
        [test.score(b, list(row)) for b, row in enumerate(result.patterns)], level,
    )
    test.count_routes(mask)
    if "optimum" in opponents and any(
        c > exhaustive_limit for r in test.counts for c in r
    ):
        test.beam = _beam(ip, scoring_request, result, beam_width)
    if {"attention_route", "attention_random"} & set(opponents):
        test.attention = _attention(ip, inputs, request.additional_forward_args, mask)
    records: List[OptimalityRow] = []
    for b in tqdm(range(len(result)), desc="optimality", disable=not show_progress):
        records += test.example(b)
    return records


@dataclass
class _Test:
    """One optimality test: what every example's routes are drawn, found and scored
    with (:func:`optimality_test`'s arguments, checked)."""

    ip: InfluencePatterns
    result: InfluencePatternsResult
    scoring_request: AttributionRequest
    level: Level
    n_random: int
    opponents: Sequence[str]
    orientation: str
    return_routes: bool
    rng: random.Random
    attention_rng: random.Random
    length: int
    masked: bool
    exhaustive_limit: int
    valid: List[List[int]] = field(default_factory=list)
    counts: List[List[int]] = field(default_factory=list)
    beam: Optional[InfluencePatternsResult] = None
    attention: Optional[Tensor] = None

    def count_routes(self, mask: Optional[Tensor]) -> None:
        """Per example, the positions a route may visit, and per source how many
        routes it has (up to ``exhaustive_limit + 1``)."""
        graph, result = self.ip.graph, self.result
        self.valid = [
            list(range(self.length))
            if mask is None
            else mask[b].nonzero()[:, 0].tolist()
            for b in range(len(result))
        ]
        self.counts = [
            [
                route_count(
                    p.source, result.output_positions[b], self.valid[b],
                    graph.num_layers, graph.num_heads, graph.is_causal,
                    graph.split_mlp, self.level, self.exhaustive_limit,
                )
                for p in row
            ]
            for b, row in enumerate(result.patterns)
        ]

    def score(self, b: int, routes: List[Pattern]) -> List[float]:
        """The influences of ``routes`` of example ``b`` under the scoring request."""
        batch: List[List[Pattern]] = [[] for _ in range(len(self.result))]
        batch[b] = routes
        return score_routes(self.ip, self.scoring_request, batch, self.level)[
            b
        ].tolist()

    def example(self, b: int) -> List[OptimalityRow]:
        """The rows of example ``b``'s sources: every opponent found, every route
        scored in one call (a route drawn twice gets one value)."""
        explained = self.result.patterns[b]
        uniform = self.uniform(b)
        candidates = self.candidates(b)
        flat = list(explained) + [r for row in uniform for r in row] + [
            r for rows in candidates.values() for routes, _ in rows for r in routes
        ]
        values = iter(self.score(b, flat))
        guided_values = [next(values) for _ in explained]
        uniform_values = [[next(values) for _ in row] for row in uniform]
        scored = {
            name: [[next(values) for _ in routes] for routes, _ in rows]
            for name, rows in candidates.items()
        }
        level, return_routes = self.level, self.return_routes
        rows = []
        for s, pattern in enumerate(explained):
            found = {
                name: best_route(name, *candidates[name][s], scored[name][s],
                                 pattern.sign, level)
                for name in candidates
                if candidates[name][s][0]
            }
            found["random"] = best_route("random", uniform[s], {}, uniform_values[s],
                                         pattern.sign, level)
            routes = {}
            if return_routes:
                routes["random"] = scored_routes(uniform[s], uniform_values[s])
                if "attention_random" in found:
                    routes["attention_random"] = scored_routes(
                        candidates["attention_random"][s][0],
                        scored["attention_random"][s],
                    )
            rows.append(OptimalityRow(
                **source_fields(b, pattern, level, guided_values[s], uniform_values[s]),
                opponents=found,
                **comparison(guided_values[s], found, pattern.sign),
                **routes,
            ))
        return rows

    def uniform(self, b: int) -> List[List[Pattern]]:
        """Per source of example ``b``, ``n_random`` uniform random routes."""
        graph, output = self.ip.graph, self.result.output_positions[b]
        valid = self.valid[b] if self.masked else None
        return [
            [
                make_route(
                    p.source,
                    positions := random_positions(
                        p.source, output, self.length, graph.num_layers,
                        causal=graph.is_causal, rng=self.rng, valid=valid,
                    ),
                    random_nodes(positions, graph.num_heads, graph.split_mlp, self.rng)
                    if self.level == "attention"
                    else [],
                )
                for _ in range(self.n_random)
            ]
            for p in self.result.patterns[b]
        ]

    def candidates(
        self, b: int
    ) -> Dict[str, List[Tuple[List[Pattern], Dict[str, Any]]]]:
        """Opponent name -> per source of example ``b``: its routes and fields of its
        record."""
        explained, output = self.result.patterns[b], self.result.output_positions[b]
        graph, level, opponents = self.ip.graph, self.level, self.opponents
        candidates: Dict[str, List[Tuple[List[Pattern], Dict[str, Any]]]] = {}
        if "optimum" in opponents:
            candidates["optimum"] = [
                _optimum(p, output, self.valid[b], graph, level, count,
                         self.exhaustive_limit, self.beam, (b, s))
                for s, (p, count) in enumerate(zip(explained, self.counts[b]))
            ]
        if "stay_then_jump" in opponents:
            candidates["stay_then_jump"] = [
                (
                    stay_then_jump(
                        p.source, output, graph.num_layers, graph.num_heads,
                        graph.split_mlp, level,
                    ),
                    {},
                )
                for p in explained
            ]
        attention = self.attention
        if "attention_route" in opponents and attention is not None and output is not None:
            specs = resolve_methods(ATTENTION_ROUTES, self.orientation)  # type: ignore[arg-type]
            routes, _ = route_patterns(specs, attention[b], explained, output)
            candidates["attention_route"] = [
                ([routes[name][s] for name, _ in specs], {})
                for s in range(len(explained))
            ]
        if "contribution_route" in opponents and output is not None:
            found = request_contributions(self.ip, self.scoring_request, b, output)
            specs = resolve_methods(CONTRIBUTION_ROUTES)
            routes, _ = route_patterns(
                specs, found.attention, explained, output, contributions=found
            )
            candidates["contribution_route"] = [
                ([routes[name][s] for name, _ in specs], {})
                for s in range(len(explained))
            ]
        if "attention_random" in opponents and attention is not None:
            candidates["attention_random"] = [
                (
                    attention_draws(
                        attention[b], p.source, output, self.n_random,
                        graph.split_mlp, level, self.attention_rng,
                    ),
                    {},
                )
                for p in explained
            ]
        return candidates


def _optimum(
    pattern: Pattern,
    output: Optional[int],
    valid: List[int],
    graph: Any,
    level: Level,
    count: int,
    limit: int,
    beam: Optional[InfluencePatternsResult],
    where: Tuple[int, int],
) -> Tuple[List[Pattern], Dict[str, Any]]:
    """The optimum's candidates for one source: every route when there are at most
    ``limit``, else the beam's route (``where``: example and source index)."""
    if count <= limit or beam is None:
        routes = all_routes(
            pattern.source, output, valid, graph.num_layers, graph.num_heads,
            graph.is_causal, graph.split_mlp, level,
        )
        return routes, {"search": "exhaustive", "routes": len(routes)}
    found = beam.patterns[where[0]][where[1]]
    route = make_route(found.source, found.positions, list(found.nodes), "optimum")
    return [route], {"search": "beam", "width": beam.metadata["beam_width"]}


def _beam(
    ip: InfluencePatterns,
    request: AttributionRequest,
    result: InfluencePatternsResult,
    width: int,
) -> InfluencePatternsResult:
    """The beam search of width ``width`` on the result's sources and output
    positions under the scoring ``request`` (row by row where the model allows,
    :func:`.search.beam.beam_schedule`)."""
    return ip.search(
        replace(request, output_positions=list(result.output_positions)),
        sources=[[p.source for p in row] for row in result.patterns],
        beam_width=width,
    ).result


def _attention(
    ip: InfluencePatterns,
    inputs: Tensor,
    additional_forward_args: Any,
    mask: Optional[Tensor],
) -> Tensor:
    """(B, L, A, T, T) attention of a plain pass (with the batch's mask)."""
    forward = ip.forward_func
    if mask is not None:

        def forward(input_ids: Tensor, *args: Any) -> Any:
            return ip.forward_func(input_ids, *args, attention_mask=mask)

    return capture_attention(
        ip.model, forward, inputs, additional_forward_args, ip.graph
    )


# ------------------------------------------------------------------------- checks
def _check(
    ip: InfluencePatterns,
    inputs: Tensor,
    result: InfluencePatternsResult,
    baselines: Any,
    attention_mask: Any,
    n_random: Any,
    level: str,
    opponents: Sequence[str],
    beam_width: Any,
    exhaustive_limit: Any,
    orientation: str,
) -> Optional[Tensor]:
    """Check the arguments (before any pass); the validated attention mask."""
    if level not in LEVELS:
        raise ValueError(f"level: expected one of {LEVELS}, got {level!r}")
    for name, value, least in (
        ("n_random", n_random, 1),
        ("beam_width", beam_width, 1),
        ("exhaustive_limit", exhaustive_limit, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name}: expected an int >= {least}, got {value!r}")
    unknown = [name for name in opponents if name not in OPPONENTS]
    if unknown or isinstance(opponents, str):
        raise ValueError(
            f"opponents: expected some of {', '.join(OPPONENTS)}, got {opponents!r}"
        )
    if orientation not in ORIENTATIONS:
        raise ValueError(
            f"orientation: expected one of {', '.join(ORIENTATIONS)}, got "
            f"{orientation!r}"
        )
    if not isinstance(inputs, Tensor) or inputs.tolist() != result.input_ids:
        raise ValueError(
            "inputs: these are not the token ids the result explains; pass the "
            "inputs given to attribute"
        )
    mask = validate_attention_mask(attention_mask, inputs)
    used = result.metadata.get("baseline")
    if "baseline_id" in result.metadata:  # explain(): the input's name and its id
        same = describe_baseline(baselines) == describe_baseline(
            result.metadata["baseline_id"]
        )
    else:
        same = describe_baseline(baselines) == used
    if not same:
        raise ValueError(
            f"baselines: the result was computed with baseline {used!r}, got "
            f"{describe_baseline(baselines)!r}; pass the baselines given to attribute"
        )
    if result.metadata.get("layer", ip.layer_name) != ip.layer_name:
        raise ValueError(
            f"ip: the result interpolated layer {result.metadata['layer']}, this "
            f"InfluencePatterns {ip.layer_name}; pass one with the same layer"
        )
    if result.metadata.get("split_mlp", ip.graph.split_mlp) != ip.graph.split_mlp:
        raise ValueError(
            f"ip: the result was computed with split_mlp="
            f"{result.metadata['split_mlp']}; pass an InfluencePatterns with the same"
        )
    return mask


def _check_rescored(
    ip: InfluencePatterns,
    result: InfluencePatternsResult,
    rescored: List[List[float]],
    level: Level,
) -> None:
    """Refuse arguments under which the explained routes do not score what the
    result says they do (a padded batch without its mask, another target)."""
    dtype = ip.graph.word_embeddings.weight.dtype
    if dtype in REDUCED_PRECISION:
        dtype = torch.float32  # what analysis_mode computes it in
    noise = 100 * torch.finfo(dtype).eps
    for b, row in enumerate(result.patterns):
        scale = float(result.token_influence[b].abs().sum())
        for pattern, value in zip(row, rescored[b]):
            stored = (
                pattern.embedding_influence if level == "embedding"
                else pattern.influence
            )
            if not math.isfinite(stored):
                continue
            tolerance = _RESCORE_TOLERANCE * abs(stored) + noise * scale
            if abs(value - stored) > tolerance:
                raise ValueError(
                    f"attention_mask/target/additional_forward_args: source "
                    f"{pattern.source} of example {b} re-scores to {value:.6g}, the "
                    f"result says {stored:.6g}; pass the arguments given to attribute "
                    "(for a padded batch, its attention_mask)"
                )
