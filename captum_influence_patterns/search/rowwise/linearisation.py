"""The row-wise schedule of guided pattern refinement, for every family
(docs/method.md, section 7.2; equation numbers below are that section's).

One open reverse pass over the steps records every layer's primal values (Captum's
LayerIntegratedGradients runs the same pass); then every source's tangents and
cotangents are carried through the linearisation of each layer at the few positions
where they are non-zero. A tangent entering layer ``l`` sits at one position ``p``, so
its attention JVP touches one row and one column of each score matrix (eq. 7.4);
everything after attention acts position by position, so only the chosen position's row
goes on (eq. 7.6). Stage A reads ``I(h^l_j)`` for every ``j`` from the open gradients at
the head contexts and the skip (eq. 7.7-7.8); stage B's cotangents flow down the route
one position per layer (eq. 7.9-7.10), batched over sources; fixed routes are scored by
the same tangent pass with given choices up to some layer and the same cotangents down
to it (eq. 7.11-7.13), each computed once per distinct route prefix or suffix. Rows at
one position share its primal values: every position-wise JVP runs its primal part once
per position (:func:`_jvp`). The beam (:mod:`.beam_search`) carries its prefixes with
the same pieces.

:class:`LinearisedBlock` is the one linearised block. It reads the family's named
slots (:class:`.graph.families.EncoderSublayers` or :class:`.graph.families.InlineBlock`)
and covers post-LN encoders (BERT, RoBERTa, ELECTRA, DistilBERT, ALBERT with shared
layers), pre-LN GPT-2 (a fused ``Conv1D`` projection) and pre-RMSNorm Llama, Mistral and
Qwen2 (rotary positions, grouped-query attention, a gated MLP): each is described by
three position-wise maps, the projection ``Pi`` (eq. 7.2) and the layer after attention
``F = M(phi(a), a)`` with ``a = A(c, s)`` (eq. 7.1), and the attention weights the model
itself computed (causal and padding masks come with them). :func:`rowwise_blocks`
returns None where it does not apply (relative positions, non-eager attention,
training mode, an unrecognised layer); the caller then takes the forward-mode schedule.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ...graph.gating import NodeKey, tangent_of
from ...influence import ExampleProblem, open_gradients
from ...graph import (
    EncoderSublayers,
    ModelGraph,
    NodeController,
    StopForward,
    foreign_hooks,
)
from ..state import SearchState, fast_stages, ignore_progress, register_search

# Most elements of one (sources, steps, positions, heads) tensor per chunk of sources
# when internal_batch_size is not given (a memory cap; these tensors are small next to
# the recorded forward pass).
_ROWWISE_ELEMENTS = 1 << 22


#: Slots of EncoderSublayers and InlineBlock that name modules.
_MODULE_SLOTS = (
    "query",
    "key",
    "value",
    "qkv",
    "attention_output",
    "intermediate",
    "output",
    "output_projection",
    "attention_norm",
    "mlp",
    "output_norm",
    "input_norm",
)


class RowwiseMismatch(RuntimeError):
    """The recorded attention is not what the linearisation assumes."""


# ------------------------------------------------------------------------ helpers
def _jvp(
    function: Callable[..., Tensor],
    primals: Sequence[Tensor],
    tangents: Sequence[Tensor],
    position: Tensor,
    constants: Sequence[Tensor] = (),
) -> Tuple[Tensor, Tensor]:
    """``function``'s output and its exact forward-mode derivative, row by row.

    Every argument is (S, steps, ...), row s taken at position ``position[s]`` of
    position-wise values, so rows at one position share their primals: each position
    with several rows runs its primal pass once and pushes its rows' tangents through
    it together (``torch.func.vmap`` over ``torch.func.jvp``); rows alone at their
    position go through one dual pass together. ``constants`` (S, ...) are further
    arguments, not differentiated (rotary tables).
    """
    order = torch.argsort(position, stable=True)
    counts = torch.unique_consecutive(position[order], return_counts=True)[1]
    groups = order.split(counts.tolist())
    alone = [rows for rows in groups if rows.shape[0] == 1]
    shared = [rows for rows in groups if rows.shape[0] > 1]
    outputs, derivatives = [], []
    if alone:
        rows = torch.cat(alone)
        out, derivative = _dual_pass(
            function,
            [p[rows] for p in primals],
            [t[rows] for t in tangents],
            [c[rows] for c in constants],
        )
        outputs.append(out)
        derivatives.append(derivative)
    for rows in shared:
        # copies: a view would make jvp allocate zero tangents of its whole base
        fixed = tuple(p[rows[0]].clone() for p in primals)
        extra = tuple(c[rows[0]].clone() for c in constants)

        def along(*directions: Tensor, fixed=fixed, extra=extra) -> Tuple[Tensor, ...]:
            return torch.func.jvp(lambda *x: function(*x, *extra), fixed, directions)

        out, derivative = torch.func.vmap(along, out_dims=(None, 0))(
            *(t[rows] for t in tangents)
        )
        outputs.append(out.expand(rows.shape[0], *out.shape))
        derivatives.append(derivative)
    done = torch.cat(alone + shared)
    inverse = torch.empty_like(done)
    inverse[done] = torch.arange(done.shape[0], device=done.device)
    return torch.cat(outputs)[inverse], torch.cat(derivatives)[inverse]


def _dual_pass(
    function: Callable[..., Tensor],
    primals: Sequence[Tensor],
    tangents: Sequence[Tensor],
    constants: Sequence[Tensor],
) -> Tuple[Tensor, Tensor]:
    """``function``'s output and its exact forward-mode derivative in one dual pass
    over every row."""
    with torch.no_grad(), fwAD.dual_level():
        duals = (fwAD.make_dual(p, t) for p, t in zip(primals, tangents))
        primal, tangent = fwAD.unpack_dual(function(*duals, *constants))
    return primal, torch.zeros_like(primal) if tangent is None else tangent


def _vjp(
    function: Callable[..., Tensor], primals: Sequence[Tensor], cotangent: Tensor
) -> Tuple[Tensor, ...]:
    """The reverse-mode derivative of ``function`` at ``primals`` along
    ``cotangent``."""
    with torch.enable_grad():
        inputs = [p.detach().requires_grad_() for p in primals]
        return torch.autograd.grad(function(*inputs), inputs, cotangent)


def _at(values: Tensor, positions: Tensor) -> Tensor:
    """(steps, T, ...) -> (S, steps, ...): each source's row at its own position."""
    return values.transpose(0, 1)[positions]


