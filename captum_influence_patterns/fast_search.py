"""The fast schedule of guided pattern refinement (docs/method.md, section 7).

Two implementations of one schedule, which choose alike (the decision rules and the
search state are those of :mod:`.search`):

- **Row-wise, for post-LN encoders** (BERT, RoBERTa, ELECTRA): one open reverse pass
  over the steps that records each layer's primal values as it goes (Captum's
  LayerIntegratedGradients runs the same pass), then every source's tangents and
  cotangents are carried through the linearisation of each layer at the few positions
  where they are non-zero. A tangent entering layer ``l`` sits at one position ``p``
  (the upstream gate), so its attention JVP touches one row and one column of each
  score matrix; everything after attention acts per position, so only the chosen
  position's row goes on. Stage A reads
  ``I(h^l_j)`` for every ``j`` as ``sum_n I(a^l_{j,n}) + I(s^l_j)`` from the open
  gradients at the head contexts and the skip (docs/method.md, section 5: the identity
  inside one layer), so no dense tangent ever goes through the feed-forward block.
  Stage B's cotangents flow down the route one position per layer. The primal values
  (queries, keys, values, attention weights, contexts) are computed once and shared by
  every source; per source and layer the cost is a few vector-matrix products, not a
  pass over the sequence.
- **Generic, for every other family**: forward-mode passes
  (:mod:`torch.autograd.forward_ad`) over chunks of sources with in-hook choices. One
  open reverse pass serves stage A for every source and layer; stage A's tangents are
  carried through one forward-mode pass per chunk of sources, the choice at each layer
  made inside the layer's hook before the pass moves on; stage B's downstream gradients
  come from one shared forward and one restricted backward per source; stage B's
  tangents again take one forward-mode pass with in-hook choices.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from .gating import gate, tangent_of, with_tangent
from .influence import ExampleProblem, gated_influence, route_gates, token_influence
from .model_graph import NodeController, PostLNEncoderGraph, StopForward
from .search import (
    SearchState,
    fast_stages,
    ignore_progress,
    one_hot_positions,
    register_search,
)

# Generic schedule: tokens (rows x positions) per forward-mode pass when
# internal_batch_size is not given. Measured on CPU (6-layer, 384-hidden BERT, 50
# steps): one source per pass (550 or 1600 tokens) beat all sources at once at 11 and
# 32 tokens (2.8x -> 2.1x LIG per source at 32, docs/performance.md); larger passes
# fall out of cache.
_TOKENS_PER_PASS = 1024
# Row-wise schedule: most elements of one (sources, steps, positions, heads) tensor
# per chunk of sources when internal_batch_size is not given (a memory cap; these
# tensors are small next to the recorded forward pass).
_ROWWISE_ELEMENTS = 1 << 22


class _ForwardModeSweep(NodeController):
    """The fast schedule's forward-mode sweep over a chunk of sources."""

    def __init__(
        self,
        problem: ExampleProblem,
        state: SearchState,
        index: Tensor,
        sources: Tensor,
    ) -> None:
        self.problem = problem
        self.state = state
        self.index = index  # the chunk's sources, as indices into the state
        self.group, self.step = problem.rows(index.shape[0])
        self.sources = sources

    def word_embeddings(self, output: Tensor) -> Tensor:
        return fwAD.make_dual(
            self.problem.interpolated(self.step),
            self.problem.source_tangent(self.sources[self.group]),
        )

    def influence(self, products: Tensor) -> Tensor:
        return self.problem.weighted_sum(
            products, self.group, self.step, self.index.shape[0]
        )

    def sweep(self) -> None:
        with torch.no_grad(), fwAD.dual_level():
            self.problem.run(self, self.step.shape[0])


class _StageASweep(_ForwardModeSweep):
    """Carry stage A's tangents layer by layer, choosing ``j_l`` inside each hook."""

    def __init__(
        self, *args, gradients: Dict[int, Tensor], output_position: Optional[int]
    ) -> None:
        super().__init__(*args)
        self.gradients = gradients
        self.output_position = output_position

    def embedding_node(self, layer: int, hidden: Tensor) -> Tensor:
        if layer == 0:
            return hidden
        tangent = tangent_of(hidden)
        products = (self.gradients[layer][self.step] * tangent).sum(-1)
        chosen = self.state.record_positions(
            self.index, layer, self.influence(products), self.output_position
        )
        if layer == self.problem.graph.num_layers:
            raise StopForward
        mask = one_hot_positions(chosen, tangent.shape[1])[self.group].to(tangent.dtype)
        return with_tangent(hidden, tangent * mask[..., None])


