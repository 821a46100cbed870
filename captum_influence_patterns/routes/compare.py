"""Baseline routes (docs/method.md, section 8), turned into patterns and scored like
patterns.

Attention-based routes follow attention weights captured from the model; layer-based
routes follow Captum's :class:`~captum.attr.LayerConductance`. Every route becomes a
:class:`~captum_influence_patterns.results.Pattern` (``label`` = the baseline's name)
and is scored by :meth:`InfluencePatterns.pattern_influence`, the same gated integrated
gradient that checks the guided search, so :func:`compare` is like for like.

Direction convention: ``attention[l - 1, n, q, k]`` is head ``n`` of layer ``l`` at
query ``q`` and key ``k``; a row is a query, and information moves from the key (column)
to the query (row). A route ``j_0 .. j_L`` from source ``i = j_0`` to the output
position ``t = j_L`` crosses layer ``l`` through the weight ``A^l[j_l, j_{l-1}]``. Every
route's last step is forced to ``t``, as in guided pattern refinement.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import networkx as nx
import torch
from captum.attr import LayerConductance
from torch import Tensor, nn

from .._captum_compat import TargetType, run_forward
from ..influence import ExampleProblem
from .._validation import validate_baselines
from ..attribution import InfluencePatterns
from ..files import finite, json_safe
from ..model_graph import ModelGraph, analysis_mode, model_graph
from ..results import InfluencePatternsResult, Pattern, PatternNode, ratio
from ..search import choose_positions

# ------------------------------------------------------------------ attention capture
#: Per-family overrides of the hook point: the path, relative to each layer, of the
#: self-attention module whose forward returns ``(attn_output, attn_weights)`` under
#: eager attention (transformers 5). Families absent here use the adapter's
#: ``graph.self_attentions`` (``layer.attention.self`` for BERT, RoBERTa and ELECTRA,
#: the sibling ``self`` of ``graph.attention_outputs[l]``).
SELF_ATTENTION_PATHS: Dict[str, str] = {}


def self_attention_modules(graph: ModelGraph) -> List[nn.Module]:
    """Per layer, the module whose output holds the attention probabilities.

    Raises:
        ValueError: when the adapter names no self-attention modules and
            :data:`SELF_ATTENTION_PATHS` has no entry for ``graph.family``.
    """
    path = SELF_ATTENTION_PATHS.get(graph.family)
    if path is not None:
        return [layer.get_submodule(path) for layer in graph.layers]
    modules = getattr(graph, "self_attentions", None)
    if not modules:
        raise ValueError(
            f"capture_attention: no self-attention hook point for family "
            f"{graph.family!r}; set graph.self_attentions in its adapter or add a "
            "path to SELF_ATTENTION_PATHS"
        )
    return list(modules)


def _attention_weights(output: Any) -> Tensor:
    """The (B, A, T, T) probabilities from a self-attention module's output."""
    weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
    if not isinstance(weights, Tensor):
        raise RuntimeError(
            "capture_attention: the self-attention module returned no attention "
            "weights; it must return (attn_output, attn_weights) under eager "
            "attention (transformers >= 5)"
        )
    return weights


