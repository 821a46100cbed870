"""Ablation of routes (docs/method.md, section 9): keep only a route's nodes, or remove
them.

Unlike gating (:mod:`~captum_influence_patterns.graph.gating`), which changes derivatives
only, ablation changes *forward values*: a replaced node carries a reference value
(zero, or its mean activation over the data set) into the rest of the network.

Which nodes a route keeps
-------------------------
The ablated nodes are the embedding nodes ``h^0_j`` (the embedding block's output) and,
at every layer l = 1..L, the head contexts ``a^l_{j,n}`` and the skip inputs ``s^l_j``
(docs/method.md, section 2). The embedding nodes ``h^l_j`` of layers l >= 1 are not
replaced themselves: ``h^l_j`` is a fixed function of the heads and the skip at ``j``
(attention output projection, both LayerNorms and the FFN), so it follows from them.

A route (a :class:`~captum_influence_patterns.results.Pattern` with positions
``j_0..j_L``) keeps

- ``h^0_{j_0}``, its source token's embedding;
- at attention level (the default): at every layer l the chosen node only, the head
  ``a^l_{j_l,n}`` or the skip ``s^l_{j_l}``;
- at embedding level: at every layer l every head and the skip at ``j_l``.

A set of routes keeps the union of their nodes. A kept node is computed normally from
its (possibly replaced) inputs; for example a kept head at layer l attends over
``h^{l-1}`` at every position, most of which were computed from reference values.

``mode="keep"`` replaces every node that is not kept by its reference value;
``mode="remove"`` replaces only the kept nodes. Keeping everything reproduces the model
exactly; keeping nothing gives the *reference QoI* (every node replaced).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..influence import pattern_gates
from ..graph import (
    ModelGraph,
    NodeController,
    analysis_mode,
    check_hooks_kept,
    model_graph,
    restrict_paths,
)
from ..request import AttributionRequest, expect_request
from ..results import Pattern

#: Reference values a replaced node can take.
REFERENCES = ("mean", "zero")
#: Ablation modes.
MODES = ("keep", "remove")


@dataclass
class NodeSet:
    """A set of ablatable nodes of one example (True = in the set).

    Attributes:
        embedding (Tensor): (T,) bool, the embedding nodes ``h^0_j``.
        heads (Tensor): (L, T, A) bool, head contexts ``a^l_{j,n}`` (index l - 1).
        skip (Tensor): (L, T) bool, skip inputs ``s^l_j`` (index l - 1).
    """

    embedding: Tensor
    heads: Tensor
    skip: Tensor

    @classmethod
    def full(
        cls, graph: ModelGraph, num_positions: int, value: bool = True
    ) -> "NodeSet":
        """Every node (``value=True``) or none (``value=False``)."""
        shape = (graph.num_layers, num_positions)
        return cls(
            embedding=torch.full((num_positions,), value),
            heads=torch.full((*shape, graph.num_heads), value),
            skip=torch.full(shape, value),
        )

    def count(self) -> int:
        """Number of nodes in the set."""
        return int(self.embedding.sum() + self.heads.sum() + self.skip.sum())


def route_nodes_set(
    patterns: Sequence[Pattern],
    num_positions: int,
    num_heads: int,
    level: str = "attention",
    include_source: bool = True,
) -> NodeSet:
    """The nodes kept by a set of routes (see the module docstring for the rule).

    Args:
        patterns (sequence of Pattern): Routes of one example (all with L + 1
            positions); an empty sequence keeps nothing.
        num_positions (int): T.
        num_heads (int): A.
        level (str, optional): ``"attention"`` or ``"embedding"``.
            Default: ``"attention"``
        include_source (bool, optional): Count the source's embedding node
            ``h^0_{j_0}`` as a node of the route. False compares routes by their
            layer nodes only (routes of one source share ``h^0_{j_0}``, which then
            dominates ``mode="remove"``). Default: True

    Returns:
        NodeSet: the union of the routes' nodes.
    """
    if level not in ("attention", "embedding"):
        raise ValueError(f"level must be 'attention' or 'embedding', got {level!r}")
    if not patterns:
        raise ValueError("route_nodes_set: no patterns (use NodeSet.full(..., False))")
    gates = pattern_gates(patterns, num_positions, num_heads, "attention", "cpu")
    num_layers = len(patterns[0].positions) - 1
    embedding = (gates.embedding[0].amax(0) > 0) & include_source
    if level == "attention":
        heads = [gates.heads[layer].amax(0) > 0 for layer in range(1, num_layers + 1)]
        skip = [gates.skip[layer].amax(0) > 0 for layer in range(1, num_layers + 1)]
    else:
        at = [gates.embedding[layer].amax(0) > 0 for layer in range(1, num_layers + 1)]
        heads = [row[:, None].expand(num_positions, num_heads) for row in at]
        skip = at
    return NodeSet(embedding, torch.stack(heads), torch.stack(skip))


@dataclass
class NodeValues:
    """Reference values of every ablatable node, per position.

    Attributes:
        embedding (Tensor): (T, D) values of ``h^0``.
        heads (Tensor): (L, T, A, D/A) head contexts.
        skip (Tensor): (L, T, D) skip inputs.
    """

    embedding: Tensor
    heads: Tensor
    skip: Tensor

    def zeros_like(self) -> "NodeValues":
        """The zero reference of the same shapes."""
        return NodeValues(
            torch.zeros_like(self.embedding),
            torch.zeros_like(self.heads),
            torch.zeros_like(self.skip),
        )

    def first(self, num_positions: int) -> "NodeValues":
        """The values of the first ``num_positions`` positions."""
        if num_positions > self.embedding.shape[0]:
            raise ValueError(
                f"reference values cover {self.embedding.shape[0]} positions, the "
                f"example has {num_positions}"
            )
        return NodeValues(
            self.embedding[:num_positions],
            self.heads[:, :num_positions],
            self.skip[:, :num_positions],
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "embedding": self.embedding.tolist(),
            "heads": self.heads.tolist(),
            "skip": self.skip.tolist(),
        }


class _NodeRecorder(NodeController):
    """Record ``h^0``, head contexts and skips of one plain pass."""

    def __init__(self) -> None:
        self.embedding: Optional[Tensor] = None
        self.heads: Dict[int, Tensor] = {}
        self.skip: Dict[int, Tensor] = {}

    def embedding_node(self, layer: int, hidden: Tensor) -> Tensor:
        if layer == 0:
            self.embedding = hidden.detach()
        return hidden

    def attention_inputs(
        self, layer: int, heads: Tensor, skip: Tensor
    ) -> Tuple[Tensor, Tensor]:
        self.heads[layer], self.skip[layer] = heads.detach(), skip.detach()
        return heads, skip

    def values(self) -> NodeValues:
        layers = sorted(self.heads)
        assert self.embedding is not None
        return NodeValues(
            self.embedding,
            torch.stack([self.heads[k] for k in layers], dim=1),
            torch.stack([self.skip[k] for k in layers], dim=1),
        )


@torch.no_grad()
def node_means(
    model: nn.Module,
    input_ids: Sequence[Sequence[int]],
    batch_size: int = 64,
) -> NodeValues:
    """Mean activation of every ablatable node over a data set, per position.

    Position j's mean is taken over the examples that have a position j (all of them
    when, as in an agreement task, every sentence has the same length).

    Args:
        model (nn.Module): The Hugging Face model (run as ``model(input_ids=...)``).
        input_ids (sequence of sequences of int): The data set's token ids.
        batch_size (int, optional): Examples per forward pass. Default: 64

    Returns:
        NodeValues: the means, covering the longest example's positions.
    """
    if not input_ids:
        raise ValueError("node_means: no examples")
    graph = model_graph(model)
    sums: Optional[NodeValues] = None
    length = max(len(ids) for ids in input_ids)
    counts = torch.zeros(length, dtype=torch.float64)
    by_length: Dict[int, List[Sequence[int]]] = {}
    for ids in input_ids:
        by_length.setdefault(len(ids), []).append(ids)
    with analysis_mode(model):
        for size, group in sorted(by_length.items()):
            for start in range(0, len(group), batch_size):
                batch = torch.tensor(group[start:start + batch_size], dtype=torch.long)
                recorder = _NodeRecorder()
                with restrict_paths(graph, recorder):
                    model(input_ids=batch)
                part = recorder.values()
                sums = _accumulate(sums, part, length)
                counts[:size] += batch.shape[0]
    assert sums is not None
    return NodeValues(
        sums.embedding / counts.view(-1, 1).to(sums.embedding.dtype),
        sums.heads / counts.view(1, -1, 1, 1).to(sums.heads.dtype),
        sums.skip / counts.view(1, -1, 1).to(sums.skip.dtype),
    )


def _accumulate(
    sums: Optional[NodeValues], part: NodeValues, length: int
) -> NodeValues:
    """Add a batch's per-position sums (padded to ``length``) to ``sums``."""
    pad = length - part.embedding.shape[1]

    def padded(value: Tensor, position_dim: int) -> Tensor:
        total = value.sum(0)
        if not pad:
            return total
        shape = list(total.shape)
        shape[position_dim] = pad
        return torch.cat([total, total.new_zeros(shape)], dim=position_dim)

    new = NodeValues(
        padded(part.embedding, 0), padded(part.heads, 1), padded(part.skip, 1)
    )
    if sums is None:
        return new
    return NodeValues(
        sums.embedding + new.embedding, sums.heads + new.heads, sums.skip + new.skip
    )