class _StageBSweep(_ForwardModeSweep):
    """Carry stage B's tangents, choosing head or skip (and, with the MLP split off,
    MLP or residual) at ``j_l`` inside each hook."""

    def __init__(self, *args, cotangents: Dict[str, Tensor]) -> None:
        super().__init__(*args)
        # name -> (S, L, n, ...) downstream gradients at j_l, from _stage_b_cotangents
        self.cotangents = cotangents
        self.rows = torch.arange(self.step.shape[0], device=self.step.device)

    def _route_influence(self, name: str, layer: int, tangent: Tensor) -> Tensor:
        """Influence per source of node ``name`` at ``(layer, j_layer)``."""
        source_rows = self.index[self.group]
        position = self.state.positions[source_rows, layer]
        cotangent = self.cotangents[name][source_rows, layer - 1, self.step]
        return self.influence((cotangent * tangent[self.rows, position]).sum(-1))

    def _keep_at_route(self, layer: int, tangent: Tensor, keep: Tensor) -> Tensor:
        """A mask on ``tangent`` (rows, T, ...) keeping ``j_layer`` where ``keep``."""
        position = self.state.positions[self.index[self.group], layer]
        mask = torch.zeros_like(tangent[..., :1])
        mask[self.rows, position] = keep[self.group, None].to(mask.dtype)
        return mask

    def attention_inputs(
        self, layer: int, heads: Tensor, skip: Tensor
    ) -> Tuple[Tensor, Tensor]:
        head_tangent, skip_tangent = tangent_of(heads), tangent_of(skip)
        is_head, head = self.state.record_nodes(
            self.index,
            layer,
            self._route_influence("heads", layer, head_tangent),
            self._route_influence("skip", layer, skip_tangent),
        )
        last = layer == self.problem.graph.num_layers
        if last and not self.state.split_mlp:
            raise StopForward
        position = self.state.positions[self.index[self.group], layer]
        head_mask = torch.zeros_like(head_tangent[..., :1])
        head_mask[self.rows, position, head[self.group]] = is_head[self.group, None].to(
            head_mask.dtype
        )
        return (
            with_tangent(heads, head_tangent * head_mask),
            with_tangent(
                skip, skip_tangent * self._keep_at_route(layer, skip_tangent, ~is_head)
            ),
        )

    def mlp_inputs(
        self, layer: int, mlp: Tensor, residual: Tensor
    ) -> Tuple[Tensor, Tensor]:
        mlp_tangent, residual_tangent = tangent_of(mlp), tangent_of(residual)
        is_mlp = self.state.record_ffn(
            self.index,
            layer,
            self._route_influence("mlp", layer, mlp_tangent),
            self._route_influence("residual", layer, residual_tangent),
        )
        if layer == self.problem.graph.num_layers:
            raise StopForward
        return (
            with_tangent(
                mlp, mlp_tangent * self._keep_at_route(layer, mlp_tangent, is_mlp)
            ),
            with_tangent(
                residual,
                residual_tangent
                * self._keep_at_route(layer, residual_tangent, ~is_mlp),
            ),
        )


class _StageBCotangents(NodeController):
    """One forward over steps; per source, a backward restricted to its positions.

    The pass stops at ``h^L``: the open gradient there (from stage A's reverse pass) is
    the same for every source, so each source's backward starts from it, masked to the
    output position, instead of going through the model's head again. Downstream gates
    on ``h^l`` (l < L) are tensor hooks multiplying the gradient by the current source's
    one-hot mask at ``j_l``, so one recorded graph serves every source.
    """

    def __init__(self, problem: ExampleProblem, step: Tensor) -> None:
        self.problem = problem
        self.inputs_embeds = problem.interpolated(step).requires_grad_()
        self.masks: Dict[int, Tensor] = {}
        self.nodes: Dict[Tuple[str, int], Tensor] = {}
        self.last: Tensor

    def word_embeddings(self, output: Tensor) -> Tensor:
        return self.inputs_embeds

    def embedding_node(self, layer: int, hidden: Tensor) -> Tensor:
        if layer == self.problem.graph.num_layers:
            self.last = hidden
            raise StopForward
        if layer == 0:
            return hidden
        hidden = gate(hidden, 1.0)
        hidden.register_hook(lambda grad, layer=layer: grad * self.masks[layer])
        return hidden

    def _record(self, layer: int, **values: Tensor) -> Tuple[Tensor, ...]:
        for name, value in values.items():
            self.nodes[(name, layer)] = gate(value, 1.0)
        return tuple(self.nodes[(name, layer)] for name in values)

    def attention_inputs(
        self, layer: int, heads: Tensor, skip: Tensor
    ) -> Tuple[Tensor, Tensor]:
        return self._record(layer, heads=heads, skip=skip)

    def mlp_inputs(
        self, layer: int, mlp: Tensor, residual: Tensor
    ) -> Tuple[Tensor, Tensor]:
        return self._record(layer, mlp=mlp, residual=residual)