def capture_attention(
    model: nn.Module,
    forward_func: Callable,
    input_ids: Tensor,
    additional_forward_args: Any = None,
) -> Tensor:
    """Attention probabilities of every layer and head for one plain forward pass.

    Forward hooks on each layer's self-attention module (the adapter's
    ``graph.self_attentions``: ``layer.attention.self`` for BERT, RoBERTa and ELECTRA;
    overridable per family in :data:`SELF_ATTENTION_PATHS`) read the weights that module
    returns, in call order. The model runs in eval mode with eager attention
    (:func:`analysis_mode`); its settings and hooks are restored afterwards.

    Args:
        model (nn.Module): The Hugging Face model that ``forward_func`` runs.
        forward_func (Callable): ``forward_func(input_ids, *additional_forward_args)``.
        input_ids (Tensor): (B, T) token ids.
        additional_forward_args (Any, optional): Extra arguments of ``forward_func``.
            Default: None

    Returns:
        Tensor: (B, L, A, T, T) probabilities, indexed (example, layer - 1, head, query,
        key); each row (query) sums to 1 over keys.
    """
    graph = model_graph(model)
    captured: List[Tensor] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        captured.append(_attention_weights(output).detach())

    # One hook per distinct module, read in call order: a layer shared across depths
    # (ALBERT) reports once per application.
    modules = list({id(m): m for m in self_attention_modules(graph)}.values())
    with analysis_mode(model):
        handles = [module.register_forward_hook(hook) for module in modules]
        try:
            with torch.no_grad():
                run_forward(forward_func, input_ids, None, additional_forward_args)
        finally:
            for handle in handles:
                handle.remove()
    if len(captured) != graph.num_layers:
        raise RuntimeError(
            f"capture_attention: expected {graph.num_layers} attention calls, got "
            f"{len(captured)}; forward_func must run the model once"
        )
    return torch.stack(captured, dim=1)


# ------------------------------------------------------------------ attention matrices
def attention_matrices(
    attention: Tensor,
    heads: str = "mean",
    residual: bool = False,
    normalize: bool = False,
) -> Tensor:
    """Aggregate heads into one (..., L, T, T) matrix per layer.

    Args:
        attention (Tensor): (..., L, A, T, T) probabilities (query rows, key columns).
        heads (str, optional): ``"mean"`` or ``"max"`` over heads. Default: ``"mean"``
        residual (bool, optional): Replace ``M`` by ``(M + I) / 2`` for the skip
            connection (Abnar & Zuidema 2020). Default: False
        normalize (bool, optional): Divide each row by its sum. Default: False

    Returns:
        Tensor: (..., L, T, T) matrices ``M^l[query, key]``.
    """
    if heads == "mean":
        matrices = attention.mean(-3)
    elif heads == "max":
        matrices = attention.amax(-3)
    else:
        raise ValueError(f"heads must be 'mean' or 'max', got {heads!r}")
    if residual:
        eye = torch.eye(
            matrices.shape[-1], dtype=matrices.dtype, device=matrices.device
        )
        matrices = (matrices + eye) / 2
    if normalize:
        matrices = matrices / matrices.sum(-1, keepdim=True).clamp_min(1e-12)
    return matrices


def rollout_matrices(attention: Tensor) -> Tensor:
    """Abnar & Zuidema's matrices: head mean, ``(A + I) / 2``, rows normalized."""
    return attention_matrices(attention, "mean", residual=True, normalize=True)


# ------------------------------------------------------------------------ route search
class Route(NamedTuple):
    """Positions ``j_0 .. j_L`` of a route and the score that chose it."""

    positions: List[int]
    score: float


def _edge_product(matrices: Tensor, positions: Sequence[int]) -> float:
    """Product over layers of ``M^l[j_l, j_{l-1}]``."""
    score = 1.0
    for layer in range(1, len(positions)):
        score *= float(matrices[layer - 1, positions[layer], positions[layer - 1]])
    return score


def greedy_route(matrices: Tensor, source: int, output_position: int) -> Route:
    """Follow the largest weight out of the current key.

    ``j_l = argmax_j M^l[j, j_{l-1}]`` over the positions that can still reach the
    output position (:func:`reachable`; all of them unless attention is causal or
    masked), for ``l < L``; ``j_L`` is the output position.

    Args:
        matrices (Tensor): (L, T, T) per-layer matrices (:func:`attention_matrices`).
        source (int): ``j_0``.
        output_position (int): ``j_L`` (the last step is forced to it).

    Returns:
        Route: positions and the product of the weights along them. Ties go to the
        lowest position.
    """
    reach = reachable(matrices, output_position)
    positions = [source]
    for layer in range(1, matrices.shape[0]):
        column = matrices[layer - 1, :, positions[-1]]
        column = column.masked_fill(~reach[layer - 1], -math.inf)
        positions.append(int(column.argmax()))
    positions.append(output_position)
    return Route(positions, _edge_product(matrices, positions))


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
        edges = matrices[layer].cpu() > 0  # (query j at layer l + 1, key k at layer l)
        reach[layer - 1] = (edges & reach[layer][:, None]).any(0)
    return reach.to(matrices.device)


