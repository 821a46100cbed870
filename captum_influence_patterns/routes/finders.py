"""Route search on per-layer attention matrices (docs/method.md, section 8).

A route ``j_0 .. j_L`` runs from a source ``i = j_0`` to the output position
``t = j_L``; every route's last step is forced to ``t``, as in guided pattern
refinement. It crosses layer ``l`` through the weight ``W^l[j_l, j_{l-1}]`` of an
(L, T, T) stack of matrices ``W`` (:func:`~.attention.attention_matrices`).

:data:`ROUTE_FINDERS` holds every finder, keyed by ``RouteSpec.search``; a finder is
one :class:`RouteFinder` passed to :func:`register_route_finder` where it is defined
(the conductance finders in :mod:`.conductance`, the contribution finders in
:mod:`.contributions`).

Orientation (:func:`oriented`): with ``"flow"`` (the default) ``W = M``, the attention
matrices themselves, so a route follows the direction information moves, from a key
(column) to the query (row) that reads it. With ``"attends"``, ``W = M^T``: a route
follows what a token attends to, the reading of the authors' released code. Finders
never need to know which: they search on ``W``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Literal,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
)

import networkx as nx
import torch
from torch import Tensor

from ..utils.registry import Registry
from .attention import attention_matrices, rollout_matrices

#: Which way a route reads the attention matrices (see the module docstring).
Orientation = Literal["flow", "attends"]
ORIENTATIONS: Tuple[str, ...] = ("flow", "attends")


#: Per layer, the head (None: the skip) and, in graphs with the MLP split off, the
#: feed-forward node (``"mlp"`` or ``"residual"``; None: both) a route passes.
NodeChoice = Tuple[Optional[int], Optional[str]]


class Route(NamedTuple):
    """Positions ``j_0 .. j_L`` of a route, the score that chose it and, for finders
    that choose them, its nodes (else :func:`~.scoring.route_nodes` chooses them)."""

    positions: List[int]
    score: float
    nodes: Optional[List[NodeChoice]] = None


def oriented(matrices: Tensor, orientation: Orientation = "flow") -> Tensor:
    """The matrices ``W`` a finder searches on: ``M`` for ``"flow"``, ``M^T`` (per
    layer) for ``"attends"``.

    Raises:
        ValueError: for an unknown orientation.
    """
    check_orientation(orientation)
    return matrices if orientation == "flow" else matrices.transpose(-1, -2)


def check_orientation(orientation: str) -> None:
    """Raise a ValueError naming the choices unless ``orientation`` is one of them."""
    if orientation not in ORIENTATIONS:
        raise ValueError(
            f"orientation must be one of {', '.join(ORIENTATIONS)}, got "
            f"{orientation!r}"
        )


def _in_place(num_layers: int, first_layer: int) -> int:
    """How many positions ``j_0 ..`` stay at the source before the first searched
    layer."""
    if first_layer < 1:
        raise ValueError(f"first_layer must be >= 1, got {first_layer}")
    return min(first_layer, num_layers)


def _edge_product(matrices: Tensor, positions: Sequence[int], first: int = 1) -> float:
    """Product over layers ``first .. L`` of ``W^l[j_l, j_{l-1}]``."""
    score = 1.0
    for layer in range(first, len(positions)):
        score *= float(matrices[layer - 1, positions[layer], positions[layer - 1]])
    return score


def reachable(matrices: Tensor, output_position: int) -> Tensor:
    """Which nodes can still reach the output position.

    Returns:
        Tensor: (L, T) bools, ``[l - 1, j]`` true when a path of non-zero weights leads
        from ``(l, j)`` to ``(L, output_position)``. All true for full softmax
        attention; under causal attention, positions after the output cannot reach it.
    """
    num_layers, num_positions = matrices.shape[0], matrices.shape[-1]
    reach = torch.zeros(num_layers, num_positions, dtype=torch.bool)
    reach[-1, output_position] = True
    for layer in range(num_layers - 1, 0, -1):
        edges = matrices[layer].cpu() > 0  # (j at layer l + 1, k at layer l)
        reach[layer - 1] = (edges & reach[layer][:, None]).any(0)
    return reach.to(matrices.device)


def greedy_route(
    matrices: Tensor, source: int, output_position: int, first_layer: int = 1
) -> Route:
    """Follow the largest weight out of the current position.

    ``j_l = argmax_j W^l[j, j_{l-1}]`` over the positions that can still reach the
    output position (:func:`reachable`; all of them unless attention is causal or
    masked), for ``first_layer <= l < L``; ``j_L`` is the output position.

    Args:
        matrices (Tensor): (L, T, T) per-layer matrices ``W`` (:func:`oriented`).
        source (int): ``j_0``.
        output_position (int): ``j_L`` (the last step is forced to it).
        first_layer (int, optional): The first layer searched; the route stays at the
            source through the layers before it, which add nothing to the score (2
            reproduces the authors' greedy route, which skips layer 1). Default: 1

    Returns:
        Route: positions and the product of the weights along them from
        ``first_layer`` on. Ties go to the lowest position.
    """
    reach = reachable(matrices, output_position)
    first = _in_place(matrices.shape[0], first_layer)
    positions = [source] * first
    for layer in range(first, matrices.shape[0]):
        column = matrices[layer - 1, :, positions[-1]]
        column = column.masked_fill(~reach[layer - 1], -math.inf)
        positions.append(int(column.argmax()))
    positions.append(output_position)
    return Route(positions, _edge_product(matrices, positions, first))


def best_route(matrices: Tensor, source: int, output_position: int) -> Route:
    """The route with the largest product of weights, by dynamic programming (Viterbi).

    ``best_l[j] = max_k W^l[j, k] best_{l-1}[k]`` from ``best_0 = onehot(source)``;
    the route ends at ``output_position``. Cost O(L T^2).
    """
    num_layers, num_positions = matrices.shape[0], matrices.shape[-1]
    best = matrices.new_zeros(num_positions)
    best[source] = 1.0
    back: List[Tensor] = []
    for layer in range(num_layers):
        scores = matrices[layer] * best[None, :]  # (j, k)
        best, previous = scores.max(-1)
        back.append(previous)
    positions = [output_position]
    for layer in range(num_layers - 1, -1, -1):
        positions.append(int(back[layer][positions[-1]]))
    positions.reverse()
    return Route(positions, float(best[output_position]))


def beam_route(
    matrices: Tensor,
    source: int,
    output_position: int,
    width: int = 3,
    first_layer: int = 1,
) -> Route:
    """Beam search over the product of weights, keeping ``width`` partial routes.

    Width 1 is :func:`greedy_route`; a width of at least ``T^(L-2)`` is exhaustive and
    equals :func:`best_route` (for ``first_layer=1``). Ties keep the earlier candidate
    (lower beam, lower position). ``first_layer`` is as in :func:`greedy_route`.
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    num_layers = matrices.shape[0]
    reach = reachable(matrices, output_position).to(matrices.dtype)
    first = _in_place(num_layers, first_layer)
    routes = [[source] * first]
    scores = matrices.new_ones(1)
    for layer in range(first, num_layers):
        last = torch.tensor([route[-1] for route in routes], device=matrices.device)
        weights = matrices[layer - 1][:, last].T * reach[layer - 1]  # dead ends: 0
        candidates = scores[:, None] * weights  # (beam, j)
        order = torch.argsort(-candidates.reshape(-1), stable=True)[:width]
        columns = candidates.shape[1]
        routes = [routes[int(o) // columns] + [int(o) % columns] for o in order]
        scores = candidates.reshape(-1)[order]
    last = torch.tensor([route[-1] for route in routes], device=matrices.device)
    final = scores * matrices[num_layers - 1][output_position, last]
    best = int(torch.argsort(-final, stable=True)[0])
    return Route(routes[best] + [output_position], float(final[best]))


def rollout_route(attention: Tensor, source: int, output_position: int) -> Route:
    """Route carrying the largest share of the rollout, chosen layer by layer
    (:func:`mass_route` on Abnar & Zuidema's matrices ``Ab^l``). The score is the
    rollout ``R[t, source]``. Rollout always reads attention in the information-flow
    direction.
    """
    return mass_route(rollout_matrices(attention), source, output_position)


def mass_route(matrices: Tensor, source: int, output_position: int) -> Route:
    """Route carrying the largest share of a rollout ``W^L ... W^1``, chosen layer by
    layer.

    Given the prefix ``j_0..j_{l-1}``, picks the ``j`` that maximizes the mass
    through ``(l, j)``: ``W^l[j, j_{l-1}] * (W^L ... W^{l+1})[t, j]`` (the analogue
    of guided stage A); where no mass goes on, the route stays. The score is
    ``(W^L ... W^1)[t, source]``.
    """
    num_layers = matrices.shape[0]
    suffixes = [matrices.new_zeros(0)] * num_layers  # suffixes[l] = Ab^L ... Ab^{l+1}
    suffix = torch.eye(matrices.shape[-1], dtype=matrices.dtype, device=matrices.device)
    for layer in range(num_layers, 0, -1):
        suffixes[layer - 1] = suffix
        suffix = suffix @ matrices[layer - 1]
    positions = [source]
    for layer in range(1, num_layers):
        through = (
            matrices[layer - 1, :, positions[-1]] * suffixes[layer - 1][output_position]
        )
        # no mass reaches the output (a clipped contribution): stay in place
        moves = bool(through.max() > 0)
        positions.append(int(through.argmax()) if moves else positions[-1])
    positions.append(output_position)
    return Route(positions, float(suffix[output_position, source]))


def flow_graph(attention: Tensor, output_position: int) -> nx.DiGraph:
    """The layered attention graph of Abnar & Zuidema's attention flow.

    Node ``(l, j)`` is position ``j`` after layer ``l``; edge ``(l-1, k) -> (l, j)`` has
    capacity ``Ab^l[j, k]`` (:func:`~.attention.rollout_matrices`). The last layer
    keeps only the edges into ``(L, output_position)``, the sink.
    """
    matrices = rollout_matrices(attention).double().cpu()
    num_layers, num_positions = matrices.shape[0], matrices.shape[-1]
    graph = nx.DiGraph()
    for layer in range(1, num_layers + 1):
        queries = range(num_positions) if layer < num_layers else [output_position]
        graph.add_edges_from(
            ((layer - 1, k), (layer, j), {"capacity": float(matrices[layer - 1, j, k])})
            for j in queries
            for k in range(num_positions)
        )
    return graph


def attention_flow(
    attention: Tensor,
    source: int,
    output_position: int,
    graph: Optional[nx.DiGraph] = None,
) -> Tuple[float, Dict[Any, Dict[Any, float]]]:
    """Maximum flow from ``(0, source)`` to ``(L, output_position)`` (networkx).

    Args:
        attention (Tensor): (L, A, T, T) probabilities of one example.
        graph (nx.DiGraph, optional): :func:`flow_graph` of the same attention and
            output position, to reuse across sources. Default: None (built here)

    Returns:
        (float, dict): the flow value (the attention-flow score of the source) and
        networkx's flow per edge.
    """
    if graph is None:
        graph = flow_graph(attention, output_position)
    sink = (attention.shape[0], output_position)
    return nx.maximum_flow(graph, (0, source), sink)


def flow_route(
    attention: Tensor,
    source: int,
    output_position: int,
    graph: Optional[nx.DiGraph] = None,
) -> Route:
    """Follow the edge carrying the most max-flow from ``(0, source)`` at each layer.

    Flow conservation makes this a route that ends at the sink ``(L, output_position)``;
    ties go to the lowest position. The score is the flow value. Flow always reads
    attention in the information-flow direction.
    """
    value, flow = attention_flow(attention, source, output_position, graph)
    positions = [source]
    for layer in range(attention.shape[0]):
        out = flow[(layer, positions[-1])]
        positions.append(max(sorted(out), key=lambda node: out[node])[1])
    return Route(positions, float(value))


# ---------------------------------------------------------------- the finder table
@dataclass(frozen=True)
class RouteQuery:
    """What a finder reads for the sources of one example.

    Attributes:
        attention (Tensor): (L, A, T, T) attention probabilities.
        sources (sequence of int): Source positions.
        output_position (int): The position every route ends at.
        conductance (Tensor or None): (S or 1, L - 1, T) layer conductance, for the
            finders that read it (:attr:`RouteFinder.conductance`), else None.
        signs (sequence of int): Per source, the guided search's sign (-1: g < 0).
        contributions (Contributions or None): The example's decompositions
            (:func:`~.contributions.example_contributions`), for the finders that
            read them (:attr:`RouteFinder.contributions`), else None.
    """

    attention: Tensor
    sources: Sequence[int]
    output_position: int
    conductance: Optional[Tensor]
    signs: Sequence[int]
    contributions: Any = None


#: ``find(spec, query)``: one route per source of ``query`` (``spec`` a RouteSpec).
FindRoutes = Callable[[Any, RouteQuery], List[Route]]
#: Which layer conductance a finder reads: one source interpolated per row, or every
#: position at once (Captum's usual setting).
ConductanceKind = Literal["sources", "positions"]


@dataclass(frozen=True)
class RouteFinder:
    """One entry of :data:`ROUTE_FINDERS`.

    Attributes:
        name (str): The name a ``RouteSpec.search`` gives.
        find (FindRoutes): The finder.
        oriented (bool): It searches aggregated attention matrices, so the spec's
            ``heads``, ``residual``, ``normalize`` and ``orientation`` apply (and its
            nodes are read in that orientation).
        conductance (str or None): The layer conductance it reads, or None.
        contributions (bool): It reads the example's decompositions
            (:class:`~.contributions.Contributions`).
    """

    name: str
    find: FindRoutes
    oriented: bool = False
    conductance: Optional[ConductanceKind] = None
    contributions: bool = False


#: Route finders by ``RouteSpec.search``.
ROUTE_FINDERS: Registry[RouteFinder] = Registry(
    RouteFinder, argument="finder", what="a route finder"
)


def register_route_finder(
    finder: RouteFinder, *, overwrite: bool = False
) -> RouteFinder:
    """Add ``finder`` to :data:`ROUTE_FINDERS`.

    Example::

        def stay_routes(spec, query):  # every route stays at its source
            layers = query.attention.shape[0]
            return [
                Route([i] * layers + [query.output_position], math.nan)
                for i in query.sources
            ]

        register_route_finder(RouteFinder("stay", stay_routes))

    Args:
        finder (RouteFinder): The new finder; ``finder.name`` is its key.
        overwrite (bool, optional): Replace a finder of the same name,
            which raises a ValueError otherwise. Default: False

    Returns:
        RouteFinder: ``finder``; a ``RouteSpec(finder.name)`` of
        :func:`~.compare.compare` now runs it.
    """
    return ROUTE_FINDERS.add(finder, overwrite=overwrite)


def _matrices(spec: Any, query: RouteQuery) -> Tensor:
    """The oriented, aggregated attention matrices ``W`` that ``spec`` searches."""
    aggregated = attention_matrices(
        query.attention, spec.heads, spec.residual, spec.normalize
    )
    return oriented(aggregated, spec.orientation)


def _first_layer(spec: Any) -> int:
    """The authors' greedy and beam routes start at layer 2 (their layer index 1)."""
    return 2 if spec.orientation == "attends" else 1


def _greedy_routes(spec: Any, query: RouteQuery) -> List[Route]:
    matrices, first = _matrices(spec, query), _first_layer(spec)
    return [
        greedy_route(matrices, i, query.output_position, first) for i in query.sources
    ]


def _best_routes(spec: Any, query: RouteQuery) -> List[Route]:
    matrices = _matrices(spec, query)
    return [best_route(matrices, i, query.output_position) for i in query.sources]


def _beam_routes(spec: Any, query: RouteQuery) -> List[Route]:
    matrices, first = _matrices(spec, query), _first_layer(spec)
    return [
        beam_route(matrices, i, query.output_position, spec.width, first)
        for i in query.sources
    ]


def _rollout_routes(spec: Any, query: RouteQuery) -> List[Route]:
    return [
        rollout_route(query.attention, i, query.output_position)
        for i in query.sources
    ]


def _flow_routes(spec: Any, query: RouteQuery) -> List[Route]:
    graph = flow_graph(query.attention, query.output_position)
    return [
        flow_route(query.attention, i, query.output_position, graph)
        for i in query.sources
    ]


for _finder in (
    RouteFinder("greedy", _greedy_routes, oriented=True),
    RouteFinder("best", _best_routes, oriented=True),
    RouteFinder("attention_beam", _beam_routes, oriented=True),
    RouteFinder("rollout", _rollout_routes),
    RouteFinder("flow", _flow_routes),
):
    register_route_finder(_finder)