def _stage_b_cotangents(
    problem: ExampleProblem, positions: Tensor, last_gradient: Tensor
) -> Dict[str, Tensor]:
    """Downstream gradients at every stage-B node of the route, per source, layer and
    step: name -> (S, L, n_steps, ...) for heads, skip (and mlp, residual).

    ``last_gradient`` is the open ``dQoI/dh^L`` (n_steps, T, D).
    """
    count, layers = positions.shape[0], problem.graph.num_layers
    cotangents: Dict[str, Tensor] = {}
    _, step = problem.rows(1)
    for chunk in problem.chunks(problem.n_steps):
        controller = _StageBCotangents(problem, step[chunk])
        with torch.enable_grad():
            problem.run(controller, step[chunk].shape[0])
            keys = list(controller.nodes)
            wanted = [controller.nodes[key] for key in keys]
            for s in range(count):
                masks = one_hot_positions(positions[s], problem.num_positions).to(
                    problem.delta.dtype
                )
                controller.masks = {
                    k: masks[k][None, :, None] for k in range(1, layers)
                }
                grads = torch.autograd.grad(
                    controller.last,
                    wanted,
                    grad_outputs=last_gradient[chunk] * masks[layers][None, :, None],
                    retain_graph=True,
                )
                for (name, layer), grad in zip(keys, grads):
                    at_route = grad[:, positions[s, layer]]
                    if name not in cotangents:
                        cotangents[name] = at_route.new_zeros(
                            (count, layers, problem.n_steps, *at_route.shape[1:])
                        )
                    cotangents[name][s, layer - 1, chunk] = at_route
    return cotangents


def _source_chunks(problem: ExampleProblem, count: int, per_chunk: int) -> List[Tensor]:
    """Consecutive chunks of ``per_chunk`` source indices (at least one each)."""
    device = problem.delta.device
    size = max(1, per_chunk)
    return [
        torch.arange(start, min(start + size, count), device=device)
        for start in range(0, count, size)
    ]


def _sources_per_sweep(problem: ExampleProblem) -> int:
    """Generic schedule: whole sources per forward-mode pass (in-hook choices need all
    of a source's steps); ``internal_batch_size`` caps the rows, else a token budget."""
    if problem.internal_batch_size is not None:
        return problem.internal_batch_size // problem.n_steps
    return _TOKENS_PER_PASS // (problem.n_steps * problem.num_positions)


@register_search("forward-mode", fast_stages)
def forward_mode_search(
    problem: ExampleProblem,
    sources: Tensor,
    output_position: Optional[int],
    done: Callable[[str], None] = ignore_progress,
) -> Tuple[SearchState, Tensor]:
    """The fast schedule with forward-mode passes over chunks of sources (any family).

    :func:`fast_search` uses it where :func:`rowwise_supported` is False; it is public
    so that tests and benchmarks can compare the two implementations.

    Args:
        problem (ExampleProblem): The example.
        sources (Tensor): (S,) source positions.
        output_position (int, optional): ``j_L``; None searches the last layer too.
        done (Callable): Called with a stage name after each of the 4 stages.

    Returns:
        (SearchState, Tensor): the choices and candidates, and g (T,).
    """
    layers = range(1, problem.graph.num_layers + 1)
    g, gradients = token_influence(problem, layers)
    done("stage A gradients")
    state = SearchState.empty(problem, sources)
    chunks = _source_chunks(problem, sources.shape[0], _sources_per_sweep(problem))
    for index in chunks:
        _StageASweep(
            problem,
            state,
            index,
            sources[index],
            gradients=gradients,
            output_position=output_position,
        ).sweep()
    done("stage A tangents")
    fast_stage_b(problem, sources, state, gradients[problem.graph.num_layers], done)
    return state, g


def fast_stage_b(
    problem: ExampleProblem,
    sources: Tensor,
    state: SearchState,
    last_gradient: Tensor,
    done: Callable[[str], None] = ignore_progress,
) -> None:
    """Stage B of the forward-mode schedule on the positions already in ``state``
    (also run after other stage-A searches: :mod:`.beam_search`).

    ``last_gradient`` is the open ``dQoI/dh^L`` (n_steps, T, D) of
    :func:`.influence.token_influence`; ``done`` is called twice.
    """
    cotangents = _stage_b_cotangents(problem, state.positions, last_gradient)
    done("stage B gradients")
    per_sweep = _sources_per_sweep(problem)
    for index in _source_chunks(problem, sources.shape[0], per_sweep):
        _StageBSweep(
            problem,
            state,
            index,
            sources[index],
            cotangents=cotangents,
        ).sweep()
    done("stage B tangents")


# ------------------------------------------------------ post-LN encoders, row by row
def _jvp(
    function: Callable[..., Tensor],
    primals: Sequence[Tensor],
    tangents: Sequence[Tensor],
) -> Tuple[Tensor, Tensor]:
    """``function``'s output and its exact forward-mode derivative."""
    with torch.no_grad(), fwAD.dual_level():
        out = function(*(fwAD.make_dual(p, t) for p, t in zip(primals, tangents)))
        primal, tangent = fwAD.unpack_dual(out)
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