def best_route(matrices: Tensor, source: int, output_position: int) -> Route:
    """The route with the largest product of weights, by dynamic programming (Viterbi).

    ``best_l[j] = max_k M^l[j, k] best_{l-1}[k]`` from ``best_0 = onehot(source)``;
    the route ends at ``output_position``. Cost O(L T^2).
    """
    num_layers, num_positions = matrices.shape[0], matrices.shape[-1]
    best = matrices.new_zeros(num_positions)
    best[source] = 1.0
    back: List[Tensor] = []
    for layer in range(num_layers):
        scores = matrices[layer] * best[None, :]  # (query j, key k)
        best, previous = scores.max(-1)
        back.append(previous)
    positions = [output_position]
    for layer in range(num_layers - 1, -1, -1):
        positions.append(int(back[layer][positions[-1]]))
    positions.reverse()
    return Route(positions, float(best[output_position]))


def beam_route(
    matrices: Tensor, source: int, output_position: int, width: int = 3
) -> Route:
    """Beam search over the product of weights, keeping ``width`` partial routes.

    Width 1 is :func:`greedy_route`; a width of at least ``T^(L-2)`` is exhaustive and
    equals :func:`best_route`. Ties keep the earlier candidate (lower beam, lower
    position).
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    num_layers = matrices.shape[0]
    reach = reachable(matrices, output_position).to(matrices.dtype)
    routes = [[source]]
    scores = matrices.new_ones(1)
    for layer in range(1, num_layers):
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


def attention_rollout(attention: Tensor) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): ``R = Ab^L ... Ab^1``.

    Args:
        attention (Tensor): (L, A, T, T) probabilities of one example.

    Returns:
        Tensor: (T, T) ``R[t, i]``, the rollout score of source ``i`` for output ``t``
        (rows sum to 1).
    """
    matrices = rollout_matrices(attention)
    rollout = torch.eye(
        matrices.shape[-1], dtype=matrices.dtype, device=matrices.device
    )
    for matrix in matrices:
        rollout = matrix @ rollout
    return rollout


def rollout_route(attention: Tensor, source: int, output_position: int) -> Route:
    """Route carrying the largest share of the rollout, chosen layer by layer.

    Given the prefix ``j_0..j_{l-1}``, picks the ``j`` that maximizes the rollout mass
    through ``(l, j)``: ``Ab^l[j, j_{l-1}] * (Ab^L ... Ab^{l+1})[t, j]`` (the analogue
    of guided stage A). The score is the rollout ``R[t, source]``.
    """
    matrices = rollout_matrices(attention)
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
        positions.append(int(through.argmax()))
    positions.append(output_position)
    return Route(positions, float(suffix[output_position, source]))


def flow_graph(attention: Tensor, output_position: int) -> nx.DiGraph:
    """The layered attention graph of Abnar & Zuidema's attention flow.

    Node ``(l, j)`` is position ``j`` after layer ``l``; edge ``(l-1, k) -> (l, j)`` has
    capacity ``Ab^l[j, k]`` (:func:`rollout_matrices`). The last layer keeps only the
    edges into ``(L, output_position)``, the sink.
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
    ties go to the lowest position. The score is the flow value.
    """
    value, flow = attention_flow(attention, source, output_position, graph)
    positions = [source]
    for layer in range(attention.shape[0]):
        out = flow[(layer, positions[-1])]
        positions.append(max(sorted(out), key=lambda node: out[node])[1])
    return Route(positions, float(value))


