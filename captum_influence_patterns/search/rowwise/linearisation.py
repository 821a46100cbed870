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
per position (:func:`_jvp`). The beam (:mod:`.search.beam`) carries its prefixes with
the same pieces.

:class:`LinearisedBlock` is the one linearised block. It reads the family's named
slots (:class:`.graph.families.EncoderSublayers` or
:class:`.graph.families.InlineBlock`) and covers post-LN encoders (BERT, RoBERTa,
ELECTRA, DistilBERT, ALBERT with shared layers), pre-LN GPT-2 (a fused ``Conv1D``
projection) and pre-RMSNorm Llama, Mistral and Qwen2 (rotary positions, grouped-query
attention, a gated MLP): each is described by three position-wise maps, the projection
``Pi`` (eq. 7.2) and the layer after attention ``F = M(phi(a), a)`` with
``a = A(c, s)`` (eq. 7.1), and the attention weights the model itself computed (causal
and padding masks come with them). :func:`~.recording.rowwise_blocks` returns None
where it does not apply (relative positions, non-eager attention, training mode, an
unrecognised layer); the caller then takes the forward-mode schedule.
:mod:`.recording` records the primal values, :mod:`.driver` runs the searches on them.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from ...graph import EncoderSublayers, ModelGraph
from ...graph.families import module_slots


class RowwiseMismatch(RuntimeError):
    """The recorded attention is not what the linearisation assumes."""


def close_enough(
    value: Tensor, reference: Tensor, scale: float, equal_nan: bool = False
) -> bool:
    """Whether ``value``, recomputed here, is the model's own ``reference`` up to
    rounding: within ``rtol=1e-4`` and an absolute gap of half the dtype's digits of
    ``scale`` (at least ``1e-6 * scale``). A wrong slot is off by the values
    themselves; rounding, also summed over a long float32 sequence, by far less."""
    tolerance = max(1e-6, torch.finfo(value.dtype).eps ** 0.5) * scale
    return torch.allclose(
        value, reference, rtol=1e-4, atol=tolerance, equal_nan=equal_nan
    )


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


def at(values: Tensor, positions: Tensor) -> Tensor:
    """(steps, T, ...) -> (S, steps, ...): each source's row at its own position."""
    return values.transpose(0, 1)[positions]


