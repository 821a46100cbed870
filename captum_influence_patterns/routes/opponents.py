"""The opponents' routes: uniform random routes, routes drawn in proportion to
attention, every route of a source, and the stay-then-jump route (docs/beam.md).

Every route starts at the source and ends at the output position (free for a pooled
QoI); in a causal model its positions never decrease; ``valid`` positions (the
unpadded ones) bound where it may go.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..results import Level, Pattern, PatternNode
from .attention import rollout_matrices
from .finders import reachable


def random_positions(
    source: int,
    output_position: Optional[int],
    num_positions: int,
    num_layers: int,
    *,
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
    ones (right padding). ``causal`` is keyword-only, to be read off the graph
    (``graph.is_causal``): an encoder's draw on a decoder runs routes backwards, and
    they carry nothing.
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
        return [make_route(source, positions, [], "stay_then_jump")]
    last = list(range(num_heads)) + ([None] if end == source else [])
    routes = []
    for ffn in ("mlp", "residual") if split_mlp else (None,):
        for head in last:
            nodes = [_node(layer, source, None, ffn) for layer in range(1, num_layers)]
            nodes.append(_node(num_layers, end, head, ffn))
            routes.append(make_route(source, positions, nodes, "stay_then_jump"))
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
            routes.append(make_route(source, positions, [], "optimum"))
            continue
        for nodes in itertools.product(*_node_choices(positions, num_heads, split_mlp)):
            routes.append(make_route(source, positions, list(nodes), "optimum"))
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


def make_route(
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


def attention_draws(
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
        routes.append(make_route(source, positions, nodes, "attention_random"))
    return routes