# --------------------------------------------------------------------- nodes per layer
def route_nodes(
    attention: Tensor, positions: Sequence[int], skip_threshold: float = 0.5
) -> List[PatternNode]:
    """Head or skip at each layer of a route (influences left as nan until scored).

    Rule: ``n* = argmax_n A^l_n[j_l, j_{l-1}]``, the head with the largest weight on the
    route's edge (ties: lowest head). A route that moves (``j_l != j_{l-1}``) uses
    ``n*``. A route that stays uses ``n*`` only if its weight is strictly above
    ``skip_threshold``, else the skip. The default 0.5 is the identity's weight in
    ``(A + I) / 2``: a head is chosen over the residual only when it puts most of its
    query's attention on the position itself. ``skip_threshold=1.0`` always skips in
    place.

    Args:
        attention (Tensor): (L, A, T, T) probabilities of one example.
        positions (sequence of int): ``j_0 .. j_L``.
        skip_threshold (float, optional): See above. Default: 0.5
    """
    nodes = []
    for layer in range(1, len(positions)):
        query, key = positions[layer], positions[layer - 1]
        weights = attention[layer - 1, :, query, key]
        head = int(weights.argmax())
        use_head = query != key or float(weights[head]) > skip_threshold
        nodes.append(
            PatternNode(
                layer=layer,
                position=query,
                kind="head" if use_head else "skip",
                head=head if use_head else None,
                influence=math.nan,
            )
        )
    return nodes


# ------------------------------------------------------------------ layer conductance
class _EmbeddingForward:
    """``forward(word_embeds, input_ids, *args)``: ``forward_func`` with its
    word-embedding output replaced, so Captum can interpolate embeddings of a token-id
    model."""

    def __init__(self, graph: ModelGraph, forward_func: Callable) -> None:
        self.graph = graph
        self.forward_func = forward_func

    def __call__(self, word_embeds: Tensor, input_ids: Tensor, *args: Any) -> Any:
        handle = self.graph.word_embeddings.register_forward_hook(
            lambda module, inputs, output: word_embeds
        )
        try:
            return self.forward_func(input_ids, *args)
        finally:
            handle.remove()


def layer_conductance(
    problem: ExampleProblem,
    sources: Optional[Sequence[int]] = None,
    method: str = "gausslegendre",
) -> Tensor:
    """Captum ``LayerConductance`` of each position at layers 1..L-1, summed over D.

    Args:
        problem (ExampleProblem): One example (its interpolation path, QoI,
            settings).
        sources (sequence of int, optional): Interpolate only each source's word
            embedding from the baseline (the others stay at the input), one row per
            source. None interpolates every position (Captum's usual setting): one row.
        method (str, optional): Captum approximation method. Default: ``gausslegendre``

    Returns:
        Tensor: (rows, L - 1, T) conductance of ``h^l_j`` toward the QoI.
    """
    graph = problem.graph
    embeds = problem.baseline_embeds + problem.delta
    if sources is None:
        inputs, baselines = embeds[None], problem.baseline_embeds[None]
    else:
        index = torch.arange(len(sources), device=embeds.device)
        inputs = embeds.expand(len(sources), -1, -1)
        baselines = inputs.clone()
        baselines[index, list(sources)] = problem.baseline_embeds[list(sources)]
    rows = inputs.shape[0]
    args = (problem.input_ids.expand(rows, -1),) + tuple(
        (
            arg.expand(rows, *arg.shape[1:])
            if isinstance(arg, Tensor) and arg.dim()
            else arg
        )
        for arg in problem.additional_forward_args
    )
    forward = _EmbeddingForward(graph, problem.forward_func)
    values = [
        LayerConductance(forward, layer)
        .attribute(
            inputs,
            baselines=baselines,
            target=problem.target,
            additional_forward_args=args,
            n_steps=problem.n_steps,
            method=method,
            internal_batch_size=problem.internal_batch_size,
        )
        .sum(-1)
        for layer in graph.layers[:-1]
    ]
    if not values:
        return inputs.new_zeros(rows, 0, inputs.shape[1])
    return torch.stack(values, dim=1).detach()