class AblationController(NodeController):
    """Replace forward values at nodes: one node set, reference and mode per batch row.

    Args:
        node_sets (sequence of NodeSet): One per row of the pass.
        reference (NodeValues or sequence): Values of replaced nodes, for the
            example's positions: one for every row, or one per row.
        mode (str or sequence of str): ``"keep"`` replaces the nodes outside a row's
            set; ``"remove"`` the nodes inside it. One for every row, or one per row.
    """

    def __init__(
        self,
        node_sets: Sequence[NodeSet],
        reference: Union[NodeValues, Sequence[NodeValues]],
        mode: Union[str, Sequence[str]] = "keep",
    ) -> None:
        rows = len(node_sets)
        modes = [mode] * rows if isinstance(mode, str) else list(mode)
        references = (
            [reference] * rows if isinstance(reference, NodeValues) else list(reference)
        )
        bad = sorted({m for m in modes if m not in MODES})
        if bad or len(modes) != rows or len(references) != rows:
            raise ValueError(
                f"mode must be one of {MODES} (or one per row), got {mode!r}; give "
                "one reference (or one per row)"
            )
        # True = the actual value: inside the set for "keep", outside for "remove"
        remove = torch.tensor([m == "remove" for m in modes])

        def stacked(name: str) -> Tensor:
            masks = torch.stack([getattr(s, name) for s in node_sets])
            return masks ^ remove.view(-1, *([1] * (masks.dim() - 1)))

        self.embedding = stacked("embedding")  # (R, T)
        self.heads = stacked("heads")  # (R, L, T, A)
        self.skip = stacked("skip")  # (R, L, T)
        self.reference = NodeValues(
            *(torch.stack([getattr(r, name) for r in references])
              for name in ("embedding", "heads", "skip"))
        )  # per row: (R, T, D), (R, L, T, A, D/A), (R, L, T, D)

    def embedding_node(self, layer: int, hidden: Tensor) -> Tensor:
        if layer != 0:
            return hidden
        keep = self.embedding.to(hidden.device)[..., None]
        return torch.where(keep, hidden, self.reference.embedding.to(hidden))

    def attention_inputs(
        self, layer: int, heads: Tensor, skip: Tensor
    ) -> Tuple[Tensor, Tensor]:
        keep_heads = self.heads[:, layer - 1].to(heads.device)[..., None]
        keep_skip = self.skip[:, layer - 1].to(skip.device)[..., None]
        return (
            torch.where(
                keep_heads, heads, self.reference.heads[:, layer - 1].to(heads)
            ),
            torch.where(keep_skip, skip, self.reference.skip[:, layer - 1].to(skip)),
        )


