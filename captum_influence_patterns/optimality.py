"""The optimality test: each explained source's route against other routes of the same
source (docs/beam.md).

The authors test their greedy patterns against random patterns. Uniform random routes
are weak opponents (most carry almost nothing), so each route also meets:

- ``"optimum"``: the best route of all, by exhaustive enumeration where the source has
  at most ``exhaustive_limit`` routes, else the beam's route at width ``beam_width``
  (:mod:`.beam_search`);
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
is scored by the same gated integrated gradient (:func:`.routes.compare.score_routes`)
with the arguments and the ``n_steps`` and ``method`` the result was computed with.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._captum_compat import TargetType
from ._validation import describe_baseline, validate_attention_mask, validate_settings
from .attribution import InfluencePatterns
from .model_graph import REDUCED_PRECISION, analysis_mode
from .request import AttributionRequest, check_beside_request
from .results import LEVELS, InfluencePatternsResult, Level, Pattern, PatternNode
from .routes.attention import capture_attention, rollout_matrices
from .routes.compare import (
    CONTRIBUTION_ROUTES,
    request_contributions,
    resolve_methods,
    route_patterns,
    score_routes,
)
from .routes.finders import ORIENTATIONS, reachable

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
#: Relative shortfalls reported as ``within_1pct`` and ``within_5pct``.
WITHIN = {"within_1pct": 0.01, "within_5pct": 0.05}
#: Largest relative difference between a result's route influence and its re-scored
#: value (besides rounding: 100 machine epsilons of sum |g|) before the arguments are
#: judged not to be the result's.
_RESCORE_TOLERANCE = 1e-3


# --------------------------------------------------------------------- route draws
def random_positions(
    source: int,
    output_position: Optional[int],
    num_positions: int,
    num_layers: int,
    causal: bool,
    rng: random.Random,
    valid: Optional[Sequence[int]] = None,
) -> List[int]:
    """One route ``j_0..j_L`` drawn uniformly among the valid routes of ``source``.

    ``j_0`` is the source; ``j_L`` the output position, or free when it is None. In a
    causal model the positions never decrease (and so stay at or before the output
    position): a uniform draw of a non-decreasing sequence is a uniform multiset,
    drawn by stars and bars. ``valid`` (default: every position) are the positions a
    route may visit, e.g. the unpadded ones; in a causal model they are the first
    ones (right padding).
    """
    free = num_layers - 1 if output_position is not None else num_layers
    end = [] if output_position is None else [output_position]
    if not causal:
        choose = (
            (lambda: rng.randrange(num_positions))
            if valid is None
            else (lambda: rng.choice(valid))
        )
        return [source] + [choose() for _ in range(free)] + end
    if output_position is not None:
        last = output_position
    else:
        last = num_positions - 1 if valid is None else max(valid)
    bars = sorted(rng.sample(range(last - source + free), free))
    return [source] + [source + bar - k for k, bar in enumerate(bars)] + end


def random_nodes(
    positions: List[int], num_heads: int, split_mlp: bool, rng: random.Random
) -> List[PatternNode]:
    """Attention-level nodes along ``positions``, drawn uniformly: a head where the
    route moves, a head or the skip where it stays (and the MLP or the residual)."""
    nodes = []
    for layer in range(1, len(positions)):
        stays = positions[layer] == positions[layer - 1]
        choice = rng.randrange(num_heads + 1 if stays else num_heads)
        nodes.append(
            _node(
                layer,
                positions[layer],
                choice if choice < num_heads else None,
                rng.choice(("mlp", "residual")) if split_mlp else None,
            )
        )
    return nodes


def attention_positions(
    matrices: Tensor,
    source: int,
    output_position: Optional[int],
    rng: random.Random,
) -> Optional[List[int]]:
    """One route drawn in proportion to attention: ``j_l`` with probability
    ``W^l[j, j_{l-1}]`` (normalised over ``j``) among the positions that can still
    reach the output position; None when no position can.

    Args:
        matrices (Tensor): (L, T, T) matrices ``W`` in the information-flow
            direction (e.g. :func:`~.routes.attention.rollout_matrices`).
    """
    num_layers, length = matrices.shape[0], matrices.shape[-1]
    if output_position is None:
        reach = torch.ones(num_layers, length, dtype=torch.bool)
        free = num_layers
    else:
        reach = reachable(matrices, output_position).cpu()
        free = num_layers - 1
    columns = matrices.double().cpu()
    positions = [source]
    for layer in range(1, free + 1):
        weights = columns[layer - 1, :, positions[-1]] * reach[layer - 1]
        if not float(weights.sum()) > 0:
            return None
        positions.append(rng.choices(range(length), weights=weights.tolist())[0])
    return positions if output_position is None else positions + [output_position]


def attention_nodes(
    attention: Tensor, positions: List[int], split_mlp: bool, rng: random.Random
) -> List[PatternNode]:
    """Attention-level nodes along ``positions``, drawn in proportion to attention:
    where the route moves, head n with probability ``A^l_n[j_l, j_{l-1}]``
    (normalised); where it stays, the skip with probability 1/2 (the identity's
    weight in ``(A + I) / 2``), else a head drawn likewise.

    Args:
        attention (Tensor): (L, A, T, T) probabilities of the example.
    """
    nodes = []
    num_heads = attention.shape[1]
    for layer in range(1, len(positions)):
        here, before = positions[layer], positions[layer - 1]
        weights = attention[layer - 1, :, here, before].double().cpu()
        if not float(weights.sum()) > 0:
            weights = torch.ones(num_heads, dtype=torch.float64)
        skip = here == before and rng.random() < 0.5
        head = None if skip else rng.choices(range(num_heads), weights.tolist())[0]
        ffn = rng.choice(("mlp", "residual")) if split_mlp else None
        nodes.append(_node(layer, here, head, ffn))
    return nodes


def stay_then_jump(
    source: int,
    output_position: Optional[int],
    num_layers: int,
    num_heads: int,
    split_mlp: bool,
    level: Level,
) -> List[Pattern]:
    """The routes that stay at ``source`` and jump to the output position at the last
    layer (stay throughout for a pooled QoI). At the embedding level one route; at the
    attention level the skip at every layer where it stays and each head (or the
    skip, where the last layer stays too) at the last layer, with the MLP or the
    residual at every layer where the MLP is split off: the best of them is the
    opponent."""
    end = source if output_position is None else output_position
    positions = [source] * num_layers + [end]
    if level == "embedding":
        return [_route(source, positions, [], "stay_then_jump")]
    last = list(range(num_heads)) + ([None] if end == source else [])
    routes = []
    for ffn in ("mlp", "residual") if split_mlp else (None,):
        for head in last:
            nodes = [_node(layer, source, None, ffn) for layer in range(1, num_layers)]
            nodes.append(_node(num_layers, end, head, ffn))
            routes.append(_route(source, positions, nodes, "stay_then_jump"))
    return routes


def all_routes(
    source: int,
    output_position: Optional[int],
    valid: Sequence[int],
    num_layers: int,
    num_heads: int,
    causal: bool,
    split_mlp: bool,
    level: Level,
) -> List[Pattern]:
    """Every route of ``source`` at ``level`` (the exhaustive search's candidates):
    positions through ``valid`` (non-decreasing in a causal model) and, at the
    attention level, every node choice along them (:func:`route_count`)."""
    routes = []
    for positions in _all_positions(source, output_position, valid, num_layers, causal):
        if level == "embedding":
            routes.append(_route(source, positions, [], "optimum"))
            continue
        for nodes in itertools.product(*_node_choices(positions, num_heads, split_mlp)):
            routes.append(_route(source, positions, list(nodes), "optimum"))
    return routes


def route_count(
    source: int,
    output_position: Optional[int],
    valid: Sequence[int],
    num_layers: int,
    num_heads: int,
    causal: bool,
    split_mlp: bool,
    level: Level,
    limit: int,
) -> int:
    """How many routes :func:`all_routes` lists, or ``limit + 1`` when more than
    ``limit`` (``T^(L-1)`` position routes, fewer in a causal model, times the node
    choices at the attention level: a head where the route moves, a head or the skip
    where it stays, times 2 with the MLP split off)."""
    free = num_layers - 1 if output_position is not None else num_layers
    if causal:
        last = output_position if output_position is not None else max(valid)
        choices = sum(1 for j in valid if source <= j <= last)
        positions = math.comb(choices + free - 1, free)
    else:
        positions = len(valid) ** free
    if positions > limit:
        return limit + 1
    if level == "embedding":
        return positions
    total = 0
    for route in _all_positions(source, output_position, valid, num_layers, causal):
        total += math.prod(len(c) for c in _node_choices(route, num_heads, split_mlp))
        if total > limit:
            return limit + 1
    return total


def _all_positions(
    source: int,
    output_position: Optional[int],
    valid: Sequence[int],
    num_layers: int,
    causal: bool,
) -> List[List[int]]:
    free = num_layers - 1 if output_position is not None else num_layers
    end = [] if output_position is None else [output_position]
    last = output_position if output_position is not None else max(valid)
    if not causal:
        return [[source, *middle, *end] for middle in itertools.product(valid, repeat=free)]
    # Non-decreasing from the source to the last position, drawn directly: filtering
    # the product would walk T^(L-1) tuples (7^29 for a 7-token prefix of SmolLM2).
    if source > last:
        return []
    between = sorted(j for j in valid if source <= j <= last)
    return [
        [source, *middle, *end]
        for middle in itertools.combinations_with_replacement(between, free)
    ]


def _node_choices(
    positions: List[int], num_heads: int, split_mlp: bool
) -> List[List[PatternNode]]:
    """Per layer, every node a route along ``positions`` can take there."""
    choices = []
    for layer in range(1, len(positions)):
        stays = positions[layer] == positions[layer - 1]
        heads: List[Optional[int]] = list(range(num_heads)) + ([None] if stays else [])
        ffns: Tuple[Optional[str], ...] = ("mlp", "residual") if split_mlp else (None,)
        choices.append(
            [_node(layer, positions[layer], h, f) for h in heads for f in ffns]
        )
    return choices


def _node(
    layer: int, position: int, head: Optional[int], ffn: Optional[str]
) -> PatternNode:
    """A head (``head`` an index) or the skip (``head`` None), unscored."""
    node = PatternNode(
        layer=layer,
        position=position,
        kind="skip" if head is None else "head",
        head=head,
        influence=0.0,
    )
    node.ffn = ffn  # type: ignore[assignment]
    return node


def _route(
    source: int, positions: List[int], nodes: List[PatternNode], label: str = "random"
) -> Pattern:
    return Pattern(
        source=source,
        sign=1,
        token_influence=0.0,
        positions=list(positions),
        position_influence=[],
        embedding_influence=0.0,
        nodes=nodes,
        influence=0.0,
        label=label,
    )


# --------------------------------------------------------------------------- the test
def _in_analysis(test: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``test(ip, ...)`` inside one :func:`analysis_mode` of ``ip.model``, so that
    its many scoring passes do not enter and leave it each time."""

    @functools.wraps(test)
    def run(ip: InfluencePatterns, *args: Any, **kwargs: Any) -> Any:
        with analysis_mode(ip.model):
            return test(ip, *args, **kwargs)

    return run


@_in_analysis
def optimality_test(
    ip: InfluencePatterns,
    inputs: Union[Tensor, AttributionRequest],
    result: InfluencePatternsResult,
    baselines: Union[None, int, Tensor] = None,
    target: TargetType = None,
    additional_forward_args: Any = None,
    *,
    attention_mask: Optional[Tensor] = None,
    n_random: int = 100,
    seed: int = 0,
    level: Level = "embedding",
    internal_batch_size: Optional[int] = None,
    opponents: Sequence[str] = OPPONENTS,
    beam_width: int = 8,
    exhaustive_limit: int = 1000,
    orientation: str = "flow",
    return_routes: bool = False,
    show_progress: bool = False,
) -> List[Dict[str, Any]]:
    """Test every explained route against the best routes other searches find and
    ``n_random`` random routes of its source.

    Args:
        ip (InfluencePatterns): The attribution that produced ``result``.
        inputs (Tensor): (B, T) token ids, those of ``result``; or the
            :class:`~.request.AttributionRequest` that produced ``result``, which
            carries them with ``baselines``, ``target``, ``additional_forward_args``
            and ``attention_mask``. Either way the routes are scored under one request
            (validated once) inside one :func:`~.model_graph.analysis_mode`.
        result (InfluencePatternsResult): The patterns to test.
        baselines, target, additional_forward_args, attention_mask: As given to
            :meth:`~.attribution.InfluencePatterns.attribute` for ``result``. The
            explained routes are re-scored first; a re-scored influence that differs
            from the result's (other arguments than the result's, e.g. a padded batch
            without its ``attention_mask``) is refused.
        n_random (int, optional): Random routes per source, drawn uniformly, and as
            many drawn in proportion to attention (``"attention_random"``).
            Default: 100
        seed (int, optional): Seed of the route draws. Default: 0
        level (str, optional): ``"embedding"`` compares ``I(pi^e)`` over position
            sequences; ``"attention"`` compares ``I(pi^a)`` over attention-level
            routes. Default: ``"embedding"``
        internal_batch_size (int, optional): Most rows per pass. Default: None
            (chunks of :func:`~.routes.compare.score_routes`)
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
        list of dict: one JSON-safe record per (example, source), in result order:
        ``example``, ``source``, ``level``, ``sign``, ``n_random``, ``guided`` (the
        route's influence), ``random_best`` and ``random_mean`` (uniform random
        routes' influences; best is sign-adjusted), ``share_beaten`` (the share of
        uniform random routes whose sign-adjusted influence is strictly below the
        guided one's), ``gap`` (``sign * (guided - random_best)``), ``gap_relative``
        (``gap / |guided|``, None when guided is 0); ``opponents`` (name -> the
        best route that opponent found: ``influence``, ``positions``, ``nodes`` at
        the attention level, and for ``"optimum"`` ``search`` (``"exhaustive"`` or
        ``"beam"``) with ``routes`` (how many) or ``width``; for
        ``"attention_route"`` and ``"contribution_route"`` ``route`` (its name);
        for the random ones ``n`` and
        ``mean``); ``best_found`` (the largest sign-adjusted influence of the guided
        route and every opponent, its raw value), ``best_found_by`` (``"guided"`` or
        the opponent's name), ``shortfall`` (``sign * (best_found - guided) /
        |best_found|``, 0 when guided is the best, None when best_found is 0 and
        guided is not), ``within_1pct`` and ``within_5pct`` (shortfall <= 0.01,
        0.05). With ``return_routes``: ``random`` and ``attention_random`` (lists of
        ``{"positions", "nodes", "influence"}``; nodes only at the attention level).

    Raises:
        ValueError: for a bad ``level``, ``n_random``, ``opponents``,
            ``beam_width``, ``exhaustive_limit`` or ``orientation``, inputs that are
            not the result's, baselines other than the result's, or arguments under
            which the explained routes' influences are not the result's.
    """
    request: Optional[AttributionRequest] = None
    if isinstance(inputs, AttributionRequest):
        given = dict(
            baselines=baselines,
            target=target,
            additional_forward_args=additional_forward_args,
            attention_mask=attention_mask,
        )
        check_beside_request(given)
        request = inputs
        inputs, baselines, target = request.inputs, request.baselines, request.target
        additional_forward_args = request.additional_forward_args
        attention_mask = request.attention_mask
    mask = _check(
        ip, inputs, result, baselines, attention_mask, n_random, level, opponents,
        beam_width, exhaustive_limit, orientation,
    )
    scoring = dict(
        attention_mask=mask,
        n_steps=result.metadata["n_steps"],
        method=result.metadata["method"],
        internal_batch_size=internal_batch_size,
    )
    call = (inputs, baselines, target, additional_forward_args)
    # the routes are scored with the result's settings: validated here, once (a
    # given request is validated already: only its settings become the result's)
    if request is None:
        scoring_request = ip.request(*call, **scoring)
    else:
        settings = validate_settings(
            scoring["n_steps"], scoring["method"], internal_batch_size
        )
        scoring_request = replace(request, settings=settings)

    def score(b: int, routes: List[Pattern]) -> List[float]:
        batch: List[List[Pattern]] = [[] for _ in range(len(result))]
        batch[b] = routes
        return score_routes(ip, scoring_request, batch, level)[b].tolist()

    _check_rescored(
        ip, result, [score(b, list(row)) for b, row in enumerate(result.patterns)], level
    )
    graph = ip.graph
    valid = [
        list(range(inputs.shape[1])) if mask is None else mask[b].nonzero()[:, 0].tolist()
        for b in range(len(result))
    ]
    counts = [
        [
            route_count(
                p.source, result.output_positions[b], valid[b], graph.num_layers,
                graph.num_heads, graph.is_causal, graph.split_mlp, level,
                exhaustive_limit,
            )
            for p in row
        ]
        for b, row in enumerate(result.patterns)
    ]
    beam = None
    if "optimum" in opponents and any(c > exhaustive_limit for r in counts for c in r):
        beam = _beam(ip, call, result, scoring, beam_width)
    attention = None
    if {"attention_route", "attention_random"} & set(opponents):
        attention = _attention(ip, inputs, additional_forward_args, mask)
    rng = random.Random(seed)
    attention_rng = random.Random(f"{seed}/attention")
    records: List[Dict[str, Any]] = []
    for b in tqdm(range(len(result)), desc="optimality", disable=not show_progress):
        explained = result.patterns[b]
        output = result.output_positions[b]
        uniform = [
            [
                _route(
                    p.source,
                    positions := random_positions(
                        p.source, output, inputs.shape[1], graph.num_layers,
                        graph.is_causal, rng, None if mask is None else valid[b],
                    ),
                    random_nodes(positions, graph.num_heads, graph.split_mlp, rng)
                    if level == "attention"
                    else [],
                )
                for _ in range(n_random)
            ]
            for p in explained
        ]
        # name -> per source: (its routes, fields of its record)
        candidates: Dict[str, List[Tuple[List[Pattern], Dict[str, Any]]]] = {}
        if "optimum" in opponents:
            candidates["optimum"] = [
                _optimum(p, output, valid[b], graph, level, count, exhaustive_limit,
                         beam, (b, s))
                for s, (p, count) in enumerate(zip(explained, counts[b]))
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
        if "attention_route" in opponents and attention is not None and output is not None:
            specs = resolve_methods(ATTENTION_ROUTES, orientation)  # type: ignore[arg-type]
            routes, _ = route_patterns(specs, attention[b], explained, output)
            candidates["attention_route"] = [
                ([routes[name][s] for name, _ in specs], {})
                for s in range(len(explained))
            ]
        if "contribution_route" in opponents and output is not None:
            found = request_contributions(ip, scoring_request, b, output)
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
                    _attention_draws(
                        attention[b], p.source, output, n_random, graph.split_mlp,
                        level, attention_rng,
                    ),
                    {},
                )
                for p in explained
            ]
        # one call with the explained routes: a route drawn twice gets one value
        flat = list(explained) + [r for row in uniform for r in row] + [
            r for rows in candidates.values() for routes, _ in rows for r in routes
        ]
        values = iter(score(b, flat))
        guided_values = [next(values) for _ in explained]
        uniform_values = [[next(values) for _ in row] for row in uniform]
        scored = {
            name: [[next(values) for _ in routes] for routes, _ in rows]
            for name, rows in candidates.items()
        }
        for s, pattern in enumerate(explained):
            record = _record(
                b, pattern, level, guided_values[s], uniform[s], uniform_values[s],
                return_routes,
            )
            found = {
                name: _best(name, *candidates[name][s], scored[name][s],
                            pattern.sign, level, return_routes)
                for name in candidates
                if candidates[name][s][0]
            }
            found["random"] = _best("random", uniform[s], {}, uniform_values[s],
                                    pattern.sign, level, False)
            if return_routes and "attention_random" in found:
                record["attention_random"] = found["attention_random"].pop("routes")
            records.append(_compare(record, found, pattern.sign))
    return records


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
    route = _route(found.source, found.positions, list(found.nodes), "optimum")
    return [route], {"search": "beam", "width": beam.metadata["beam_width"]}


