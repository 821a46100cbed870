"""Influence at a cut (docs/method.md, sections 3-5) for one example.

:class:`ExampleProblem` holds one example's straight-line path through the word
embeddings, ``x(alpha) = x' + alpha (x - x')``, with a quadrature rule
(:func:`.quadrature.integration_rule`: Captum's, or the authors'), and runs gated
passes of the model along it:

- reverse passes give ``dQoI/dz`` at nodes under downstream gates;
- forward-mode passes (``torch.autograd.forward_ad``) give the exact ``dz/dalpha`` for a
  tangent ``x_i - x'_i`` at the source position only, under upstream gates.

The influence through a node is the quadrature-weighted sum over alpha of the two,
summed over the node's units. Rows of a pass are (group, step) pairs, group-major: a
group is one source token, or one pattern, each with its own gates.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from .utils._captum_compat import TargetType, run_forward
from .graph import ModelGraph, NodeController, StopForward, restrict_paths
from .graph.gating import GatedPass, Gates, NodeKey, tangent_of
from .quadrature import IntegrationSettings, integration_rule
from .results import LEVELS, Level, Pattern
from .utils.stack import user_stacklevel


#: Most elements of every layer's output (rows x T x L x D) that one pass holds when
#: ``internal_batch_size`` does not bound it: a memory cap. A pass keeps each layer's
#: activations for its reverse pass, tens of times this (SmolLM2's six sources of a
#: 7-token prefix in one pass took 9 GB; 400 steps of routes, 23.5 GB).
PASS_ELEMENTS = 1 << 23


class RunCounter(NodeController):
    """Hands every node to ``inner`` and counts the model's runs in one call of
    ``forward_func`` (its word-embedding calls).

    A ``forward_func`` that runs the model twice (an average of two calls, a contrast
    against a fixed sentence) would have every run interpolated and gated as if it
    were the input's, so its influences would be wrong; such functions are refused.
    """

    def __init__(
        self,
        inner: NodeController,
        rows: Optional[int] = None,
        layers: Optional[int] = None,
    ) -> None:
        self.inner = inner
        self.runs = 0
        #: The rows forward_func was given (each model run must take all of them).
        self.rows = rows
        #: L, for a pass that runs the whole model (the layer calls are checked).
        self.layers = layers
        self.layer_calls: Dict[int, int] = {}

    def word_embeddings(self, output: Tensor) -> Tensor:
        self.runs += 1
        if self.rows is not None and output.shape[0] != self.rows:
            raise ValueError(
                f"forward_func: the model ran on {output.shape[0]} rows where "
                f"forward_func was given {self.rows} (does it split its input into "
                "batches?); run the model once on all the rows it receives, and bound "
                "memory with internal_batch_size instead"
            )
        return self.inner.word_embeddings(output)

    def embedding_node(self, layer: int, hidden: Tensor) -> Tensor:
        self.layer_calls[layer] = self.layer_calls.get(layer, 0) + 1
        return self.inner.embedding_node(layer, hidden)

    def attention_inputs(
        self, layer: int, heads: Tensor, skip: Tensor
    ) -> Tuple[Tensor, Tensor]:
        return self.inner.attention_inputs(layer, heads, skip)

    def mlp_inputs(
        self, layer: int, mlp: Tensor, residual: Tensor
    ) -> Tuple[Tensor, Tensor]:
        return self.inner.mlp_inputs(layer, mlp, residual)

    def check_one_run(self) -> None:
        if self.layers is not None:  # a whole pass: what else forward_func called
            runs = self.layer_calls.get(self.layers, 0)
            if self.runs > 1 and runs <= 1:
                raise ValueError(
                    f"forward_func: it called the model's word-embedding module "
                    f"{self.runs} times in one call but ran the model once; every "
                    "call of it is interpolated as the input's, so compute other "
                    "embeddings beforehand under torch.no_grad() and pass them in "
                    "additional_forward_args"
                )
            extra = sorted(
                layer
                for layer, calls in self.layer_calls.items()
                if layer > self.layers or (layer and calls > max(runs, 1))
            )
            if extra:
                raise ValueError(
                    "forward_func: it called the model's layers outside the model's "
                    f"forward pass (extra calls at layers {extra}, e.g. a layer run "
                    "on a dummy tensor); every layer call is taken as part of the "
                    "input's pass, so call only the model (compute anything else "
                    "beforehand under torch.no_grad())"
                )
        if self.runs > 1:
            raise ValueError(
                f"forward_func: it ran the model {self.runs} times in one call (e.g. "
                "an average of calls, or a contrast against a fixed sentence); it "
                "must run it once on the ids it receives: compute any other "
                "sentence's output beforehand under torch.no_grad() and pass it in "
                "additional_forward_args"
            )


class ExampleProblem:
    """One example: its interpolation path, quantity of interest and gated passes.

    Args:
        graph (ModelGraph): The model's graph adapter.
        forward_func (Callable): ``forward_func(input_ids, *additional_forward_args)``.
        input_ids (Tensor): (T,) token ids.
        baseline_ids (Tensor or None): (T,) baseline token ids; None for a zero
            output of the interpolated layer.
        target (TargetType): Captum target for this example (selects the QoI).
        additional_forward_args (tuple): This example's extra arguments; tensors have a
            leading dimension of 1 and are expanded to the rows of each pass.
        settings (IntegrationSettings): Interpolation points, rule and rows per pass.
    """

    def __init__(
        self,
        graph: ModelGraph,
        forward_func: Callable,
        input_ids: Tensor,
        baseline_ids: Optional[Tensor],
        target: TargetType,
        additional_forward_args: Tuple[Any, ...],
        settings: IntegrationSettings,
    ) -> None:
        self.graph = graph
        self.forward_func = forward_func
        self.input_ids = input_ids
        self.target = target
        self.additional_forward_args = additional_forward_args
        self.settings = settings
        self.n_steps = settings.n_steps
        self.internal_batch_size = settings.internal_batch_size
        with torch.no_grad():
            embeds = self._layer_output(input_ids)
            baseline = (
                torch.zeros_like(embeds)
                if baseline_ids is None
                else self._layer_output(baseline_ids)
            )
        alphas, weights = integration_rule(settings.method, settings.n_steps)
        options = {"dtype": embeds.dtype, "device": embeds.device}
        self.alphas = torch.tensor(alphas, **options)
        self.weights = torch.tensor(weights, **options)
        self.baseline_embeds = baseline
        self.delta = embeds - baseline
        #: (n_steps, T) positions of h^L the QoI reads, set by :func:`token_influence`.
        self.qoi_reads: Optional[Tensor] = None
        #: (T, D) integrated gradients on the interpolated layer's output (Captum's
        #: LayerIntegratedGradients), set by :func:`open_gradients`.
        self.layer_attributions: Optional[Tensor] = None

    def _layer_output(self, ids: Tensor) -> Tensor:
        """(T, D) output of the interpolated layer for ``ids``: a call of the word
        embeddings, else, like Captum's LayerIntegratedGradients, what the layer
        gives inside ``forward_func`` (type and position ids as it passes them)."""
        if self.graph.interpolated is self.graph.word_embeddings:
            return self.graph.word_embeddings(ids[None])[0]
        capture = _LayerCapture()
        self.run(capture, 1, ids)
        return capture.output[0]

    @property
    def num_positions(self) -> int:
        return self.input_ids.shape[0]

    def rows_per_pass(self) -> int:
        """How many full-sequence rows one pass may hold under :data:`PASS_ELEMENTS`
        (at least one), for passes that ``internal_batch_size`` does not bound."""
        per_row = self.num_positions * self.graph.num_layers * self.delta.shape[-1]
        return max(1, PASS_ELEMENTS // per_row)

    # ----------------------------------------------------------------- rows and chunks
    def rows(self, groups: int) -> Tuple[Tensor, Tensor]:
        """(group, step) of every row for ``groups`` groups, group-major."""
        device = self.alphas.device
        group = torch.arange(groups, device=device).repeat_interleave(self.n_steps)
        step = torch.arange(self.n_steps, device=device).repeat(groups)
        return group, step

    def chunks(self, total_rows: int, unit: int = 1) -> List[slice]:
        """Slices of at most ``internal_batch_size`` rows, multiples of ``unit``."""
        size = (
            total_rows if self.internal_batch_size is None else self.internal_batch_size
        )
        size = max(unit, size - size % unit)
        return [slice(s, min(s + size, total_rows)) for s in range(0, total_rows, size)]

    def weighted_sum(
        self, values: Tensor, group: Tensor, step: Tensor, groups: int
    ) -> Tensor:
        """Sum ``values`` (rows, ...) over steps with quadrature weights, per group."""
        weighted = values * self.weights[step].view(-1, *([1] * (values.dim() - 1)))
        out = weighted.new_zeros((groups, *values.shape[1:]))
        return out.index_add_(0, group, weighted)

    # ------------------------------------------------------------------------ passes
    def interpolated(self, step: Tensor) -> Tensor:
        """(rows, T, D) word embeddings ``x(alpha)`` at each row's step."""
        return self.baseline_embeds + self.alphas[step].view(-1, 1, 1) * self.delta

    def source_tangent(self, source: Tensor) -> Tensor:
        """(rows, T, D) ``dx/dalpha`` restricted to each row's source position."""
        tangent = self.delta.new_zeros((source.shape[0], *self.delta.shape))
        rows = torch.arange(source.shape[0], device=source.device)
        tangent[rows, source] = self.delta[source]
        return tangent

    def run(
        self, controller: NodeController, rows: int, ids: Optional[Tensor] = None
    ) -> Optional[Tensor]:
        """The QoI (rows,) of one pass under ``controller`` (on the input ids, or
        ``ids``); None if stopped early."""
        ids = (self.input_ids if ids is None else ids).expand(rows, -1)
        args = tuple(
            (
                arg.expand(rows, *arg.shape[1:])
                if isinstance(arg, Tensor) and arg.dim()
                else arg
            )
            for arg in self.additional_forward_args
        )
        counted = RunCounter(controller, rows=rows)
        with restrict_paths(self.graph, counted):
            try:
                output = run_forward(self.forward_func, ids, self.target, args or None)
            except StopForward:
                output = None
        counted.check_one_run()
        return None if output is None else output.reshape(rows)

    def gradients(
        self,
        group: Tensor,
        step: Tensor,
        gates: Optional[Gates],
        read: Sequence[NodeKey],
    ) -> Tuple[Tensor, Dict[NodeKey, Tensor]]:
        """Reverse pass: ``dQoI/dx`` at the word embeddings, ``dQoI/dz`` at ``read``."""
        inputs_embeds = self.interpolated(step).requires_grad_()
        controller = GatedPass(inputs_embeds, group, gates)
        with torch.enable_grad():
            qoi = self.run(controller, step.shape[0])
            wanted = [inputs_embeds] + [controller.values[key] for key in read]
            grads = torch.autograd.grad(qoi.sum(), wanted, allow_unused=True)
        grads = [torch.zeros_like(w) if g is None else g for w, g in zip(wanted, grads)]
        return grads[0], dict(zip(read, grads[1:]))

    def tangents(
        self,
        group: Tensor,
        source: Tensor,
        step: Tensor,
        gates: Optional[Gates],
        read: Sequence[NodeKey],
    ) -> Dict[NodeKey, Tensor]:
        """Forward-mode pass: exact ``dz/dalpha`` at ``read`` for each row's source."""
        last = max(layer for _, layer in read)
        with torch.no_grad(), fwAD.dual_level():
            inputs_embeds = fwAD.make_dual(
                self.interpolated(step), self.source_tangent(source)
            )
            controller = GatedPass(inputs_embeds, group, gates, stop_after=last)
            self.run(controller, step.shape[0])
            return {key: tangent_of(controller.values[key]) for key in read}

    def endpoint_qoi(self) -> Tuple[float, float]:
        """QoI at the input and at the baseline (no gates)."""
        inputs = torch.stack([self.baseline_embeds + self.delta, self.baseline_embeds])
        zeros = torch.zeros(2, dtype=torch.long, device=inputs.device)
        with torch.no_grad():
            qoi = self.run(GatedPass(inputs, zeros, record=False), 2)
        return float(qoi[0]), float(qoi[1])