def conductance_route(
    conductance: Tensor, source: int, output_position: int, sign: int = 1
) -> Route:
    """At each layer 1..L-1 the position with the largest ``sign * conductance``.

    Args:
        conductance (Tensor): (L - 1, T) one row of :func:`layer_conductance`.
        sign (int, optional): -1 to follow the most negative conductance (as the guided
            search does when ``g < 0``). Default: 1

    Returns:
        Route: positions, and the conductance at the last searched layer's position
        (nan for a one-layer model).
    """
    signs = conductance.new_full((conductance.shape[0],), float(sign))
    chosen = choose_positions(conductance, signs).tolist()
    positions = [source] + chosen + [output_position]
    last = float(conductance[-1, chosen[-1]]) if chosen else math.nan
    return Route(positions, last)


# ------------------------------------------------------------------------ the baselines
@dataclass(frozen=True)
class BaselineSpec:
    """How one baseline chooses its route.

    Attributes:
        search (str): ``"greedy"``, ``"best"`` (dynamic programming), ``"beam"``,
            ``"rollout"``, ``"flow"``, ``"conductance"`` (one source interpolated) or
            ``"conductance_all"`` (every position interpolated).
        heads (str): Head aggregation for greedy/best/beam: ``"mean"`` or ``"max"``.
        residual (bool): Add the identity, ``(M + I) / 2``, for greedy/best/beam.
        normalize (bool): Renormalize rows for greedy/best/beam.
        width (int): Beam width.
        skip_threshold (float): Head/skip rule of :func:`route_nodes` for in-place
        steps.
    """

    search: str
    heads: str = "mean"
    residual: bool = False
    normalize: bool = False
    width: int = 3
    skip_threshold: float = 0.5


#: Named baselines accepted by :func:`compare`'s ``methods``. Rollout and flow always
#: use Abnar & Zuidema's matrices; conductance routes never use a head in place.
BASELINES: Dict[str, BaselineSpec] = {
    "greedy": BaselineSpec("greedy"),
    "greedy_max": BaselineSpec("greedy", heads="max", normalize=True),
    "greedy_residual": BaselineSpec("greedy", residual=True, normalize=True),
    "best": BaselineSpec("best", residual=True, normalize=True),
    "best_raw": BaselineSpec("best"),
    "beam": BaselineSpec("beam", residual=True, normalize=True, width=3),
    "rollout": BaselineSpec("rollout"),
    "flow": BaselineSpec("flow"),
    "conductance": BaselineSpec("conductance", skip_threshold=1.0),
    "conductance_all": BaselineSpec("conductance_all", skip_threshold=1.0),
}

DEFAULT_METHODS = (
    "greedy",
    "greedy_residual",
    "best",
    "beam",
    "rollout",
    "flow",
    "conductance",
)

MethodsType = Sequence[Union[str, Tuple[str, BaselineSpec]]]


def _resolve_methods(methods: MethodsType) -> List[Tuple[str, BaselineSpec]]:
    resolved = []
    for entry in methods:
        if isinstance(entry, tuple):
            resolved.append(entry)
        elif entry in BASELINES:
            resolved.append((entry, BASELINES[entry]))
        else:
            raise ValueError(
                f"methods: unknown baseline {entry!r}; use one of "
                f"{', '.join(BASELINES)} or a (name, BaselineSpec) pair"
            )
    names = [name for name, _ in resolved]
    if len(set(names)) != len(names) or "guided" in names:
        raise ValueError(f"methods: names must be unique and not 'guided', got {names}")
    return resolved