class _LayerTangent:
    """A tangent at ``h^{l-1}`` confined to one position ``p`` per source, with its
    query, key and value projections and the score-row term of query ``p``."""

    def __init__(self, layer: "_EncoderLayer", p: Tensor, dh: Tensor) -> None:
        self.p, self.dh = p, dh  # (S,), (S, steps, D)
        dq, self.dk, self.dv = (
            layer.split_heads(dh @ module.weight.T)
            for module in (layer.query, layer.key, layer.value)
        )
        # Query p's whole score row moves (through dq); its softmax JVP gives
        # sum_k dP[p, k] V_k. Every other query row moves only at column p.
        prow = layer.P.permute(2, 0, 3, 1)[p]  # (S, steps, keys, A)
        b = layer.scale * torch.einsum("nkad,snad->snka", layer.K, dq)
        weights = prow * (b - (prow * b).sum(2, keepdim=True))
        self.row = torch.einsum("snka,nkad->snad", weights, layer.V)


class _EncoderLayer:
    """One post-LN encoder layer (``BertLayer`` and its copies): recorded primal values,
    open gradients, and the exact linearisation at single positions.

    Layout: Q, K, V, C (head contexts) (steps, T, A, d); P (steps, A, T, T) attention
    weights (query, key); H = ``h^{l-1}`` (steps, T, D).
    """

    def __init__(self, layer: nn.Module, attention_output: nn.Module) -> None:
        attention = layer.attention.self
        self.layer, self.attention_output = layer, attention_output
        self.query, self.key, self.value = (
            attention.query,
            attention.key,
            attention.value,
        )
        self.num_heads = attention.num_attention_heads
        self.head_size = attention.attention_head_size
        self.scale = float(getattr(attention, "scaling", self.head_size**-0.5))
        self.recorded: Dict[str, List[Tensor]] = {}

    @classmethod
    def of(cls, problem: ExampleProblem) -> Optional[List["_EncoderLayer"]]:
        """The layers of ``problem``'s model, or None when the row-wise schedule does
        not apply (another family, non-eager or relative-position attention, a
        decoder, training mode)."""
        graph = problem.graph
        if not isinstance(graph, PostLNEncoderGraph) or graph.model.training:
            return None
        config = graph.model.config
        if (
            getattr(config, "_attn_implementation", "eager") != "eager"
            or getattr(config, "position_embedding_type", "absolute") != "absolute"
            or getattr(config, "is_decoder", False)
        ):
            return None
        for layer in graph.layers:
            attention = getattr(getattr(layer, "attention", None), "self", None)
            linear = all(
                isinstance(getattr(attention, name, None), nn.Linear)
                for name in ("query", "key", "value")
            )
            parts = all(
                hasattr(layer, name)
                for name in ("feed_forward_chunk", "intermediate", "output")
            )
            sizes = all(
                hasattr(attention, name)
                for name in ("num_attention_heads", "attention_head_size")
            )
            if not (linear and parts and sizes):
                return None
        return [cls(layer, graph.block_parts(layer)[0]) for layer in graph.layers]

    # --------------------------------------------------------------------- recording
    def hooks(self) -> List[torch.utils.hooks.RemovableHandle]:
        """Forward hooks recording this layer's primal values during a pass."""

        def keep(name: str, pick: Callable[[object], Tensor]) -> Callable:
            def hook(module: nn.Module, args: object, output: object) -> None:
                self.recorded.setdefault(name, []).append(pick(output).detach())

            return hook

        def attention(
            module: nn.Module, args: Tuple, kwargs: Dict, output: object
        ) -> None:
            # Eager attention returns its weights (transformers 5); older versions
            # only with output_attentions, so they are recomputed then.
            weights = (
                output[1] if isinstance(output, tuple) and len(output) > 1 else None
            )
            if weights is None:
                mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
                weights = self._weights(mask)
            self.recorded.setdefault("P", []).append(weights.detach())

        def inputs(module: nn.Module, args: Tuple, kwargs: Dict) -> None:
            names = ("hidden_states", "input_tensor")
            values = list(args) + [kwargs[k] for k in names if k in kwargs]
            self.recorded.setdefault("C", []).append(values[0].detach())
            self.recorded.setdefault("H", []).append(values[1].detach())

        return [
            self.query.register_forward_hook(keep("Q", lambda out: out)),
            self.key.register_forward_hook(keep("K", lambda out: out)),
            self.value.register_forward_hook(keep("V", lambda out: out)),
            self.layer.attention.self.register_forward_hook(
                attention, with_kwargs=True
            ),
            self.attention_output.register_forward_pre_hook(inputs, with_kwargs=True),
        ]

    def _weights(self, mask: Optional[Tensor]) -> Tensor:
        """Attention weights (steps, A, T, T) from the last recorded queries and keys
        and the attention module's additive (or boolean) mask."""
        queries, keys = (self.split_heads(self.recorded[n][-1]) for n in ("Q", "K"))
        scores = torch.einsum("nqad,nkad->naqk", queries, keys) * self.scale
        if mask is not None and mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        elif mask is not None:
            scores = scores + mask
        return scores.softmax(-1)

    def split_heads(self, values: Tensor) -> Tensor:
        return values.unflatten(-1, (self.num_heads, self.head_size))

    def finish(self, open_gradient: Tensor) -> None:
        """Collect the recorded chunks; ``open_gradient`` is ``dQoI/dh^l`` (steps, T,
        D) with nothing gated, mapped here to the open gradients at the head contexts
        (Gh) and the skip (Gs) of every position."""
        values = {name: torch.cat(chunks) for name, chunks in self.recorded.items()}
        self.recorded = {}
        self.Q, self.K, self.V, self.C = (
            self.split_heads(values[name]) for name in ("Q", "K", "V", "C")
        )
        self.P, self.H = values["P"], values["H"]
        # The linearisation below assumes contexts = weights @ values per head.
        mixed = torch.einsum("naqk,nkad->nqad", self.P, self.V)
        scale = float(self.C.abs().max())
        if not torch.allclose(mixed, self.C, rtol=1e-4, atol=1e-6 * scale):
            raise RuntimeError(
                "model: the row-wise schedule does not reproduce this model's "
                "attention (contexts != weights @ values); pass schedule='reference' "
                "and report the model"
            )
        heads, self.Gs = _vjp(self.forward, (values["C"], self.H), open_gradient)
        self.Gh = self.split_heads(heads)
        self.GhC = (self.Gh * self.C).sum(-1)  # (steps, T, A)

    # ------------------------------------------------------ the layer after attention
    def forward(self, contexts: Tensor, skip: Tensor) -> Tensor:
        """``h^l`` from the head contexts and the skip, position by position."""
        return self.layer.feed_forward_chunk(self.attention_output(contexts, skip))

    def row_primals(self, q: Tensor) -> Tuple[Tensor, Tensor]:
        """(S, steps, D) head contexts and skip at each source's position ``q``."""
        return _at(self.C, q).flatten(-2), _at(self.H, q)

    # -------------------------------------------------------------- tangents (JVP)
    def tangent(self, p: Tensor, dh: Tensor) -> _LayerTangent:
        return _LayerTangent(self, p, dh)

    def open_influence(self, t: _LayerTangent, weights: Tensor) -> Tensor:
        """Stage A: ``I(h^l_j)`` (S, T) for every ``j`` with nothing gated downstream,
        as ``sum_n <Gh_j, dC_j> + <Gs_j, ds_j>`` (the skip moves only at ``p``)."""
        pcol = self.P.permute(3, 0, 2, 1)[t.p]  # (S, steps, queries, A)
        a = self.scale * torch.einsum("nqad,snad->snqa", self.Q, t.dk)
        gv = torch.einsum("nqad,snad->snqa", self.Gh, _at(self.V, t.p))
        gdv = torch.einsum("nqad,snad->snqa", self.Gh, t.dv)
        per_step = (pcol * (a * (gv - self.GhC) + gdv)).sum(-1)  # (S, steps, T)
        at_p = (t.row * _at(self.Gh, t.p)).sum((-2, -1)) + (
            t.dh * _at(self.Gs, t.p)
        ).sum(-1)
        sources = torch.arange(t.p.shape[0], device=t.p.device)
        per_step[sources, :, t.p] += at_p
        return torch.einsum("snq,n->sq", per_step, weights)

    def context_tangent(self, t: _LayerTangent, q: Tensor) -> Tuple[Tensor, Tensor]:
        """Tangents (S, steps, A, d) of the head contexts and (S, steps, D) of the skip
        at each source's query position ``q``."""
        p_weight = self.P.permute(2, 3, 0, 1)[q, t.p]  # (S, steps, A): P[q, p]
        a = self.scale * (_at(self.Q, q) * t.dk).sum(-1)
        column = p_weight[..., None] * (
            a[..., None] * (_at(self.V, t.p) - _at(self.C, q)) + t.dv
        )
        same = (q == t.p).to(t.dh.dtype)[:, None, None]
        return column + same[..., None] * t.row, same * t.dh

    # ---------------------------------------------------------- cotangents (VJP)
    def node_cotangents(
        self, q: Tensor, cotangent: Tensor, split_mlp: bool
    ) -> Dict[str, Tensor]:
        """Stage B: from ``dQoI/dh^l`` at ``q`` (S, steps, D), the gradients at the
        layer's nodes at ``q``: heads (S, steps, A, d), skip (and mlp, residual)."""
        contexts, skip = self.row_primals(q)
        if not split_mlp:
            heads, skip_grad = _vjp(self.forward, (contexts, skip), cotangent)
            return {"heads": self.split_heads(heads), "skip": skip_grad}
        with torch.no_grad():
            after = self.attention_output(contexts, skip)
            mlp = self.layer.intermediate(after)
        mlp_grad, residual = _vjp(self.layer.output, (mlp, after), cotangent)
        after_grad = residual + _vjp(self.layer.intermediate, (after,), mlp_grad)[0]
        heads, skip_grad = _vjp(self.attention_output, (contexts, skip), after_grad)
        return {
            "heads": self.split_heads(heads),
            "skip": skip_grad,
            "mlp": mlp_grad,
            "residual": residual,
        }

    def cotangent_below(
        self, q: Tensor, p: Tensor, heads: Tensor, skip: Tensor
    ) -> Tensor:
        """``dQoI/dh^{l-1}`` at ``p`` (S, steps, D) from the node gradients at query
        ``q``: through the value and key of ``p``, and where ``p == q`` through the
        query and the skip."""
        p_weight = self.P.permute(2, 3, 0, 1)[q, p]  # (S, steps, A)
        contexts, queries = _at(self.C, q), _at(self.Q, q)
        score_p = p_weight * (heads * (_at(self.V, p) - contexts)).sum(-1)
        dv = p_weight[..., None] * heads
        dk = self.scale * score_p[..., None] * queries
        prow = self.P.permute(2, 0, 3, 1)[q]  # (S, steps, keys, A)
        scores = prow * (
            torch.einsum("snad,nkad->snka", heads, self.V)
            - (heads * contexts).sum(-1)[:, :, None]
        )
        dq = self.scale * torch.einsum("snka,nkad->snad", scores, self.K)
        same = (q == p).to(skip.dtype)[:, None, None]
        return (
            dv.flatten(-2) @ self.value.weight
            + dk.flatten(-2) @ self.key.weight
            + same * (dq.flatten(-2) @ self.query.weight + skip)
        )


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