class _LayerCapture(NodeController):
    """Records the interpolated layer's output and stops the pass there."""

    def word_embeddings(self, output: Tensor) -> Tensor:
        self.output = output
        raise StopForward


def token_influence(
    problem: ExampleProblem, layers: Iterable[int] = ()
) -> Tuple[Tensor, Dict[int, Tensor]]:
    """``g`` for every position (T,), and the open ``dQoI/dh^l`` (n_steps, T, D) per
    layer (:func:`open_gradients` at the embedding nodes)."""
    layers = list(layers)
    g, grads = open_gradients(problem, [("embedding", k) for k in layers])
    return g, {layer: grads[("embedding", layer)] for layer in layers}


def open_gradients(
    problem: ExampleProblem, read: Sequence[NodeKey]
) -> Tuple[Tensor, Dict[NodeKey, Tensor]]:
    """``g`` for every position (T,), and the open ``dQoI/dz`` (n_steps, T, ...) at
    every node set in ``read``.

    One reverse pass over the steps (chunked), as in Captum's LayerIntegratedGradients.
    It also sets ``problem.qoi_reads``: which positions of ``h^L`` the QoI reads at
    each step (non-zero ``dQoI/dh^L_j``), for :func:`moving_reads`, and
    ``problem.layer_attributions``: g before the sum over the layer's units.
    """
    collected: Dict[NodeKey, List[Tensor]] = {key: [] for key in read}
    last = ("embedding", problem.graph.num_layers)
    keys = list(dict.fromkeys([*collected, last]))
    group, step = problem.rows(1)
    attributions = torch.zeros_like(problem.delta)
    reads = []
    for chunk in problem.chunks(step.shape[0]):
        grad_x, grads = problem.gradients(group[chunk], step[chunk], None, keys)
        products = grad_x * problem.delta
        attributions += problem.weighted_sum(products, group[chunk], step[chunk], 1)[0]
        for key in collected:
            collected[key].append(grads[key])
        reads.append((grads[last] != 0).any(-1))
    problem.qoi_reads = torch.cat(reads)
    problem.layer_attributions = attributions
    # One key at a time, each list let go once joined (no copy of a single chunk):
    # the gradients of every layer are never held twice.
    joined = {}
    for key in list(collected):
        values = collected.pop(key)
        joined[key] = values[0] if len(values) == 1 else torch.cat(values)
    return attributions.sum(-1), joined


