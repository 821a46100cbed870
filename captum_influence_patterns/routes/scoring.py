"""Routes as patterns: the head-or-skip nodes of a position route, unscored
patterns, and the route scorer (every route's gated integrated gradient at one level,
docs/method.md, section 8)."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

from torch import Tensor

from ..attribution import InfluencePatterns
from ..request import AttributionRequest, expect_request
from ..results import LEVELS, Level, Pattern, PatternNode
from .finders import Orientation, oriented


def route_nodes(
    attention: Tensor,
    positions: Sequence[int],
    skip_threshold: float = 0.5,
    orientation: Orientation = "flow",
) -> List[PatternNode]:
    """Head or skip at each layer of a route (influences left as nan until scored).

    Rule: ``n* = argmax_n W^l_n[j_l, j_{l-1}]``, the head with the largest weight on the
    route's edge, read in the route's orientation (``W = A`` for ``"flow"``, ``A^T``
    for ``"attends"``; ties: lowest head). A route that moves (``j_l != j_{l-1}``) uses
    ``n*``. A route that stays uses ``n*`` only if its weight is strictly above
    ``skip_threshold``, else the skip. The default 0.5 is the identity's weight in
    ``(A + I) / 2``: a head is chosen over the residual only when it puts most of its
    query's attention on the position itself. ``skip_threshold=1.0`` always skips in
    place.

    Args:
        attention (Tensor): (L, A, T, T) probabilities of one example.
        positions (sequence of int): ``j_0 .. j_L``.
        skip_threshold (float, optional): See above. Default: 0.5
        orientation (str, optional): ``"flow"`` or ``"attends"``. Default: ``"flow"``
    """
    weights_by_layer = oriented(attention, orientation)
    nodes = []
    for layer in range(1, len(positions)):
        here, before = positions[layer], positions[layer - 1]
        weights = weights_by_layer[layer - 1, :, here, before]
        head = int(weights.argmax())
        use_head = here != before or float(weights[head]) > skip_threshold
        nodes.append(
            PatternNode(
                layer=layer,
                position=here,
                kind="head" if use_head else "skip",
                head=head if use_head else None,
                influence=math.nan,
            )
        )
    return nodes


def route_pattern(
    label: str,
    positions: Sequence[int],
    nodes: Sequence[PatternNode],
    token_influence: float = math.nan,
    sign: int = 1,
) -> Pattern:
    """An unscored :class:`Pattern` for a route (influences nan until scored)."""
    layers = len(positions) - 1
    return Pattern(
        source=positions[0],
        sign=sign,
        token_influence=token_influence,
        positions=list(positions),
        position_influence=[math.nan] * layers,
        embedding_influence=math.nan,
        nodes=list(nodes),
        influence=math.nan,
        label=label,
    )


def score_routes(
    ip: InfluencePatterns,
    request: AttributionRequest,
    patterns: Sequence[Sequence[Pattern]],
    level: Level,
) -> List[Tensor]:
    """The influence of routes at one level: the route scorer of the library.

    ``patterns[b]`` are routes of example b; routes that are identical at ``level``
    (:func:`route_key`) are scored once. The score is
    :meth:`InfluencePatterns.score`'s gated integrated gradient, computed with
    ``schedule="fast"`` (one shared primal pass, batched over routes, where the
    model allows; the gated reverse passes, in chunks, elsewhere) under ``request``
    (:meth:`InfluencePatterns.request`: the arguments of the call that produced the
    routes, ``baselines`` the integrated-gradient reference input).

    Returns:
        list of Tensor: per example, (P_b,) influences in the order given.

    Raises:
        TypeError: for a ``request`` that is not an
            :class:`~captum_influence_patterns.request.AttributionRequest`.
    """
    expect_request(request)
    unique: List[List[Pattern]] = []
    owners: List[List[int]] = []
    for row in patterns:
        keys: Dict[Any, int] = {}
        owner = [keys.setdefault(route_key(p, level), len(keys)) for p in row]
        first = {k: i for i, k in reversed(list(enumerate(owner)))}
        unique.append([row[first[k]] for k in range(len(keys))])
        owners.append(owner)
    values = ip.score(request, unique, level=level, schedule="fast")
    return [value[owner] for value, owner in zip(values, owners)]


def score_patterns(
    ip: InfluencePatterns,
    request: AttributionRequest,
    patterns: Sequence[Sequence[Pattern]],
) -> None:
    """Fill ``embedding_influence`` and ``influence`` of routes in place.

    Both come from :func:`score_routes` under ``request`` (``level="embedding"``
    and ``"attention"``). The last layer's ``position_influence`` and node
    ``influence`` get the same values (earlier prefixes stay nan: a prefix with open
    downstream is not a pattern).
    """
    expect_request(request)
    for level in LEVELS:
        values = score_routes(ip, request, patterns, level)
        for row, scores in zip(patterns, values):
            for p, value in zip(row, scores.tolist()):
                _set_influence(p, level, value)


def _set_influence(pattern: Pattern, level: str, value: float) -> None:
    if level == "embedding":
        pattern.embedding_influence = value
        pattern.position_influence[-1] = value
    else:
        pattern.influence = value
        pattern.nodes[-1].influence = value


def route_key(pattern: Pattern, level: str) -> Tuple[Any, ...]:
    """What identifies a route at ``level``: positions, plus nodes for attention."""
    if level == "embedding":
        return tuple(pattern.positions)
    nodes = tuple((node.kind, node.head, node.ffn) for node in pattern.nodes)
    return (tuple(pattern.positions), nodes)