def _record_encoder(
    problem: ExampleProblem, layers: List[_EncoderLayer]
) -> Tuple[Tensor, Tensor, Tensor]:
    """One open reverse pass (recording every layer's primal values) and one
    forward-mode pass to ``h^0``. Returns g (T,), ``dQoI/dh^L`` and the embedding
    tangents, both (steps, T, D)."""
    handles = [handle for layer in layers for handle in layer.hooks()]
    try:
        g, gradients = token_influence(problem, range(1, len(layers) + 1))
    finally:
        for handle in handles:
            handle.remove()
    for number, layer in enumerate(layers, start=1):
        layer.finish(gradients[number])
    _, step = problem.rows(1)
    tangents = []
    for chunk in problem.chunks(problem.n_steps):
        controller = _EmbeddingTangents(problem, step[chunk])
        with torch.no_grad(), fwAD.dual_level():
            problem.run(controller, step[chunk].shape[0])
        tangents.append(controller.tangent)
    return g, gradients[len(layers)], torch.cat(tangents)


def _rowwise_stage_a(
    problem: ExampleProblem,
    layers: List[_EncoderLayer],
    state: SearchState,
    index: Tensor,
    embedding_tangents: Tensor,
    output_position: Optional[int],
) -> None:
    """Stage A for a chunk of sources: carry each tangent along its chosen positions."""
    p = state.positions[index, 0]
    dh = _at(embedding_tangents, p)
    for number, layer in enumerate(layers, start=1):
        tangent = layer.tangent(p, dh)
        influence = layer.open_influence(tangent, problem.weights)
        q = state.record_positions(index, number, influence, output_position)
        if number == len(layers):
            return
        heads, skip = layer.context_tangent(tangent, q)
        _, dh = _jvp(layer.forward, layer.row_primals(q), (heads.flatten(-2), skip))
        p = q