def moving_reads(
    problem: ExampleProblem, output_position: Optional[int]
) -> Optional[str]:
    """Where the QoI reads ``h^L`` elsewhere than ``output_position`` along the path
    (e.g. a max over positions whose argmax moves), in words; None where it does not.

    Reads ``problem.qoi_reads`` from the last :func:`token_influence`. Steps where the
    QoI reads no position (a saturated readout) say nothing.
    """
    reads = problem.qoi_reads
    if output_position is None or reads is None:
        return None
    elsewhere = reads.clone()
    elsewhere[:, output_position] = False
    if not bool(elsewhere.any()):
        return None
    order = problem.alphas.argsort().tolist()
    spans: List[Tuple[List[int], float, float]] = []
    for k in order:
        positions = reads[k].nonzero().flatten().tolist()
        alpha = float(problem.alphas[k])
        if not positions:
            continue
        if spans and spans[-1][0] == positions:
            spans[-1] = (positions, spans[-1][1], alpha)
        else:
            spans.append((positions, alpha, alpha))
    return ", ".join(
        f"{positions} for alpha in [{start:.2f}, {end:.2f}]"
        for positions, start, end in spans
    )


_NODE_KINDS = {
    "embedding": ("embedding",),
    "heads": ("heads",),
    "skip": ("skip",),
    "attention": ("heads", "skip"),
    "mlp": ("mlp",),
    "residual": ("residual",),
    "feedforward": ("mlp", "residual"),
}