def _beam(
    ip: InfluencePatterns,
    call: Tuple[Any, ...],
    result: InfluencePatternsResult,
    scoring: Dict[str, Any],
    width: int,
) -> InfluencePatternsResult:
    """The beam search of width ``width`` on the result's sources and settings
    (row by row where the model allows, :func:`.beam_search.beam_schedule`)."""
    outputs = result.output_positions
    return ip.attribute(
        *call,
        output_position=None if outputs[0] is None else outputs,
        sources=[[p.source for p in row] for row in result.patterns],
        beam_width=width,
        **scoring,
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


def _attention_draws(
    attention: Tensor,
    source: int,
    output: Optional[int],
    n: int,
    split_mlp: bool,
    level: Level,
    rng: random.Random,
) -> List[Pattern]:
    """``n`` valid, non-trivial routes drawn in proportion to attention (fewer when
    such routes are rare: at most ``20 n`` draws)."""
    matrices = rollout_matrices(attention)
    length = matrices.shape[-1]
    trivial = [source] * matrices.shape[0] + [
        source if output is None else output
    ]
    routes: List[Pattern] = []
    for _ in range(20 * n):
        if len(routes) == n:
            break
        positions = attention_positions(matrices, source, output, rng)
        if positions is None:
            break
        if positions == trivial or any(j >= length for j in positions):
            continue
        nodes = (
            attention_nodes(attention, positions, split_mlp, rng)
            if level == "attention"
            else []
        )
        routes.append(_route(source, positions, nodes, "attention_random"))
    return routes


def _best(
    name: str,
    routes: List[Pattern],
    fields: Dict[str, Any],
    values: List[float],
    sign: int,
    level: Level,
    return_routes: bool,
) -> Dict[str, Any]:
    """The best route of one opponent (sign-adjusted), as a JSON-safe dict."""
    best = max(range(len(values)), key=lambda k: (sign * values[k], -k))
    out: Dict[str, Any] = {
        "influence": values[best],
        **_route_fields(routes[best], level),
        **fields,
    }
    if name in ("attention_route", "contribution_route"):
        out["route"] = routes[best].label
    if name in ("random", "attention_random"):
        out["n"] = len(values)
        out["mean"] = sum(values) / len(values)
    if return_routes and name == "attention_random":
        out["routes"] = [
            {**_route_fields(route, level, nodes_always=True), "influence": value}
            for route, value in zip(routes, values)
        ]
    return out


def _route_fields(
    route: Pattern, level: Level, nodes_always: bool = False
) -> Dict[str, Any]:
    fields: Dict[str, Any] = {"positions": list(route.positions)}
    if level == "attention" or nodes_always:
        fields["nodes"] = [
            {"kind": n.kind, "head": n.head, "ffn": n.ffn} for n in route.nodes
        ]
    return fields


def _compare(
    record: Dict[str, Any], found: Dict[str, Dict[str, Any]], sign: int
) -> Dict[str, Any]:
    """Add the opponents, the best found and the guided route's shortfall."""
    guided = record["guided"]
    best_by, best = "guided", guided
    for name, opponent in found.items():
        if sign * opponent["influence"] > sign * best:
            best_by, best = name, opponent["influence"]
    if best != 0:
        shortfall: Optional[float] = sign * (best - guided) / abs(best) + 0.0
    else:
        shortfall = 0.0 if sign * guided >= 0 else None
    record["opponents"] = found
    record["best_found"] = best
    record["best_found_by"] = best_by
    record["shortfall"] = shortfall
    for key, bound in WITHIN.items():
        record[key] = shortfall is not None and shortfall <= bound
    return record


def _record(
    example: int,
    pattern: Pattern,
    level: str,
    guided: float,
    routes: List[Pattern],
    values: List[float],
    return_routes: bool,
) -> Dict[str, Any]:
    """The record's fields against the uniform random routes."""
    sign = pattern.sign
    scores = torch.tensor(values, dtype=torch.float64)
    adjusted = sign * scores
    best = sign * float(adjusted.max())
    gap = sign * (guided - best)
    record = {
        "example": example,
        "source": pattern.source,
        "level": level,
        "sign": sign,
        "n_random": len(values),
        "guided": guided,
        "random_best": best,
        "random_mean": float(scores.mean()),
        "share_beaten": float((adjusted < sign * guided).double().mean()),
        "gap": gap,
        "gap_relative": gap / abs(guided) if guided != 0 else None,
    }
    if return_routes:
        record["random"] = [
            {
                "positions": list(route.positions),
                "nodes": [
                    {"kind": n.kind, "head": n.head, "ffn": n.ffn} for n in route.nodes
                ],
                "influence": value,
            }
            for route, value in zip(routes, values)
        ]
    return record


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