def baseline_routes(
    spec: BaselineSpec,
    attention: Tensor,
    sources: Sequence[int],
    output_position: int,
    conductance: Optional[Tensor] = None,
    signs: Optional[Sequence[int]] = None,
) -> List[Route]:
    """Routes of one baseline for the sources of one example.

    Args:
        attention (Tensor): (L, A, T, T) probabilities of the example.
        conductance (Tensor, optional): (S or 1, L - 1, T) from
            :func:`layer_conductance`; needed by the conductance baselines.
        signs (sequence of int, optional): Per source, the search sign (-1 when g < 0).
    """
    signs = list(signs) if signs is not None else [1] * len(sources)
    if spec.search in ("conductance", "conductance_all"):
        if conductance is None:
            raise ValueError(f"{spec.search}: conductance is required")
        return [
            conductance_route(
                conductance[s % conductance.shape[0]], i, output_position, sign
            )
            for s, (i, sign) in enumerate(zip(sources, signs))
        ]
    if spec.search == "rollout":
        return [rollout_route(attention, i, output_position) for i in sources]
    if spec.search == "flow":
        graph = flow_graph(attention, output_position)
        return [flow_route(attention, i, output_position, graph) for i in sources]
    matrices = attention_matrices(attention, spec.heads, spec.residual, spec.normalize)
    searches: Dict[str, Callable[[int], Route]] = {
        "greedy": lambda i: greedy_route(matrices, i, output_position),
        "best": lambda i: best_route(matrices, i, output_position),
        "beam": lambda i: beam_route(matrices, i, output_position, spec.width),
    }
    if spec.search not in searches:
        raise ValueError(f"unknown baseline search {spec.search!r}")
    return [searches[spec.search](i) for i in sources]


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


def score_patterns(
    ip: InfluencePatterns,
    inputs: Tensor,
    patterns: Sequence[Sequence[Pattern]],
    baselines: Union[None, int, Tensor] = None,
    target: TargetType = None,
    additional_forward_args: Any = None,
    **kwargs: Any,
) -> None:
    """Fill ``embedding_influence`` and ``influence`` of routes in place.

    Both come from :meth:`InfluencePatterns.pattern_influence` (``level="embedding"``
    and ``"attention"``); routes of one example that are identical at a level are scored
    once. The last
    layer's ``position_influence`` and node ``influence`` get the same values (earlier
    prefixes stay nan: a prefix with open downstream is not a pattern).
    """
    for level in ("embedding", "attention"):
        unique: List[List[Pattern]] = []
        owners: List[List[int]] = []
        for row in patterns:
            keys: Dict[Any, int] = {}
            owner = [keys.setdefault(_route_key(p, level), len(keys)) for p in row]
            unique.append([row[owner.index(k)] for k in range(len(keys))])
            owners.append(owner)
        values = ip.pattern_influence(
            inputs,
            unique,
            baselines,
            target,
            additional_forward_args,
            level=level,
            **kwargs,
        )
        for b, row in enumerate(patterns):
            for p, k in zip(row, owners[b]):
                _set_influence(p, level, float(values[b][k]))


def _set_influence(pattern: Pattern, level: str, value: float) -> None:
    if level == "embedding":
        pattern.embedding_influence = value
        pattern.position_influence[-1] = value
    else:
        pattern.influence = value
        pattern.nodes[-1].influence = value