def _rowwise_stage_b(
    problem: ExampleProblem,
    layers: List[_EncoderLayer],
    state: SearchState,
    index: Tensor,
    embedding_tangents: Tensor,
    last_gradient: Tensor,
) -> None:
    """Stage B for a chunk of sources: cotangents down the route, then tangents up it
    with the head-or-skip (and MLP-or-residual) choices."""
    route, split, count = state.positions[index], state.split_mlp, len(layers)
    weights = problem.weights
    cotangent = _at(last_gradient, route[:, count])
    node_cotangents: List[Dict[str, Tensor]] = [{}] * count
    for number in range(count, 0, -1):
        layer, q = layers[number - 1], route[:, number]
        nodes = layer.node_cotangents(q, cotangent, split)
        node_cotangents[number - 1] = nodes
        if number > 1:
            cotangent = layer.cotangent_below(
                q, route[:, number - 1], nodes["heads"], nodes["skip"]
            )
    dh = _at(embedding_tangents, route[:, 0])
    for number, layer in enumerate(layers, start=1):
        q, nodes = route[:, number], node_cotangents[number - 1]
        tangent = layer.tangent(route[:, number - 1], dh)
        heads, skip = layer.context_tangent(tangent, q)
        is_head, head = state.record_nodes(
            index,
            number,
            torch.einsum("snad,snad,n->sa", nodes["heads"], heads, weights),
            torch.einsum("snd,snd,n->s", nodes["skip"], skip, weights),
        )
        if number == count and not split:
            return
        keep_head = (
            torch.nn.functional.one_hot(head, layer.num_heads) * is_head[:, None]
        )
        heads = heads * keep_head.to(heads.dtype)[:, None, :, None]
        skip = skip * (~is_head).to(skip.dtype)[:, None, None]
        primals, tangents = layer.row_primals(q), (heads.flatten(-2), skip)
        if not split:
            _, dh = _jvp(layer.forward, primals, tangents)
            continue
        after, d_after = _jvp(layer.attention_output, primals, tangents)
        mlp, d_mlp = _jvp(layer.layer.intermediate, (after,), (d_after,))
        is_mlp = state.record_ffn(
            index,
            number,
            torch.einsum("snd,snd,n->s", nodes["mlp"], d_mlp, weights),
            torch.einsum("snd,snd,n->s", nodes["residual"], d_after, weights),
        )
        if number == count:
            return
        keep = is_mlp.to(d_mlp.dtype)[:, None, None]
        _, dh = _jvp(
            layer.layer.output, (mlp, after), (d_mlp * keep, d_after * (1 - keep))
        )