def _rotate_half(x: Tensor) -> Tensor:
    """The rotary embedding's 90-degree turn of each pair of halves (Llama's)."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _first_argument(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


# ------------------------------------------------------------------ the linearisation
class PositionTangent:
    """A tangent at ``h^{l-1}`` confined to one position ``p`` per source (eq. 7.3),
    with its query, key and value tangents and the row term of query ``p`` (eq. 7.4).

    Attributes:
        position (Tensor): (S,) ``p``.
        hidden (Tensor): (S, steps, D) the tangent of ``h^{l-1}_p``.
        query, key, value (Tensor): (S, steps, A, d) their tangents at ``p`` (keys
            and values per query head).
        row (Tensor): (S, steps, A, d) ``sum_k dP[p, k] v_k``: query ``p``'s whole
            score row moves through its query tangent.
    """

    def __init__(self, block: "LinearisedBlock", position: Tensor, hidden: Tensor):
        self.position, self.hidden = position, hidden
        rotation = block.rotation_at(position)
        _, projected = _jvp(
            block.projection_rows,
            (_at(block.hidden, position),),
            (hidden,),
            position,
            () if rotation is None else rotation,
        )
        self.query, self.key, self.value = projected.unbind(-3)
        # (S, steps, keys, A): P[p, k] and beta_k = scale * k_k . dq_p
        weights_row = block.attention.permute(2, 0, 3, 1)[position]
        beta = block.scale * torch.einsum("nkad,snad->snka", block.keys, self.query)
        score_change = weights_row * (beta - (weights_row * beta).sum(2, keepdim=True))
        self.row = torch.einsum("snka,nkad->snad", score_change, block.values)

    def select(self, rows: Tensor) -> "PositionTangent":
        """The tangents of some sources only (``rows``, with repeats), e.g. the
        prefixes a beam keeps."""
        chosen = object.__new__(PositionTangent)
        for name in ("position", "hidden", "query", "key", "value", "row"):
            setattr(chosen, name, getattr(self, name)[rows])
        return chosen


class LinearisedBlock:
    """One layer application: its recorded primal values, its open gradients, and its
    exact linearisation at single positions (docs/method.md, eq. 7.1-7.10).

    The family's named slots give four position-wise maps: :meth:`project` (``Pi``,
    eq. 7.2), :meth:`attention_sublayer` (``A``), :meth:`mlp_branch` (``phi``) and
    :meth:`combine` (``M``), with ``F = M(phi(A(c, s)), A(c, s))`` (eq. 7.1).

    Recorded layout (after :meth:`finish`): ``hidden`` ``h^{l-1}`` (steps, T, D);
    ``queries``, ``keys``, ``values``, ``contexts`` (steps, T, A, d), keys and values
    repeated over each group of query heads; ``attention`` (steps, A, T, T) the
    weights (query, key); ``rotation`` (cos, sin), each (steps, T, d), or None.
    """

    hidden: Tensor
    queries: Tensor
    keys: Tensor
    values: Tensor
    contexts: Tensor
    attention: Tensor
    rotation: Optional[Tuple[Tensor, Tensor]]
    context_grad: Tensor  # (steps, T, A, d) open dQoI/dc
    skip_grad: Tensor  # (steps, T, D) open dQoI/ds
    context_grad_dot: Tensor  # (steps, T, A) <dQoI/dc, c> per head

    def __init__(self, graph: ModelGraph, layer: nn.Module, attention: nn.Module):
        spec, config = graph.spec, graph.model.config
        self.slots = spec.block
        parts = {
            name: graph.part(layer, name)
            for name in _MODULE_SLOTS
            if getattr(self.slots, name, None)
        }
        self.part = parts.__getitem__
        self.layer, self.attention_module = layer, attention
        self.num_heads, self.head_size = graph.num_heads, graph.head_size
        shared = spec.key_value_heads and getattr(config, spec.key_value_heads, None)
        key_value_heads = shared or self.num_heads
        self.key_value_heads = key_value_heads
        self.group = self.num_heads // key_value_heads
        self.scale = float(attention.scaling)
        self.rotary = spec.positions == "rotary"
        mlp_function = getattr(self.slots, "mlp_function", None)
        self._mlp = (
            getattr(layer, mlp_function)
            if mlp_function
            else self.part("intermediate" if self.encoder else "mlp")
        )

    @property
    def encoder(self) -> bool:
        return isinstance(self.slots, EncoderSublayers)

    # --------------------------------------------- position-wise maps (eq. 7.1-7.2)
    def project(
        self, hidden: Tensor, rotation: Optional[Tuple[Tensor, Tensor]] = None
    ) -> Tensor:
        """``Pi``: (..., D) -> (3, ..., A, d) queries, keys and values (eq. 7.2): the
        input norm, the projections, the rotation, keys and values per query head."""
        slots = self.slots
        if not self.encoder and slots.input_norm is not None:
            hidden = self.part("input_norm")(hidden)
        width, shared = self.num_heads * self.head_size, self.key_value_heads
        if getattr(slots, "qkv", None):
            fused = self.part("qkv")(hidden)
            query, key, value = fused.split(
                [width, shared * self.head_size, shared * self.head_size], dim=-1
            )
        else:
            query, key, value = (
                self.part(name)(hidden) for name in ("query", "key", "value")
            )
        query = query.unflatten(-1, (self.num_heads, self.head_size))
        key, value = (x.unflatten(-1, (shared, self.head_size)) for x in (key, value))
        if rotation is not None:
            cos, sin = (r.unsqueeze(-2) for r in rotation)
            query = query * cos + _rotate_half(query) * sin
            key = key * cos + _rotate_half(key) * sin
        if self.group > 1:
            key, value = (x.repeat_interleave(self.group, dim=-2) for x in (key, value))
        return torch.stack([query, key, value])

    def projection_rows(self, hidden: Tensor, *rotation: Tensor) -> Tensor:
        """:meth:`project` as a position-wise map: (..., D) and the rotary tables
        (cos, sin), if any, -> (..., 3, A, d)."""
        tables = (rotation[0], rotation[1]) if rotation else None
        return self.project(hidden, tables).movedim(0, -3)

    def attention_sublayer(self, contexts: Tensor, skip: Tensor) -> Tensor:
        """``A``: (..., A d) head contexts and (..., D) skip -> the attention
        sublayer's output, the residual node of split graphs."""
        if self.encoder:
            return self.part("attention_output")(contexts, skip)
        added = self.part("output_projection")(contexts) + skip
        if self.slots.norm == "post":
            return self.part("attention_norm")(added)
        return added

    def mlp_branch(self, after: Tensor) -> Tensor:
        """``phi``: the attention sublayer's output -> the MLP node of split graphs
        (BERT: the intermediate activation; inline blocks: the MLP's output)."""
        if not self.encoder and self.slots.norm == "pre":
            after = self.part("attention_norm")(after)
        return self._mlp(after)

    def combine(self, mlp: Tensor, after: Tensor) -> Tensor:
        """``M``: the MLP node and the residual -> ``h^l``."""
        if self.encoder:
            return self.part("output")(mlp, after)
        if self.slots.norm == "post":
            return self.part("output_norm")(mlp + after)
        return after + mlp

    def forward(self, contexts: Tensor, skip: Tensor) -> Tensor:
        """``F``: ``h^l`` from the head contexts and the skip, position by position
        (eq. 7.1)."""
        after = self.attention_sublayer(contexts, skip)
        return self.combine(self.mlp_branch(after), after)

    # -------------------------------------------------------------------- primal values
    def rotation_at(self, position: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
        """(cos, sin), each (S, steps, d), at each source's position; None without
        rotary positions."""
        if self.rotation is None:
            return None
        return _at(self.rotation[0], position), _at(self.rotation[1], position)

    def finish(
        self,
        hidden: Tensor,
        contexts: Tensor,
        attention: Tensor,
        rotation: Optional[Tuple[Tensor, Tensor]],
        context_grad: Optional[Tensor] = None,
        skip_grad: Optional[Tensor] = None,
    ) -> None:
        """Take the recorded primal values of every step and the open gradients at the
        head contexts (steps, T, A, d) and the skip (steps, T, D) of every position
        (eq. 7.7, read in the recording pass; None after a plain pass,
        :func:`record_primals`); derive queries, keys and values."""
        self.hidden, self.attention, self.rotation = hidden, attention, rotation
        self.queries, self.keys, self.values = self.project(hidden, rotation).unbind(0)
        self.contexts = contexts.unflatten(-1, (self.num_heads, self.head_size))
        # The linearisation assumes contexts = weights @ values per head.
        mixed = torch.einsum("naqk,nkad->nqad", attention, self.values)
        scale = float(self.contexts.abs().max())
        if not torch.allclose(mixed, self.contexts, rtol=1e-4, atol=1e-6 * scale):
            value = (
                f"qkv slot {self.slots.qkv!r}"
                if getattr(self.slots, "qkv", None)
                else f"value slot {self.slots.value!r}"
            )
            raise RowwiseMismatch(
                "model: the row-wise schedule does not reproduce this model's "
                f"attention (contexts != weights @ values from the {value})"
            )
        if context_grad is None or skip_grad is None:
            return
        self.context_grad, self.skip_grad = context_grad, skip_grad
        self.context_grad_dot = (self.context_grad * self.contexts).sum(-1)

    def row_primals(self, position: Tensor) -> Tuple[Tensor, Tensor]:
        """(S, steps, A d) head contexts and (S, steps, D) skip at each source's
        position."""
        return _at(self.contexts, position).flatten(-2), _at(self.hidden, position)

    # ------------------------------------------------------------------ tangents (JVP)
    def tangent(self, position: Tensor, hidden: Tensor) -> PositionTangent:
        return PositionTangent(self, position, hidden)

    def open_influence(self, tangent: PositionTangent, quadrature: Tensor) -> Tensor:
        """Stage A: ``I(h^l_j)`` (S, T) for every ``j`` with nothing gated downstream
        (eq. 7.8): the column term at every query, the row and the skip at ``p``."""
        p = tangent.position
        weights_column = self.attention.permute(3, 0, 2, 1)[p]  # (S, steps, T, A)
        score_change = self.scale * torch.einsum(
            "nqad,snad->snqa", self.queries, tangent.key
        )
        grad_dot_value = torch.einsum(
            "nqad,snad->snqa", self.context_grad, _at(self.values, p)
        )
        grad_dot_dvalue = torch.einsum(
            "nqad,snad->snqa", self.context_grad, tangent.value
        )
        grad_dot_change = grad_dot_value - self.context_grad_dot
        per_step = (
            weights_column * (score_change * grad_dot_change + grad_dot_dvalue)
        ).sum(-1)  # (S, steps, T)
        at_p = (tangent.row * _at(self.context_grad, p)).sum((-2, -1)) + (
            tangent.hidden * _at(self.skip_grad, p)
        ).sum(-1)
        sources = torch.arange(p.shape[0], device=p.device)
        per_step[sources, :, p] += at_p
        return torch.einsum("snq,n->sq", per_step, quadrature)

    def context_tangent(
        self, tangent: PositionTangent, query: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Tangents (S, steps, A, d) of the head contexts and (S, steps, D) of the skip
        at each source's query position (eq. 7.4-7.5)."""
        p = tangent.position
        weight = self.attention.permute(2, 3, 0, 1)[query, p]  # (S, steps, A): P[q, p]
        score_change = self.scale * (_at(self.queries, query) * tangent.key).sum(-1)
        column = weight[..., None] * (
            score_change[..., None] * (_at(self.values, p) - _at(self.contexts, query))
            + tangent.value
        )
        same = (query == p).to(tangent.hidden.dtype)[:, None, None]
        return column + same[..., None] * tangent.row, same * tangent.hidden

    def carry(
        self,
        query: Tensor,
        contexts: Tensor,
        skip: Tensor,
        keep_mlp: Optional[Tensor] = None,
    ) -> Tensor:
        """``dh^l`` (S, steps, D) at ``query`` from the context (S, steps, A, d) and
        skip tangents (eq. 7.6); ``keep_mlp`` (S,) keeps only the MLP branch (1) or the
        residual (0) where given."""
        primals, tangents = self.row_primals(query), (contexts.flatten(-2), skip)
        if keep_mlp is None:
            return _jvp(self.forward, primals, tangents, query)[1]
        after, d_after = _jvp(self.attention_sublayer, primals, tangents, query)
        mlp, d_mlp = _jvp(self.mlp_branch, (after,), (d_after,), query)
        keep = keep_mlp.to(d_mlp.dtype)[:, None, None]
        gated = (d_mlp * keep, d_after * (1 - keep))
        return _jvp(self.combine, (mlp, after), gated, query)[1]

    def split_tangents(
        self, query: Tensor, contexts: Tensor, skip: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Split graphs: the MLP node's and the residual's primals and tangents at
        ``query``, (S, steps, ...) each."""
        primals, tangents = self.row_primals(query), (contexts.flatten(-2), skip)
        after, d_after = _jvp(self.attention_sublayer, primals, tangents, query)
        mlp, d_mlp = _jvp(self.mlp_branch, (after,), (d_after,), query)
        return mlp, d_mlp, after, d_after

    # ---------------------------------------------------------------- cotangents (VJP)
    def node_cotangents(
        self,
        query: Tensor,
        cotangent: Tensor,
        split_mlp: bool,
        keep_mlp: Optional[Tensor] = None,
    ) -> Dict[str, Tensor]:
        """Stage B: from ``dQoI/dh^l`` at ``query`` (S, steps, D), the gradients at
        the layer's nodes there (eq. 7.9): heads (S, steps, A, d), skip (and mlp,
        residual). ``keep_mlp`` (S,), with the MLP split off: the heads' and the
        skip's gradients through the MLP branch only (1) or the residual only (0),
        the transpose of :meth:`carry`'s."""
        contexts, skip = self.row_primals(query)
        if not split_mlp:
            heads, skip_grad = _vjp(self.forward, (contexts, skip), cotangent)
            heads = heads.unflatten(-1, (self.num_heads, -1))
            return {"heads": heads, "skip": skip_grad}
        with torch.no_grad():
            after = self.attention_sublayer(contexts, skip)
            mlp = self.mlp_branch(after)
        mlp_grad, residual = _vjp(self.combine, (mlp, after), cotangent)
        through_mlp = _vjp(self.mlp_branch, (after,), mlp_grad)[0]
        if keep_mlp is None:
            after_grad = residual + through_mlp
        else:
            keep = keep_mlp.to(residual.dtype)[:, None, None]
            after_grad = keep * through_mlp + (1 - keep) * residual
        heads, skip_grad = _vjp(self.attention_sublayer, (contexts, skip), after_grad)
        return {
            "heads": heads.unflatten(-1, (self.num_heads, -1)),
            "skip": skip_grad,
            "mlp": mlp_grad,
            "residual": residual,
        }

    def cotangent_below(
        self, query: Tensor, p: Tensor, heads: Tensor, skip: Tensor
    ) -> Tensor:
        """``dQoI/dh^{l-1}`` at ``p`` (S, steps, D) from the node gradients at
        ``query`` (eq. 7.10): through the value and key of ``p``, and where ``p ==
        query`` through the query and the skip."""
        weight = self.attention.permute(2, 3, 0, 1)[query, p]  # (S, steps, A)
        contexts, queries = _at(self.contexts, query), _at(self.queries, query)
        score_grad = weight * (heads * (_at(self.values, p) - contexts)).sum(-1)
        value_grad = weight[..., None] * heads
        key_grad = self.scale * score_grad[..., None] * queries
        weights_row = self.attention.permute(2, 0, 3, 1)[query]  # (S, steps, keys, A)
        row_grad = weights_row * (
            torch.einsum("snad,nkad->snka", heads, self.values)
            - (heads * contexts).sum(-1)[:, :, None]
        )
        query_grad = self.scale * torch.einsum("snka,nkad->snad", row_grad, self.keys)
        same = (query == p).to(skip.dtype)[:, None, None]
        projected = torch.stack([same[..., None] * query_grad, key_grad, value_grad])
        (below,) = _vjp(
            partial(self.project, rotation=self.rotation_at(p)),
            (_at(self.hidden, p),),
            projected,
        )
        return below + same * skip


# ------------------------------------------------------------------------ recording
def rowwise_blocks(problem: ExampleProblem) -> Optional[List[LinearisedBlock]]:
    """The linearised blocks of ``problem``'s model, or None where the row-wise
    schedule does not apply: training mode, non-eager attention, relative position
    embeddings, cross-attention, or a layer whose named slots are missing or not of a
    recognised kind."""
    graph = problem.graph
    model, config, spec = graph.model, graph.model.config, graph.spec
    # Submodules are called here on (sources, steps, ...) rows and layers not at
    # all: a user's hooks would be skipped or see the wrong axes.
    if model.training or foreign_hooks(model):
        return None
    if (
        getattr(config, "_attn_implementation", "eager") != "eager"
        or getattr(config, "position_embedding_type", "absolute") != "absolute"
        or getattr(config, "is_decoder", False) and not spec.is_causal
        or getattr(config, "add_cross_attention", False)
    ):
        return None
    partial_rotary = getattr(config, "partial_rotary_factor", 1.0) != 1.0
    if spec.positions == "rotary" and partial_rotary:
        return None
    blocks = []
    for layer, attention in zip(graph.layers, graph.self_attentions):
        if not _recognised(graph, layer, attention):
            return None
        blocks.append(LinearisedBlock(graph, layer, attention))
    return blocks


def _recognised(graph: ModelGraph, layer: nn.Module, attention: nn.Module) -> bool:
    """Whether every named slot of ``layer`` is there and the projections are linear
    maps."""
    # Imported here: the model, hence transformers, is loaded by now, and importing
    # the package stays light.
    from transformers.pytorch_utils import Conv1D

    slots = graph.spec.block
    names = [name for name in _MODULE_SLOTS if getattr(slots, name, None)]
    try:
        parts = {name: graph.part(layer, name) for name in names}
    except AttributeError:
        return False
    if getattr(slots, "mlp_function", None) and not callable(
        getattr(layer, slots.mlp_function, None)
    ):
        return False
    linear = [parts[n] for n in ("query", "key", "value", "qkv") if n in parts]
    if not all(isinstance(module, (nn.Linear, Conv1D)) for module in linear):
        return False
    return isinstance(getattr(attention, "scaling", None), (int, float))


class _PrimalRecorder:
    """Forward hooks recording each layer application's ``h^{l-1}``, head contexts,
    attention weights (or, where the module does not return them, its mask) and rotary
    tables during the open reverse pass. Hooks sit once on each distinct module and
    record in call order, so a shared layer (ALBERT) records once per application."""

    def __init__(self, blocks: List[LinearisedBlock]) -> None:
        self.blocks = blocks
        self.recorded: Dict[str, List[Any]] = {
            "hidden": [],
            "contexts": [],
            "attention": [],
        }

    def hooks(self) -> List[RemovableHandle]:
        def hidden(module: nn.Module, args: Tuple, kwargs: Dict) -> None:
            self.recorded["hidden"].append(_first_argument(args, kwargs).detach())

        def contexts(module: nn.Module, args: Tuple, kwargs: Dict) -> None:
            self.recorded["contexts"].append(_first_argument(args, kwargs).detach())

        def attention(
            module: nn.Module, args: Tuple, kwargs: Dict, output: Any
        ) -> None:
            # Eager attention returns its weights (transformers 5); older versions
            # only with output_attentions, so the mask is kept to recompute them.
            returned = isinstance(output, tuple) and len(output) > 1
            weights = output[1] if returned else None
            mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
            rotation = kwargs.get("position_embeddings")
            self.recorded["attention"].append(
                (
                    None if weights is None else weights.detach(),
                    mask,
                    None if rotation is None else tuple(r.detach() for r in rotation),
                )
            )

        slot = "attention_output" if self.blocks[0].encoder else "output_projection"
        handles: List[RemovableHandle] = []
        seen = set()
        for block in self.blocks:
            for module, hook, kind in (
                (block.layer, hidden, "pre"),
                (block.part(slot), contexts, "pre"),
                (block.attention_module, attention, "post"),
            ):
                if (id(module), kind) in seen:
                    continue
                seen.add((id(module), kind))
                if kind == "pre":
                    handles.append(
                        module.register_forward_pre_hook(hook, with_kwargs=True)
                    )
                else:
                    handles.append(module.register_forward_hook(hook, with_kwargs=True))
        return handles

    def finish(self, gradients: Optional[Dict[NodeKey, Tensor]]) -> None:
        """Hand every block its steps' values (chunks concatenated) and, where given,
        its open gradients at the head contexts and the skip."""
        count = len(self.blocks)
        for number, block in enumerate(self.blocks):
            per_chunk = {
                name: values[number::count] for name, values in self.recorded.items()
            }
            hidden = torch.cat(per_chunk["hidden"])
            contexts = torch.cat(per_chunk["contexts"])
            rotation = None
            if block.rotary:
                tables = [entry[2] for entry in per_chunk["attention"]]
                if any(table is None for table in tables):
                    raise RowwiseMismatch(
                        "model: no rotary tables reached the attention module"
                    )
                rotation = tuple(
                    torch.cat(
                        [
                            table[i].expand(chunk.shape[0], *table[i].shape[1:])
                            for table, chunk in zip(tables, per_chunk["hidden"])
                        ]
                    ).to(hidden.dtype)
                    for i in range(2)
                )
                if rotation[0].shape[-1] != block.head_size:
                    raise RowwiseMismatch("model: partial rotary embeddings")
            queries, keys, _ = block.project(hidden, rotation).unbind(0)
            sizes = [h.shape[0] for h in per_chunk["hidden"]]
            recomputed = torch.cat(
                [
                    _attention_weights(block, q, k, entry[1])
                    for q, k, entry in zip(
                        queries.split(sizes), keys.split(sizes), per_chunk["attention"]
                    )
                ]
            )
            returned = [entry[0] for entry in per_chunk["attention"]]
            if all(w is not None for w in returned):
                _check_scores(block, torch.cat(returned), recomputed)
            block.finish(
                hidden,
                contexts,
                recomputed,
                rotation,
                *(
                    ()
                    if gradients is None
                    else (
                        gradients[("heads", number + 1)],
                        gradients[("skip", number + 1)],
                    )
                ),
            )
        self.recorded = {}


def record_primals(blocks: List[LinearisedBlock], run: Callable[[], Any]) -> Any:
    """Call ``run()`` (one pass of the blocks' model) with the recording hooks of
    :class:`RecordedModel` in place and hand every block the primal values of that
    pass (no gradients); return what ``run`` returns. The contribution routes
    (:mod:`.routes.contributions`) read the blocks' ``hidden``, ``values`` and
    ``attention`` this way."""
    recorder = _PrimalRecorder(blocks)
    handles = recorder.hooks()
    try:
        result = run()
    finally:
        for handle in handles:
            handle.remove()
    recorder.finish(None)
    return result


def _check_scores(block: LinearisedBlock, returned: Tensor, recomputed: Tensor) -> None:
    """The weights recomputed from the declared query and key slots must be the
    attention module's own: a swapped or wrong slot is named."""
    if torch.allclose(recomputed, returned, rtol=1e-4, atol=1e-6, equal_nan=True):
        return
    slots = block.slots
    names = (
        f"qkv slot {slots.qkv!r}"
        if getattr(slots, "qkv", None)
        else f"query slot {slots.query!r} and key slot {slots.key!r}"
    )
    gap = float((recomputed - returned).detach().abs().nan_to_num().max())
    raise RowwiseMismatch(
        f"adapter: the attention weights recomputed from the {names} differ from "
        f"the attention module's own (by {gap:.2e}); the slots must name the query "
        "and key projections (register_family(..., overwrite=True) with them fixed)"
    )


def _attention_weights(
    block: LinearisedBlock, queries: Tensor, keys: Tensor, mask: Optional[Tensor]
) -> Tensor:
    """Attention weights (steps, A, T, T) from queries and keys and the attention
    module's additive (or boolean) mask."""
    scores = torch.einsum("nqad,nkad->naqk", queries, keys) * block.scale
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    return scores.softmax(-1)


class _EmbeddingTangents(NodeController):
    """Forward mode to ``h^0`` with the tangent ``x_i - x'_i`` at every position at
    once: the embedding block acts position by position, so position ``i`` of the
    result is source ``i``'s own tangent of ``h^0_i``."""

    def __init__(self, problem: ExampleProblem, step: Tensor) -> None:
        self.problem, self.step = problem, step
        self.tangent: Tensor

    def word_embeddings(self, output: Tensor) -> Tensor:
        delta = self.problem.delta.expand(self.step.shape[0], -1, -1)
        return fwAD.make_dual(self.problem.interpolated(self.step), delta)

    def embedding_node(self, layer: int, hidden: Tensor) -> Tensor:
        self.tangent = tangent_of(hidden)
        raise StopForward


class RecordedModel:
    """The shared primal pass of one example: every block's recorded values and open
    gradients, g, ``dQoI/dh^L`` and the tangents of ``h^0``.

    Attributes:
        blocks (list of LinearisedBlock): One per layer application.
        token_influence (Tensor): g (T,).
        last_gradient (Tensor): (steps, T, D) open ``dQoI/dh^L``.
        embedding_tangents (Tensor): (steps, T, D) ``dh^0_i`` for the tangent at
            ``x_i`` (position ``i`` of source ``i``).
    """

    def __init__(self, problem: ExampleProblem, blocks: List[LinearisedBlock]):
        self.problem, self.blocks = problem, blocks
        recorder = _PrimalRecorder(blocks)
        handles = recorder.hooks()
        count = len(blocks)
        read = [(name, k) for k in range(1, count + 1) for name in ("heads", "skip")]
        try:
            g, gradients = open_gradients(problem, [*read, ("embedding", count)])
        finally:
            for handle in handles:
                handle.remove()
        recorder.finish(gradients)
        self.token_influence = g
        self.last_gradient = gradients[("embedding", count)]
        _, step = problem.rows(1)
        tangents = []
        for chunk in problem.chunks(problem.n_steps):
            controller = _EmbeddingTangents(problem, step[chunk])
            with torch.no_grad(), fwAD.dual_level():
                problem.run(controller, step[chunk].shape[0])
            tangents.append(controller.tangent)
        self.embedding_tangents = torch.cat(tangents)

    def chunks(self, count: int, per: int = 1) -> List[Tensor]:
        """Chunks of sources (or routes): ``internal_batch_size // n_steps`` rows of
        one position each when given, else a cap on the (rows, steps, T, heads)
        tensors; ``per`` rows per source (a beam's prefixes)."""
        problem = self.problem
        if problem.internal_batch_size is not None:
            size = problem.internal_batch_size // problem.n_steps
        else:
            heads = self.blocks[0].num_heads
            rows = problem.n_steps * problem.num_positions
            size = _ROWWISE_ELEMENTS // (rows * heads)
        size = max(1, size // per)
        device = problem.delta.device
        return [
            torch.arange(start, min(start + size, count), device=device)
            for start in range(0, count, size)
        ]

    def source_tangents(self, positions: Tensor) -> Tensor:
        """(S, steps, D) ``dh^0`` at each source's position for its own tangent."""
        return _at(self.embedding_tangents, positions)

    # ------------------------------------------------------------------------ stages
    def stage_a(
        self, state: SearchState, index: Tensor, output_position: Optional[int]
    ) -> None:
        """Stage A for a chunk of sources: carry each tangent along its chosen
        positions."""
        quadrature, count = self.problem.weights, len(self.blocks)
        p = state.positions[index, 0]
        d_hidden = self.source_tangents(p)
        for number, block in enumerate(self.blocks, start=1):
            tangent = block.tangent(p, d_hidden)
            influence = block.open_influence(tangent, quadrature)
            query = state.record_positions(index, number, influence, output_position)
            if number == count:
                return
            d_hidden = block.carry(query, *block.context_tangent(tangent, query))
            p = query

    def stage_b(self, state: SearchState, index: Tensor) -> None:
        """Stage B for a chunk of sources: cotangents down the route, then tangents up
        it with the head-or-skip (and MLP-or-residual) choices."""
        route, split, count = state.positions[index], state.split_mlp, len(self.blocks)
        quadrature = self.problem.weights
        # The cotangents at layer l depend on the route from j_l up only: routes that
        # share that suffix (all of them at j_L) share them, so each is computed once.
        cotangent = _at(self.last_gradient, route[:, count])
        node_cotangents: List[Dict[str, Tensor]] = [{}] * count
        for number in range(count, 0, -1):
            block, query = self.blocks[number - 1], route[:, number]
            first, inverse = _representatives(route[:, number:])
            nodes = block.node_cotangents(query[first], cotangent[first], split)
            nodes = {name: value[inverse] for name, value in nodes.items()}
            node_cotangents[number - 1] = nodes
            if number > 1:
                first, inverse = _representatives(route[:, number - 1 :])
                cotangent = block.cotangent_below(
                    query[first],
                    route[first, number - 1],
                    nodes["heads"][first],
                    nodes["skip"][first],
                )[inverse]
        d_hidden = self.source_tangents(route[:, 0])
        for number, block in enumerate(self.blocks, start=1):
            query, nodes = route[:, number], node_cotangents[number - 1]
            tangent = block.tangent(route[:, number - 1], d_hidden)
            heads, skip = block.context_tangent(tangent, query)
            is_head, head = state.record_nodes(
                index,
                number,
                torch.einsum("snad,snad,n->sa", nodes["heads"], heads, quadrature),
                torch.einsum("snd,snd,n->s", nodes["skip"], skip, quadrature),
            )
            if number == count and not split:
                return
            heads, skip = _keep_node(heads, skip, torch.where(is_head, head, -1))
            if not split:
                d_hidden = block.carry(query, heads, skip)
                continue
            _, d_mlp, _, d_after = block.split_tangents(query, heads, skip)
            is_mlp = state.record_ffn(
                index,
                number,
                torch.einsum("snd,snd,n->s", nodes["mlp"], d_mlp, quadrature),
                torch.einsum("snd,snd,n->s", nodes["residual"], d_after, quadrature),
            )
            if number == count:
                return
            d_hidden = block.carry(query, heads, skip, is_mlp)

    def routes(
        self,
        positions: Tensor,
        heads: Optional[Tensor],
        mlp: Optional[Tensor],
        chunks: Callable[[int], List[Tensor]],
    ) -> Tensor:
        """Fixed routes (R,) (eq. 7.11): tangents up each route to ``h^k``,
        cotangents down from ``h^L`` to ``h^k`` (the stage-B cotangents, with the
        route's choices), dotted at ``h^k_{j_k}``. The tangent at ``h^k`` depends on
        the route's prefix up to layer ``k`` and the cotangent on its suffix after
        it: routes that share a prefix (a source, its first moves) share the one,
        routes that share a suffix (every route ends at the output position) the
        other, and each is computed once. ``k`` minimises the distinct prefixes and
        suffixes carried. ``chunks(count)`` splits rows into chunks."""
        keys = _route_keys(positions, heads, mlp)
        meet = self._meeting_layer(keys)
        cotangents, suffix = self._suffix_cotangents(keys, meet, chunks)
        values = []
        # routes in lexicographic order, so that a chunk's routes share prefixes
        order = torch.argsort(_distinct_rows(keys.flatten(1))[1], stable=True)
        for index in (order[chunk] for chunk in chunks(positions.shape[0])):
            tangents, prefix = self._prefix_tangents(keys[index], meet)
            values.append(
                torch.einsum(
                    "snd,snd,n->s",
                    cotangents[suffix[index]],
                    tangents[prefix],
                    self.problem.weights,
                )
            )
        ordered = torch.cat(values)
        return ordered.new_empty(ordered.shape).index_copy_(0, order, ordered)

    def _meeting_layer(self, keys: Tensor) -> int:
        """The layer ``k`` whose distinct prefixes (one tangent pass per layer below
        it) and suffixes (one cotangent pass, about twice the cost, per layer above
        it) cost least."""
        count = len(self.blocks)
        layers = range(count + 1)
        prefixes = [_distinct_rows(keys[:, : k + 1].flatten(1))[0] for k in layers]
        suffixes = [_distinct_rows(_suffix_key(keys, k))[0] for k in layers]
        costs = [
            sum(prefixes[1 : k + 1]) + 2 * sum(suffixes[k:count])
            for k in range(count + 1)
        ]
        return min(layers, key=lambda k: (costs[k], -k))

    def _prefix_tangents(self, keys: Tensor, meet: int) -> Tuple[Tensor, Tensor]:
        """``dh^meet`` (P, steps, D) of each distinct prefix, and each route's
        prefix (R,)."""
        positions = keys[..., 0]
        first, row = _representatives(keys[:, :1].flatten(1))
        at = positions[first, 0]  # the position of each distinct prefix's tangent
        d_hidden = self.source_tangents(at)
        for number, block in enumerate(self.blocks[:meet], start=1):
            tangent = block.tangent(at, d_hidden)
            first, inverse = _representatives(keys[:, : number + 1].flatten(1))
            query = positions[first, number]
            contexts, skip = block.context_tangent(tangent.select(row[first]), query)
            head, ffn = keys[first, number, 1], keys[first, number, 2]
            if bool((head > -2).all()):
                contexts, skip = _keep_node(contexts, skip, head)
            d_hidden = block.carry(
                query, contexts, skip, ffn if bool((ffn > -2).all()) else None
            )
            at, row = query, inverse
        return d_hidden, row

    def _suffix_cotangents(
        self, keys: Tensor, meet: int, chunks: Callable[[int], List[Tensor]]
    ) -> Tuple[Tensor, Tensor]:
        """``dQoI/dh^meet`` (U, steps, D) of each distinct suffix, with the route's
        choices above ``meet`` (the transpose of :meth:`_prefix_tangents`), and each
        route's suffix (R,)."""
        count, positions = len(self.blocks), keys[..., 0]
        first, row = _representatives(_suffix_key(keys, count))
        cotangent = _at(self.last_gradient, positions[first, count])
        for number in range(count, meet, -1):
            block = self.blocks[number - 1]
            first, inverse = _representatives(_suffix_key(keys, number - 1))
            below = []
            for chunk in chunks(first.shape[0]):
                routes = first[chunk]
                query, p = positions[routes, number], positions[routes, number - 1]
                head, ffn = keys[routes, number, 1], keys[routes, number, 2]
                nodes = block.node_cotangents(
                    query,
                    cotangent[row[routes]],
                    bool((ffn > -2).all()),
                    ffn if bool((ffn > -2).all()) else None,
                )
                heads, skip = nodes["heads"], nodes["skip"]
                if bool((head > -2).all()):
                    heads, skip = _keep_node(heads, skip, head)
                below.append(block.cotangent_below(query, p, heads, skip))
            cotangent, row = torch.cat(below), inverse
        return cotangent, row


def _route_keys(
    positions: Tensor, heads: Optional[Tensor], mlp: Optional[Tensor]
) -> Tensor:
    """(R, L + 1, 3): per route and layer its position, head (-1: the skip) and MLP
    choice (1: the MLP, 0: the residual); -2 where there is no such choice."""
    keys = positions.new_full((*positions.shape, 3), -2)
    keys[..., 0] = positions
    if heads is not None:
        keys[:, 1:, 1] = heads
    if mlp is not None:
        keys[:, 1:, 2] = mlp.long()
    return keys


def _suffix_key(keys: Tensor, layer: int) -> Tensor:
    """What ``dQoI/dh^layer`` of a route depends on: its positions from ``j_layer``
    on and its choices above ``layer``."""
    return torch.cat([keys[:, layer, :1], keys[:, layer + 1 :].flatten(1)], dim=1)


def _distinct_rows(rows: Tensor) -> Tuple[int, Tensor]:
    """How many distinct rows, and each row's rank among them (lexicographic)."""
    unique, rank = torch.unique(rows, dim=0, return_inverse=True)
    return unique.shape[0], rank


def _representatives(rows: Tensor) -> Tuple[Tensor, Tensor]:
    """For (S, k) rows: the first index of each distinct row, and each row's distinct
    row, so that ``values[first][inverse]`` spreads one value per distinct row."""
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    order = torch.arange(rows.shape[0], device=rows.device)
    first = torch.full_like(order[: int(inverse.max()) + 1], rows.shape[0])
    first = first.scatter_reduce(0, inverse, order, "amin")
    return first, inverse


def _keep_node(contexts: Tensor, skip: Tensor, chosen: Tensor) -> Tuple[Tensor, Tensor]:
    """Keep one head's context tangent (``chosen`` >= 0) or the skip's (-1), per
    source (eq. 7.12); contexts (S, steps, A, d), skip (S, steps, D)."""
    is_head = (chosen >= 0).to(skip.dtype)
    one_head = torch.nn.functional.one_hot(chosen.clamp(min=0), contexts.shape[-2])
    keep = one_head.to(contexts.dtype) * is_head[:, None]
    return contexts * keep[:, None, :, None], skip * (1 - is_head)[:, None, None]


# ------------------------------------------------------------------------ entries
def required_blocks(
    problem: ExampleProblem,
    who: str = "the row-wise schedule",
    hooks_fix: str = "use the forward-mode schedule, which runs them",
    fix: str = "use the forward-mode schedule",
    hooks_argument: str = "schedule",
) -> List[LinearisedBlock]:
    """:func:`rowwise_blocks` of ``problem``, or a one-line refusal that says why
    there are none: a user's hooks (named; the blocks call submodules directly and
    would skip them), or the model's kind. ``who`` names the caller and the fixes
    say what to use instead; ``hooks_argument`` is what the hooks' refusal names."""
    blocks = rowwise_blocks(problem)
    if blocks is not None:
        return blocks
    hooked = foreign_hooks(problem.graph.model)
    if hooked:
        raise ValueError(
            f"{hooks_argument}: {who} cannot run the hooks on {', '.join(hooked)}; "
            f"{hooks_fix}"
        )
    raise ValueError(
        f"problem: {who} needs a registered family in eval mode with eager, "
        f"absolute-position or rotary self-attention; {fix}"
    )


@register_search("row-wise", fast_stages)
def rowwise_search(
    problem: ExampleProblem,
    sources: Tensor,
    output_position: Optional[int],
    done: Callable[[str], None] = ignore_progress,
) -> Tuple[SearchState, Tensor]:
    """The fast schedule row by row (see the module docstring).

    Same arguments and results as :func:`.forward_mode.forward_mode_search`; the
    chunk of sources per step is capped by ``internal_batch_size // n_steps`` when
    given.

    Raises:
        ValueError: when :func:`rowwise_blocks` is None for ``problem``.
        RowwiseMismatch: when the recorded attention is not weights @ values.
    """
    blocks = required_blocks(
        problem,
        hooks_fix="use schedule='fast' or 'forward-mode' (or 'reference'), which run "
        "them where the model does",
        fix="use forward_mode_search",
    )
    with torch.no_grad():  # parameters take part in the products below
        recorded = RecordedModel(problem, blocks)
        done("stage A gradients")
        state = SearchState.empty(problem, sources)
        chunks = recorded.chunks(sources.shape[0])
        for index in chunks:
            recorded.stage_a(state, index, output_position)
        done("stage A tangents")
        for index in chunks:
            recorded.stage_b(state, index)
        done("stage B gradients")
        done("stage B tangents")
    return state, recorded.token_influence


def rowwise_nodes(
    problem: ExampleProblem, positions: Tensor, sign: Tensor
) -> SearchState:
    """Stage B alone along given position routes: the head-or-skip choice and the
    node candidates of every layer, as the search makes them along its own positions
    (:meth:`RecordedModel.stage_b`), e.g. for routes drawn at random.

    Args:
        problem (ExampleProblem): One example.
        positions (Tensor): (R, L + 1) routes ``j_0 .. j_L``.
        sign (Tensor): (R,) each route's search sign (its source's).

    Returns:
        SearchState: the routes' choices and ``node_candidates``.

    Raises:
        ValueError: when :func:`rowwise_blocks` is None for ``problem``.
    """
    blocks = required_blocks(problem)
    with torch.no_grad():
        recorded = RecordedModel(problem, blocks)
        state = SearchState.empty(problem, positions[:, 0])
        state.positions[:] = positions
        state.sign[:] = sign
        for index in recorded.chunks(positions.shape[0]):
            recorded.stage_b(state, index)
    return state


def rowwise_routes(
    problem: ExampleProblem,
    positions: Tensor,
    heads: Optional[Tensor] = None,
    mlp: Optional[Tensor] = None,
) -> Tensor:
    """Fixed routes' influences (R,) row by row; see
    :func:`.fast_search.route_influence` for the contract.

    Raises:
        ValueError: when :func:`rowwise_blocks` is None for ``problem``.
    """
    blocks = required_blocks(problem)
    with torch.no_grad():
        recorded = RecordedModel(problem, blocks)
        return recorded.routes(positions, heads, mlp, recorded.chunks)