def _rotate_half(x: Tensor) -> Tensor:
    """The rotary embedding's 90-degree turn of each pair of halves (Llama's)."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _called(module: nn.Module, x: Tensor) -> Tensor:
    return module(x)


def _without_bias(module: nn.Module, x: Tensor) -> Tensor:
    """An ``nn.Linear`` or transformers' ``Conv1D`` (weight (in, out)) less its
    bias: its derivative."""
    if isinstance(module, nn.Linear):
        return torch.nn.functional.linear(x, module.weight)
    return x @ module.weight



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
        projected = block.projection_tangent(position, hidden)
        self.query, self.key, self.value = projected.unbind(0)
        # (S, steps, keys, A): P[p, k] and beta_k = scale * k_k . dq_p
        weights_row = block.weights_row(position)
        beta = block.scale * block.with_keys(self.query)
        score_change = weights_row * (beta - (weights_row * beta).sum(2, keepdim=True))
        self.row = block.mix_values(score_change)

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
    ``queries``, ``contexts`` (steps, T, A, d); ``keys``, ``values`` (steps, T, K, d),
    one per key-value head (grouped-query attention shares each among ``A / K`` query
    heads); ``rotation`` (cos, sin), each (steps, T, d), or None. The attention weights
    (steps, A, T, T) are not kept: :meth:`weights_row`, :meth:`weights_column` and
    :meth:`weight_at` recompute the few entries a tangent touches from the queries, the
    keys, the mask (``bias``, additive, broadcast over steps and heads where it can be)
    and each query row's log-normaliser ``log_norm`` (steps, T, A). At long inputs the
    weights were the largest part of the recording (A T / D times the hidden states).
    """

    hidden: Tensor
    queries: Tensor
    keys: Tensor
    values: Tensor
    contexts: Tensor
    bias: Optional[Tensor]
    log_norm: Tensor
    rotation: Optional[Tuple[Tensor, Tensor]]
    context_grad: Tensor  # (steps, T, A, d) open dQoI/dc
    skip_grad: Tensor  # (steps, T, D) open dQoI/ds
    context_grad_dot: Tensor  # (steps, T, A) <dQoI/dc, c> per head

    def __init__(self, graph: ModelGraph, layer: nn.Module, attention: nn.Module):
        spec, config = graph.spec, graph.model.config
        self.slots = spec.block
        parts = {
            name: graph.part(layer, name)
            for name in module_slots(self.slots)
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
        self,
        hidden: Tensor,
        rotation: Optional[Tuple[Tensor, Tensor]] = None,
        per_query_head: bool = True,
        linear: bool = False,
    ) -> Any:
        """``Pi``: (..., D) -> (3, ..., A, d) queries, keys and values (eq. 7.2): the
        input norm, the projections, the rotation, keys and values per query head; or,
        with ``per_query_head=False``, the tuple of queries (..., A, d) and keys and
        values (..., K, d) per key-value head. ``linear``: the map's linear part after
        the input norm (no norm, no biases), which is its derivative there: the
        projections are ``nn.Linear`` or ``Conv1D`` (:func:`~.recording.rowwise_blocks`
        requires it) and the rotation is linear."""
        slots = self.slots
        if not linear and not self.encoder and slots.input_norm is not None:
            hidden = self.part("input_norm")(hidden)
        apply = _without_bias if linear else _called
        width, shared = self.num_heads * self.head_size, self.key_value_heads
        if getattr(slots, "qkv", None):
            fused = apply(self.part("qkv"), hidden)
            query, key, value = fused.split(
                [width, shared * self.head_size, shared * self.head_size], dim=-1
            )
        else:
            query, key, value = (
                apply(self.part(name), hidden) for name in ("query", "key", "value")
            )
        query = query.unflatten(-1, (self.num_heads, self.head_size))
        key, value = (x.unflatten(-1, (shared, self.head_size)) for x in (key, value))
        if rotation is not None:
            cos, sin = (r.unsqueeze(-2) for r in rotation)
            query = query * cos + _rotate_half(query) * sin
            key = key * cos + _rotate_half(key) * sin
        if not per_query_head:
            return query, key, value
        if self.group > 1:
            key, value = (x.repeat_interleave(self.group, dim=-2) for x in (key, value))
        return torch.stack([query, key, value])

    def projection_tangent(self, position: Tensor, hidden: Tensor) -> Tensor:
        """(3, S, steps, A, d) the derivative of :meth:`project` at each source's
        position along ``hidden`` (S, steps, D): the input norm's (forward mode),
        then the linear part of the rest. No primal row goes through the
        projections, as it would in a dual pass: the recording holds their values."""
        if not self.encoder and self.slots.input_norm is not None:
            norm = self.part("input_norm")
            _, hidden = _jvp(norm, (at(self.hidden, position),), (hidden,), position)
        return self.project(hidden, self.rotation_at(position), linear=True)

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
        return at(self.rotation[0], position), at(self.rotation[1], position)

    def finish(
        self,
        hidden: Tensor,
        contexts: Tensor,
        bias: Optional[Tensor],
        rotation: Optional[Tuple[Tensor, Tensor]],
        returned: Optional[Tensor] = None,
        context_grad: Optional[Tensor] = None,
        skip_grad: Optional[Tensor] = None,
    ) -> None:
        """Take the recorded primal values of every step (the attention module's
        additive mask as ``bias``, and its own weights of the first steps as
        ``returned`` where it gave them) and the open gradients at the head contexts
        (steps, T, A, d) and the skip (steps, T, D) of every position (eq. 7.7, read
        in the recording pass; None after a plain pass,
        :func:`~.recording.record_primals`); derive queries, keys, values and each
        query row's log-normaliser.

        Raises:
            RowwiseMismatch: the weights recomputed from the declared slots are not
                the module's own, or the contexts are not weights @ values.
        """
        self.hidden, self.rotation, self.bias = hidden, rotation, bias
        self.queries, self.keys, self.values = self.project(
            hidden, rotation, per_query_head=False
        )
        self.contexts = contexts.unflatten(-1, (self.num_heads, self.head_size))
        scores = self._scores(self.queries, self.keys)  # (steps, A, T, T)
        weights = scores.softmax(-1)
        if returned is not None:
            self._check_weights(returned, weights[: returned.shape[0]])
        self.log_norm = scores.logsumexp(-1).transpose(1, 2)  # (steps, T, A)
        # The linearisation assumes contexts = weights @ values per head.
        mixed = self.mix_values(weights.permute(2, 0, 3, 1)).transpose(0, 1)
        if not close_enough(mixed, self.contexts, float(self.contexts.abs().max())):
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

    def _check_weights(self, returned: Tensor, recomputed: Tensor) -> None:
        """The weights recomputed from the declared query and key slots must be the
        attention module's own: a swapped or wrong slot is named."""
        if close_enough(recomputed, returned, 1.0, equal_nan=True):
            return
        slots = self.slots
        names = (
            f"qkv slot {slots.qkv!r}"
            if getattr(slots, "qkv", None)
            else f"query slot {slots.query!r} and key slot {slots.key!r}"
        )
        gap = float((recomputed - returned).detach().abs().nan_to_num().max())
        raise RowwiseMismatch(
            f"adapter: the attention weights recomputed from the {names} differ "
            f"from the attention module's own (by {gap:.2e}); the slots must name "
            "the query and key projections (register_family(..., overwrite=True) "
            "with them fixed)"
        )

    # ----------------------------------------- attention weights, recomputed (eq. 7.4)
    def _by_group(self, heads: Tensor, dim: int = -2) -> Tensor:
        """Split the query-head axis ``dim`` (A) into (K, A / K)."""
        return heads.unflatten(dim, (self.key_value_heads, self.group))

    def _scores(self, queries: Tensor, keys: Tensor) -> Tensor:
        """(steps, A, T, T) scores (query, key), the mask added."""
        scores = self.scale * torch.einsum(
            "nqvgd,nkvd->nvgqk", self._by_group(queries), keys
        ).flatten(1, 2)
        return scores if self.bias is None else scores + self.bias

    def with_keys(self, queries: Tensor) -> Tensor:
        """(S, steps, T, A) ``k_k . q_s`` for per-source query rows (S, steps, A, d)."""
        return torch.einsum(
            "nkvd,snvgd->snkvg", self.keys, self._by_group(queries)
        ).flatten(-2)

    def mix_values(self, weights: Tensor) -> Tensor:
        """(S, steps, A, d) ``sum_k w_k v_k`` for per-source rows (S, steps, T, A)."""
        return torch.einsum(
            "snkvg,nkvd->snvgd", self._by_group(weights, -1), self.values
        ).flatten(-3, -2)

    def values_at(self, position: Tensor) -> Tensor:
        """(S, steps, A, d) each source's value row, per query head."""
        return at(self.values, position).repeat_interleave(self.group, dim=-2)

    def weights_row(self, query: Tensor) -> Tensor:
        """(S, steps, T, A) ``P[q_s, k]``: each source's query row of the weights."""
        scores = self.scale * self.with_keys(at(self.queries, query))
        if self.bias is not None:
            scores = scores + self.bias.permute(2, 0, 3, 1)[query]
        return torch.exp(scores - at(self.log_norm, query)[:, :, None])

    def weights_column(self, key: Tensor) -> Tensor:
        """(S, steps, T, A) ``P[q, p_s]``: each source's key column of the weights."""
        scores = self.scale * torch.einsum(
            "nqvgd,snvd->snqvg", self._by_group(self.queries), at(self.keys, key)
        ).flatten(-2)
        if self.bias is not None:
            scores = scores + self.bias.permute(3, 0, 2, 1)[key]
        return torch.exp(scores - self.log_norm)

    def weight_at(self, query: Tensor, key: Tensor) -> Tensor:
        """(S, steps, A) ``P[q_s, p_s]``."""
        score = self.scale * torch.einsum(
            "snvgd,snvd->snvg", self._by_group(at(self.queries, query)),
            at(self.keys, key),
        ).flatten(-2)
        if self.bias is not None:
            score = score + self.bias.permute(2, 3, 0, 1)[query, key]
        return torch.exp(score - at(self.log_norm, query))

    def attention_weights(self) -> Tensor:
        """(steps, A, T, T) every weight (query, key), recomputed whole."""
        log_norm = self.log_norm.transpose(1, 2)[..., None]
        return torch.exp(self._scores(self.queries, self.keys) - log_norm)

    def row_primals(self, position: Tensor) -> Tuple[Tensor, Tensor]:
        """(S, steps, A d) head contexts and (S, steps, D) skip at each source's
        position."""
        return at(self.contexts, position).flatten(-2), at(self.hidden, position)

    # ------------------------------------------------------------------ tangents (JVP)
    def tangent(self, position: Tensor, hidden: Tensor) -> PositionTangent:
        return PositionTangent(self, position, hidden)

    def open_influence(self, tangent: PositionTangent, quadrature: Tensor) -> Tensor:
        """Stage A: ``I(h^l_j)`` (S, T) for every ``j`` with nothing gated downstream
        (eq. 7.8): the column term at every query, the row and the skip at ``p``."""
        p = tangent.position
        weights_column = self.weights_column(p)  # (S, steps, T, A)
        score_change = self.scale * torch.einsum(
            "nqad,snad->snqa", self.queries, tangent.key
        )
        grad_dot_value = torch.einsum(
            "nqad,snad->snqa", self.context_grad, self.values_at(p)
        )
        grad_dot_dvalue = torch.einsum(
            "nqad,snad->snqa", self.context_grad, tangent.value
        )
        grad_dot_change = grad_dot_value - self.context_grad_dot
        per_step = (
            weights_column * (score_change * grad_dot_change + grad_dot_dvalue)
        ).sum(-1)  # (S, steps, T)
        at_p = (tangent.row * at(self.context_grad, p)).sum((-2, -1)) + (
            tangent.hidden * at(self.skip_grad, p)
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
        weight = self.weight_at(query, p)  # (S, steps, A): P[q, p]
        score_change = self.scale * (at(self.queries, query) * tangent.key).sum(-1)
        column = weight[..., None] * (
            score_change[..., None] * (self.values_at(p) - at(self.contexts, query))
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
        weight = self.weight_at(query, p)  # (S, steps, A)
        contexts, queries = at(self.contexts, query), at(self.queries, query)
        score_grad = weight * (heads * (self.values_at(p) - contexts)).sum(-1)
        value_grad = weight[..., None] * heads
        key_grad = self.scale * score_grad[..., None] * queries
        weights_row = self.weights_row(query)  # (S, steps, keys, A)
        row_grad = weights_row * (
            torch.einsum(
                "snvgd,nkvd->snkvg", self._by_group(heads), self.values
            ).flatten(-2)
            - (heads * contexts).sum(-1)[:, :, None]
        )
        query_grad = self.scale * torch.einsum(
            "snkvg,nkvd->snvgd", self._by_group(row_grad, -1), self.keys
        ).flatten(-3, -2)
        same = (query == p).to(skip.dtype)[:, None, None]
        projected = torch.stack([same[..., None] * query_grad, key_grad, value_grad])
        (below,) = _vjp(
            partial(self.project, rotation=self.rotation_at(p)),
            (at(self.hidden, p),),
            projected,
        )
        return below + same * skip