def _example_inputs(request: AttributionRequest) -> Tuple[Tensor, Tuple[Any, ...]]:
    """(1, T) token ids and the forward arguments (a tuple) of the one example of
    ``request``.

    Raises:
        TypeError: a ``request`` that is not an :class:`AttributionRequest`.
        ValueError: a request of more than one example or with an
            ``attention_mask`` (an ablation runs one unpadded example).
    """
    expect_request(request)
    if request.batch != 1 or request.attention_mask is not None:
        raise ValueError(
            "request: an ablation runs one unpadded example; build the request "
            "of that example alone, without attention_mask"
        )
    additional_forward_args = request.additional_forward_args
    if additional_forward_args is None:
        additional_forward_args = ()
    elif not isinstance(additional_forward_args, tuple):
        additional_forward_args = (additional_forward_args,)
    return request.inputs.reshape(1, -1), additional_forward_args


@torch.no_grad()
def ablated_qoi(
    model: nn.Module,
    forward_func: Callable[..., Tensor],
    request: AttributionRequest,
    node_sets: Sequence[NodeSet],
    reference: Union[NodeValues, Sequence[NodeValues]],
    mode: Union[str, Sequence[str]] = "keep",
) -> Tensor:
    """The QoI of one example with each node set ablated (one batched forward pass).

    Args:
        model (nn.Module): The model ``forward_func`` runs.
        forward_func (Callable): ``forward_func(input_ids, *additional_forward_args)``
            returning one QoI per row; per-example arguments are scalars or (1,)
            tensors and are expanded to the rows.
        request (AttributionRequest): The request of the example
            (:meth:`~captum_influence_patterns.attribution.InfluencePatterns.request`:
            one example, no attention mask), which carries its token ids and
            ``additional_forward_args``.
        node_sets (sequence of NodeSet): One ablation per row.
        reference (NodeValues or sequence): Reference values (e.g.
            :func:`node_means`, or ``.zeros_like()``), covering at least T
            positions: one for every row, or one per row.
        mode (str or sequence of str, optional): ``"keep"`` or ``"remove"``, for
            every row or per row. Default: ``"keep"``

    Returns:
        Tensor: (len(node_sets),) float64 QoIs.
    """
    ids, additional_forward_args = _example_inputs(request)
    rows = len(node_sets)
    if not rows:
        return torch.zeros(0, dtype=torch.float64)
    length = ids.shape[1]
    references = (
        reference.first(length)
        if isinstance(reference, NodeValues)
        else [r.first(length) for r in reference]
    )
    controller = AblationController(node_sets, references, mode)
    args = tuple(
        arg.expand(rows, *arg.shape[1:])
        if isinstance(arg, Tensor) and arg.dim()
        else arg
        for arg in additional_forward_args
    )
    graph = model_graph(model)
    with analysis_mode(model):
        # A user's hook the graph's hooks would bypass is refused, as in attribute.
        check_hooks_kept(graph, lambda: forward_func(ids, *additional_forward_args))
        with restrict_paths(graph, controller):
            output = forward_func(ids.expand(rows, -1), *args)
    return output.reshape(rows).double().cpu()