def _rowwise_routes(
    problem: ExampleProblem,
    layers: List[_EncoderLayer],
    last_gradient: Tensor,
    embedding_tangents: Tensor,
    positions: Tensor,
    heads: Optional[Tensor],
    mlp: Optional[Tensor],
) -> Tensor:
    """Fixed routes, row by row: the stage-B tangent pass with given choices, dotted
    with the open gradient at ``h^L_{j_L}``."""
    split = mlp is not None
    dh = _at(embedding_tangents, positions[:, 0])
    for number, layer in enumerate(layers, start=1):
        p, q = positions[:, number - 1], positions[:, number]
        head_tangent, skip_tangent = layer.context_tangent(layer.tangent(p, dh), q)
        if heads is not None:
            chosen = heads[:, number - 1]
            is_head = (chosen >= 0).to(skip_tangent.dtype)
            keep_head = torch.nn.functional.one_hot(chosen.clamp(min=0), layer.num_heads)
            keep_head = keep_head.to(head_tangent.dtype) * is_head[:, None]
            head_tangent = head_tangent * keep_head[:, None, :, None]
            skip_tangent = skip_tangent * (1 - is_head)[:, None, None]
        primals = layer.row_primals(q)
        tangents = (head_tangent.flatten(-2), skip_tangent)
        if not split:
            _, dh = _jvp(layer.forward, primals, tangents)
            continue
        after, d_after = _jvp(layer.attention_output, primals, tangents)
        hidden, d_mlp = _jvp(layer.layer.intermediate, (after,), (d_after,))
        keep = mlp[:, number - 1].to(d_mlp.dtype)[:, None, None]
        _, dh = _jvp(
            layer.layer.output, (hidden, after), (d_mlp * keep, d_after * (1 - keep))
        )
    cotangent = _at(last_gradient, positions[:, -1])
    return torch.einsum("snd,snd,n->s", cotangent, dh, problem.weights)


def route_influence(
    problem: ExampleProblem,
    positions: Tensor,
    heads: Optional[Tensor] = None,
    mlp: Optional[Tensor] = None,
) -> Tensor:
    """Influence ``I(pi)`` of fixed routes, batched over routes on one shared primal
    pass (docs/method.md, section 7).

    Each route keeps ``h^l`` at ``j_l`` only. Without ``heads`` that is the
    embedding-level route ``pi^e`` (every head and the skip at ``j_l`` kept); with
    ``heads`` the attention-level route ``pi^a`` (only the chosen node at ``j_l``),
    and in split graphs with ``mlp`` also only the MLP branch or the residual around
    it. The values equal :func:`.influence.pattern_influence` of the same patterns at
    ``level="embedding"`` or ``"attention"``.

    Where :func:`rowwise_supported` holds, one open reverse pass records every layer's
    primal values and each route's tangent is carried at one position per layer, so
    memory grows with the number of routes only through one-position rows (chunks of
    routes follow ``internal_batch_size // n_steps`` when given). Elsewhere the routes
    are scored by gated reverse passes (:func:`.influence.gated_influence`): the same
    values at the cost of one dense pass per route. Call it inside
    :func:`.model_graph.analysis_mode`.

    Args:
        problem (ExampleProblem): The example.
        positions (Tensor): (R, L + 1) long, ``j_0 .. j_L`` per route; ``j_0`` is the
            source.
        heads (Tensor, optional): (R, L) long, per layer the head kept at ``j_l``, or
            -1 for the skip. Default: None (embedding level)
        mlp (Tensor, optional): (R, L) bool, only with ``heads`` and a graph built with
            ``split_mlp``: True keeps the MLP branch at ``j_l``, False the residual.
            Default: None (both kept)

    Returns:
        Tensor: (R,) influences, in ``problem``'s dtype.
    """
    layers_count = problem.graph.num_layers
    if positions.dim() != 2 or positions.shape[1] != layers_count + 1:
        raise ValueError(
            f"positions: expected (routes, {layers_count + 1}) positions j_0..j_L, "
            f"got shape {tuple(positions.shape)}"
        )
    for name, choice in (("heads", heads), ("mlp", mlp)):
        if choice is not None and choice.shape != (positions.shape[0], layers_count):
            raise ValueError(
                f"{name}: expected shape ({positions.shape[0]}, {layers_count}), got "
                f"{tuple(choice.shape)}"
            )
    if mlp is not None and (heads is None or not problem.graph.split_mlp):
        raise ValueError(
            "mlp: MLP-or-residual choices need heads and a graph built with split_mlp"
        )
    layers = _EncoderLayer.of(problem)
    if layers is None:
        gates = route_gates(
            positions, problem.num_positions, problem.graph.num_heads, heads, mlp
        )
        return gated_influence(problem, positions[:, 0], gates)
    with torch.no_grad():
        _, last_gradient, embedding_tangents = _record_encoder(problem, layers)
        results = [
            _rowwise_routes(
                problem,
                layers,
                last_gradient,
                embedding_tangents,
                positions[index],
                None if heads is None else heads[index],
                None if mlp is None else mlp[index],
            )
            for index in _source_chunks(
                problem, positions.shape[0], _rowwise_per_chunk(problem, layers)
            )
        ]
    return torch.cat(results)