# ------------------------------------------------------------------------- comparison
@dataclass
class BaselineComparison:
    """What :func:`compare` returns: the guided pattern next to each baseline route.

    Attributes:
        records (list of dict): One JSON-safe dict per (example, source) with
            ``example``, ``source``, ``output_position``, ``token_influence`` (g) and,
            for ``"guided"`` and each baseline name, ``positions``, ``heads`` (head
            index per layer, None for the skip), ``embedding_influence`` (I(pi^e)),
            ``influence`` (I(pi^a)), ``embedding_sufficiency`` and ``sufficiency`` (I/g,
            None when g is 0) and ``score`` (the baseline's own route score; None for
            guided).
        patterns (list of dict): Per example, method name -> patterns in source order.
        methods (list of str): Baseline names, in the order asked.
        metadata (dict): n_steps, method and similar settings.
    """

    records: List[Dict[str, Any]]
    patterns: List[Dict[str, List[Pattern]]]
    methods: List[str]
    metadata: Dict[str, Any] = field(default_factory=dict)

    def summary(self) -> Dict[str, Dict[str, Optional[float]]]:
        """Per method, the mean of ``sufficiency`` and ``embedding_sufficiency``."""
        out: Dict[str, Dict[str, Optional[float]]] = {}
        for name in ["guided"] + self.methods:
            out[name] = {}
            for key in ("embedding_sufficiency", "sufficiency"):
                values = [
                    r[name][key] for r in self.records if r[name][key] is not None
                ]
                out[name][key] = sum(values) / len(values) if values else None
        return out

    def table(self) -> str:
        """Mean sufficiencies per method as text."""
        lines = [f"{'method':<16} {'I(e)/g':>8} {'I(a)/g':>8}"]
        for name, values in self.summary().items():
            cells = [
                "n/a" if v is None else f"{v:.3f}"
                for v in (values["embedding_sufficiency"], values["sufficiency"])
            ]
            lines.append(f"{name:<16} {cells[0]:>8} {cells[1]:>8}")
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe form (non-finite floats become None)."""
        return json_safe(
            {
                "records": self.records,
                "patterns": [
                    {name: [p.to_dict() for p in row] for name, row in example.items()}
                    for example in self.patterns
                ],
                "methods": list(self.methods),
                "metadata": dict(self.metadata),
            }
        )


def compare(
    ip: InfluencePatterns,
    inputs: Tensor,
    baselines: Union[None, int, Tensor] = None,
    target: TargetType = None,
    additional_forward_args: Any = None,
    *,
    output_position: Union[int, Sequence[int], Tensor],
    sources: Any = None,
    methods: MethodsType = DEFAULT_METHODS,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: Optional[int] = None,
    guided: Optional[InfluencePatternsResult] = None,
) -> BaselineComparison:
    """Guided patterns next to baseline routes, all scored by the same gated IG.

    Runs :meth:`InfluencePatterns.attribute` (unless ``guided`` is given), captures the
    attention, builds each baseline's route per source (:data:`BASELINES`), and scores
    every route with :meth:`InfluencePatterns.pattern_influence` at both levels.

    Args:
        ip (InfluencePatterns): The attribution object (its model and QoI).
        inputs (Tensor): (B, T) token ids; as in :meth:`InfluencePatterns.attribute`,
            like ``baselines``, ``target``, ``additional_forward_args``,
            ``output_position``, ``sources``, ``n_steps``, ``method`` and
            ``internal_batch_size``.
        methods (sequence, optional): Baseline names of :data:`BASELINES`, or
            ``(name, BaselineSpec)`` pairs. Default: :data:`DEFAULT_METHODS`
        guided (InfluencePatternsResult, optional): A result of ``ip.attribute`` for the
            same arguments, to skip the search. Default: None

    With ``internal_batch_size=None`` the routes are scored in chunks of (sources x
    n_steps) rows, the row count of the search's own pass, rather than all at once.

    Returns:
        BaselineComparison: JSON-safe records per example and source, and the patterns.
    """
    specs = _resolve_methods(methods)
    names = [name for name, _ in specs]
    settings = {
        "n_steps": n_steps,
        "method": method,
        "internal_batch_size": internal_batch_size,
    }
    if guided is None:
        guided = ip.attribute(
            inputs,
            baselines,
            target,
            additional_forward_args,
            output_position=output_position,
            sources=sources,
            **settings,
        )
    attention = capture_attention(
        ip.model, ip.forward_func, inputs, additional_forward_args
    )
    kinds = {s.search for _, s in specs} & {"conductance", "conductance_all"}
    patterns: List[Dict[str, List[Pattern]]] = []
    scores: List[Dict[str, List[float]]] = []
    for b, guided_row in enumerate(guided.patterns):
        conductance = _example_conductance(
            ip,
            inputs,
            baselines,
            target,
            additional_forward_args,
            b,
            [p.source for p in guided_row],
            kinds,
            settings,
        )
        patterns.append({"guided": list(guided_row)})
        scores.append({})
        for name, spec in specs:
            routes = baseline_routes(
                spec,
                attention[b],
                [p.source for p in guided_row],
                guided.output_positions[b],
                conductance.get(spec.search),
                [p.sign for p in guided_row],
            )
            patterns[b][name] = [
                route_pattern(
                    name,
                    route.positions,
                    route_nodes(attention[b], route.positions, spec.skip_threshold),
                    guide.token_influence,
                    guide.sign,
                )
                for route, guide in zip(routes, guided_row)
            ]
            scores[b][name] = [route.score for route in routes]
    score_patterns(
        ip,
        inputs,
        [[p for n in names for p in example[n]] for example in patterns],
        baselines,
        target,
        additional_forward_args,
        **_scoring_settings(settings, guided),
    )
    return BaselineComparison(
        records=_records(patterns, scores, guided.output_positions),
        patterns=patterns,
        methods=names,
        metadata=dict(guided.metadata)
        | {"baselines": {n: asdict(s) for n, s in specs}},
    )


def _scoring_settings(
    settings: Dict[str, Any], guided: InfluencePatternsResult
) -> Dict[str, Any]:
    """Chunk the scoring like the search's own pass (sources x steps rows) by default.

    Scoring every route in one pass would hold (routes x n_steps) rows of activations
    for the backward pass (over 10 GB for 70 routes on a 6-layer, 384-hidden BERT).
    """
    if settings["internal_batch_size"] is not None:
        return settings
    sources = max([len(row) for row in guided.patterns] + [1])
    return settings | {"internal_batch_size": sources * settings["n_steps"]}


def _example_conductance(
    ip: InfluencePatterns,
    inputs: Tensor,
    baselines: Union[None, int, Tensor],
    target: TargetType,
    additional_forward_args: Any,
    b: int,
    sources: List[int],
    kinds: set,
    settings: Dict[str, Any],
) -> Dict[str, Tensor]:
    """Layer conductance of example ``b`` for each conductance baseline asked for."""
    if not kinds:
        return {}
    baseline_ids = validate_baselines(baselines, inputs, ip.graph.vocab_size)
    with analysis_mode(ip.model):
        problem = ip.example_problem(
            inputs,
            baseline_ids,
            target,
            additional_forward_args,
            b,
            settings["n_steps"],
            settings["method"],
            settings["internal_batch_size"],
        )
        return {
            kind: layer_conductance(
                problem, sources if kind == "conductance" else None, settings["method"]
            )
            for kind in kinds
        }


def _records(
    patterns: List[Dict[str, List[Pattern]]],
    scores: List[Dict[str, List[float]]],
    output_positions: List[int],
) -> List[Dict[str, Any]]:
    """One JSON-safe record per (example, source)."""
    records = []
    for b, example in enumerate(patterns):
        for s, guide in enumerate(example["guided"]):
            record: Dict[str, Any] = {
                "example": b,
                "source": guide.source,
                "output_position": output_positions[b],
                "token_influence": finite(guide.token_influence),
            }
            for name, row in example.items():
                score = scores[b][name][s] if name in scores[b] else None
                record[name] = _pattern_record(row[s], score)
            records.append(record)
    return records


def _pattern_record(pattern: Pattern, score: Optional[float]) -> Dict[str, Any]:
    return {
        "positions": list(pattern.positions),
        "heads": [node.head for node in pattern.nodes],
        "embedding_influence": finite(pattern.embedding_influence),
        "influence": finite(pattern.influence),
        "embedding_sufficiency": finite(
            ratio(pattern.embedding_influence, pattern.token_influence)
        ),
        "sufficiency": finite(ratio(pattern.influence, pattern.token_influence)),
        "score": None if score is None else finite(score),
    }


def _route_key(pattern: Pattern, level: str) -> Tuple[Any, ...]:
    """What identifies a pattern at ``level``: positions, plus nodes for attention."""
    if level == "embedding":
        return tuple(pattern.positions)
    nodes = tuple((node.kind, node.head) for node in pattern.nodes)
    return (tuple(pattern.positions), nodes)