def warn_moving_reads(
    problem: ExampleProblem, output_position: Optional[int], b: int
) -> None:
    """Warn, naming the steps, where the QoI of example ``b`` reads ``h^L`` elsewhere
    than ``output_position`` along the path (:func:`moving_reads`)."""
    where = moving_reads(problem, output_position)
    if where is not None:
        warnings.warn(
            f"forward_func: along the path the QoI of example {b} reads h^L at "
            f"positions {where}, not only at output_position {output_position} "
            "(e.g. a max over positions whose argmax moves); routes end at "
            f"{output_position}, so influence reaching the QoI elsewhere is "
            "missed (I/g can be 0 for the strongest tokens): make the QoI read "
            "one fixed position (e.g. the argmax at the input), or pass "
            "output_position=None",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def node_influence(
    problem: ExampleProblem,
    sources: Tensor,
    layer: int,
    kind: str,
    upstream: Optional[Gates] = None,
    downstream: Optional[Gates] = None,
) -> Dict[NodeKey, Tensor]:
    """Influence of each source through every node of one kind at one layer.

    Literal docs/method.md, section 5: a forward-mode pass under ``upstream`` gates
    and a reverse pass under ``downstream`` gates, multiplied and summed over units
    and steps.

    Args:
        sources (Tensor): (S,) source positions; gates are indexed by source.
        layer (int): 0..L for ``kind="embedding"``, else 1..L.
        kind (str): ``"embedding"`` (the nodes ``h^l_j``), ``"heads"`` (every head
            ``a^l_{j,n}``), ``"skip"`` (every ``s^l_j``) or ``"attention"`` (both).

    Returns:
        dict: ``("embedding", l)`` -> (S, T), ``("heads", l)`` -> (S, T, A),
        ``("skip", l)`` -> (S, T), for the kinds read.
    """
    read = [(name, layer) for name in _NODE_KINDS[kind]]
    group, step = problem.rows(sources.shape[0])
    totals: Dict[NodeKey, Tensor] = {}
    for chunk in problem.chunks(step.shape[0]):
        rows = (group[chunk], step[chunk])
        tangents = problem.tangents(rows[0], sources[rows[0]], rows[1], upstream, read)
        _, grads = problem.gradients(rows[0], rows[1], downstream, read)
        for key in read:
            part = problem.weighted_sum(
                (tangents[key] * grads[key]).sum(-1), *rows, sources.shape[0]
            )
            totals[key] = totals[key] + part if key in totals else part
    return totals


def route_gates(
    positions: Tensor,
    num_positions: int,
    num_heads: int,
    heads: Optional[Tensor] = None,
    mlp: Optional[Tensor] = None,
) -> Gates:
    """Gates that keep exactly the paths of each route (one group per route).

    Args:
        positions (Tensor): (R, L + 1) ``j_0 .. j_L`` per route; ``h^l`` is kept at
            ``j_l`` only.
        num_positions (int): T.
        num_heads (int): Heads per layer.
        heads (Tensor, optional): (R, L) per layer the one head kept at ``j_l``, or -1
            for the skip. None: the embedding level (every head and the skip kept).
        mlp (Tensor, optional): (R, L) bools, with ``heads`` in split graphs: True
            keeps the MLP branch at ``j_l``, False the residual around it. None keeps
            both.
    """
    groups, width = positions.shape
    device = positions.device
    options = {"device": device, "dtype": torch.float32}
    index = torch.arange(groups, device=device)
    gates = Gates()
    at_route = {}
    for layer in range(width):
        mask = torch.zeros(groups, num_positions, **options)
        mask[index, positions[:, layer]] = 1.0
        gates.embedding[layer] = at_route[layer] = mask
    if heads is None:
        return gates
    for layer in range(1, width):
        chosen = heads[:, layer - 1]
        is_head = (chosen >= 0).to(options["dtype"])
        one_head = torch.nn.functional.one_hot(chosen.clamp(min=0), num_heads)
        gates.heads[layer] = (
            at_route[layer][..., None] * (one_head * is_head[:, None])[:, None]
        )
        gates.skip[layer] = at_route[layer] * (1 - is_head)[:, None]
        if mlp is not None:
            is_mlp = mlp[:, layer - 1].to(options["dtype"])[:, None]
            gates.mlp[layer] = at_route[layer] * is_mlp
            gates.residual[layer] = at_route[layer] * (1 - is_mlp)
    return gates


def pattern_gates(
    patterns: Sequence[Pattern],
    num_positions: int,
    num_heads: int,
    level: Level,
    device: Any,
) -> Gates:
    """Gates that keep exactly the paths of each pattern (one group per pattern).

    ``level="embedding"`` keeps ``h^l_{j_l}`` at every layer; ``level="attention"`` also
    keeps only the chosen head or skip at each layer (and, where the pattern chose
    one, the MLP branch or the residual).
    """
    positions, heads, mlp = route_tensors(patterns, level, device)
    return route_gates(positions, num_positions, num_heads, heads, mlp)


def route_tensors(
    patterns: Sequence[Pattern], level: Level, device: Any
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Patterns as the route tensors of :func:`route_gates`: (R, L + 1) positions and,
    at the attention level, (R, L) heads (-1 for the skip) and, where a pattern chose
    the MLP or the residual, (R, L) MLP choices."""
    positions = torch.tensor([p.positions for p in patterns], device=device)
    heads = mlp = None
    if level == "attention":
        heads = torch.tensor(
            [[-1 if n.head is None else n.head for n in p.nodes] for p in patterns],
            device=device,
        )
        if any(n.ffn is not None for p in patterns for n in p.nodes):
            mlp = torch.tensor(
                [[n.ffn == "mlp" for n in p.nodes] for p in patterns], device=device
            )
    return positions, heads, mlp


def gated_influence(problem: ExampleProblem, sources: Tensor, gates: Gates) -> Tensor:
    """A gated integrated gradient per group of ``gates``: (G,) influences of source
    ``sources[g]`` through the paths group ``g`` keeps (reverse mode only)."""
    count = sources.shape[0]
    group, step = problem.rows(count)
    total = problem.delta.new_zeros(count)
    for chunk in problem.chunks(step.shape[0]):
        grad_x, _ = problem.gradients(group[chunk], step[chunk], gates, [])
        source = sources[group[chunk]]
        rows = torch.arange(source.shape[0], device=source.device)
        products = (grad_x[rows, source] * problem.delta[source]).sum(-1)
        total += problem.weighted_sum(products, group[chunk], step[chunk], count)
    return total


def pattern_influence(
    problem: ExampleProblem, patterns: Sequence[Pattern], level: Level = "attention"
) -> Tensor:
    """Brute-force influence of given patterns: a gated integrated gradient per pattern.

    Uses reverse mode only (no forward-mode tangents), independent of the search, so it
    checks the search's reported ``influence`` (``level="attention"``) and
    ``embedding_influence`` (``level="embedding"``).

    Returns:
        Tensor: (P,) influences in the order of ``patterns``.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be 'attention' or 'embedding', got {level!r}")
    if not patterns:
        return problem.delta.new_zeros(0)
    device = problem.delta.device
    gates = pattern_gates(
        patterns, problem.num_positions, problem.graph.num_heads, level, device
    )
    sources = torch.tensor([p.source for p in patterns], device=device)
    return gated_influence(problem, sources, gates)