# --------------------------------------------------------------- per-example ablation
def route_sets(
    patterns: Dict[str, Sequence[Pattern]], subject: Optional[int]
) -> Dict[Tuple[str, str], List[Pattern]]:
    """The route sets ablated per example: per method, the subject's route and the
    union of all sources' routes.

    Args:
        patterns (dict): Method name (``"guided"`` or a reference route) -> patterns
            of the example's sources.
        subject (int, optional): The subject's position; None skips the subject set.

    Returns:
        dict: ``(method, "subject" | "union")`` -> the routes of that set.
    """
    sets: Dict[Tuple[str, str], List[Pattern]] = {}
    for name, row in patterns.items():
        chosen = [p for p in row if p.source == subject]
        if chosen:
            sets[(name, "subject")] = chosen
        if row:
            sets[(name, "union")] = list(row)
    return sets


def ablation_record(
    model: nn.Module,
    forward_func: Callable[..., Tensor],
    request: AttributionRequest,
    patterns: Dict[str, Sequence[Pattern]],
    references: Dict[str, NodeValues],
    subject: Optional[int] = None,
    level: str = "attention",
    include_source: bool = True,
) -> Dict[str, Any]:
    """Every ablation of one example, as a JSON-safe dict.

    For each reference (``"mean"``/``"zero"``), the QoI with every node replaced
    (``"nothing"``) and, per method and route set (:func:`route_sets`), the QoI when
    keeping only the set and when removing only the set. ``request`` is the
    example's, as in :func:`ablated_qoi` (e.g. ``ablation_record(model,
    forward_func, ip.request(input_ids, None, None, args), patterns=...,
    references=...)``); ``level`` and ``include_source`` are those of
    :func:`route_nodes_set`.

    Returns:
        dict: ``{reference: {"nothing": q, method: {set: {"keep": q, "remove": q}}}}``.
    """
    input_ids = _example_inputs(request)[0]
    graph = model_graph(model)
    length = input_ids.shape[1]
    sets = route_sets(patterns, subject)
    keys = list(sets)
    node_sets = [
        route_nodes_set(sets[key], length, graph.num_heads, level, include_source)
        for key in keys
    ]
    # one batched pass: per reference, nothing kept, each set kept, each set removed
    rows = [NodeSet.full(graph, length, False)] + node_sets + node_sets
    modes = ["keep"] * (1 + len(keys)) + ["remove"] * len(keys)
    values = ablated_qoi(
        model,
        forward_func,
        request,
        rows * len(references),
        [values for values in references.values() for _ in rows],
        modes * len(references),
    ).tolist()
    out: Dict[str, Any] = {}
    for r, name in enumerate(references):
        kept = values[r * len(rows): r * len(rows) + 1 + len(keys)]
        removed = values[r * len(rows) + 1 + len(keys): (r + 1) * len(rows)]
        entry: Dict[str, Any] = {"nothing": _float(kept[0])}
        for k, (method, which) in enumerate(keys):
            entry.setdefault(method, {})[which] = {
                "keep": _float(kept[k + 1]),
                "remove": _float(removed[k]),
            }
        out[name] = entry
    return out


def _float(value: float) -> Optional[float]:
    number = float(value)
    return number if math.isfinite(number) else None