def rowwise_supported(problem: ExampleProblem) -> bool:
    """Whether :func:`rowwise_search` applies: a post-LN encoder (BERT, RoBERTa,
    ELECTRA layers) in eval mode with eager, absolute-position self-attention."""
    return _EncoderLayer.of(problem) is not None


@register_search("row-wise", fast_stages)
def rowwise_search(
    problem: ExampleProblem,
    sources: Tensor,
    output_position: Optional[int],
    done: Callable[[str], None] = ignore_progress,
) -> Tuple[SearchState, Tensor]:
    """The fast schedule row by row for post-LN encoders (see the module docstring).

    Same arguments and results as :func:`forward_mode_search`; the chunk of sources
    per step is capped by ``internal_batch_size // n_steps`` when given.

    Raises:
        ValueError: when :func:`rowwise_supported` is False for ``problem``.
    """
    layers = _EncoderLayer.of(problem)
    if layers is None:
        raise ValueError(
            "problem: the row-wise schedule needs a post-LN encoder (BERT, RoBERTa, "
            "ELECTRA) in eval mode with eager attention; use forward_mode_search"
        )
    with torch.no_grad():  # parameters take part in the products below
        return _rowwise_stages(problem, layers, sources, output_position, done)


def _rowwise_per_chunk(problem: ExampleProblem, layers: List[_EncoderLayer]) -> int:
    """Sources (or routes) per chunk of the row-wise schedule: ``internal_batch_size
    // n_steps`` when given, else a cap on the (S, steps, T, heads) tensors."""
    if problem.internal_batch_size is not None:
        return problem.internal_batch_size // problem.n_steps
    per_source = problem.n_steps * problem.num_positions * layers[0].num_heads
    return _ROWWISE_ELEMENTS // per_source


def _rowwise_stages(
    problem: ExampleProblem,
    layers: List[_EncoderLayer],
    sources: Tensor,
    output_position: Optional[int],
    done: Callable[[str], None],
) -> Tuple[SearchState, Tensor]:
    """Both stages row by row, gradients off outside the explicit VJPs."""
    g, last_gradient, embedding_tangents = _record_encoder(problem, layers)
    done("stage A gradients")
    state = SearchState.empty(problem, sources)
    chunks = _source_chunks(
        problem, sources.shape[0], _rowwise_per_chunk(problem, layers)
    )
    for index in chunks:
        _rowwise_stage_a(
            problem, layers, state, index, embedding_tangents, output_position
        )
    done("stage A tangents")
    for index in chunks:
        _rowwise_stage_b(
            problem, layers, state, index, embedding_tangents, last_gradient
        )
    done("stage B gradients")
    done("stage B tangents")
    return state, g


@register_search("fast", fast_stages)
def fast_search(
    problem: ExampleProblem,
    sources: Tensor,
    output_position: Optional[int],
    done: Callable[[str], None] = ignore_progress,
) -> Tuple[SearchState, Tensor]:
    """Both stages with the fast schedule. Returns the state and g for every position.

    Post-LN encoders take the row-wise schedule, every other family the generic one
    (see the module docstring); both choose alike. ``done(stage)`` is called after each
    of the :func:`.search.fast_stages` (progress bars).
    """
    if rowwise_supported(problem):
        return rowwise_search(problem, sources, output_position, done)
    return forward_mode_search(problem, sources, output_position, done)
