"""The forward-mode schedule of guided pattern refinement (docs/method.md, section 7),
the fallback of :func:`.search.fast.fast_search` where the row-wise schedule
(:mod:`.search.rowwise`) does not apply; both choose alike (the decision rules and the
search state are those of :mod:`.state`).

Forward-mode passes (:mod:`torch.autograd.forward_ad`) over chunks of sources with
in-hook choices. One open reverse pass serves stage A for every source and layer; stage
A's tangents are carried through one forward-mode pass per chunk of sources, the choice
at each layer made inside the layer's hook before the pass moves on; stage B's
downstream gradients come from one shared forward and one restricted backward per
source; stage B's tangents again take one forward-mode pass with in-hook choices.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from ..graph import NodeController, StopForward
from ..graph.gating import gate, tangent_of, with_tangent
from ..influence import ExampleProblem, token_influence
from .state import (
    SearchState,
    ignore_progress,
    one_hot_positions,
)

# Tokens (rows x positions) per forward-mode pass when
# internal_batch_size is not given. Measured on CPU (6-layer, 384-hidden BERT, 50
# steps): one source per pass (550 or 1600 tokens) beat all sources at once at 11 and
# 32 tokens (2.8x -> 2.1x LIG per source at 32, docs/performance.md); larger passes
# fall out of cache.
_TOKENS_PER_PASS = 1024


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


def source_chunks(
    problem: ExampleProblem, count: int, per_source: int = 1
) -> List[Tensor]:
    """Consecutive chunks of source indices for forward-mode passes: whole sources
    (in-hook choices need all of a source's steps), ``per_source`` tangents each (a
    beam's prefixes), at least one source per chunk; ``internal_batch_size`` caps the
    rows, else a token budget."""
    rows = problem.n_steps * per_source
    if problem.internal_batch_size is not None:
        size = problem.internal_batch_size // rows
    else:
        size = _TOKENS_PER_PASS // (rows * problem.num_positions)
    size = max(1, size)
    device = problem.delta.device
    return [
        torch.arange(start, min(start + size, count), device=device)
        for start in range(0, count, size)
    ]


def forward_mode_search(
    problem: ExampleProblem,
    sources: Tensor,
    output_position: Optional[int],
    done: Callable[[str], None] = ignore_progress,
) -> Tuple[SearchState, Tensor]:
    """The fast schedule with forward-mode passes over chunks of sources (any family).

    :func:`.search.fast.fast_search` uses it where the row-wise schedule does not
    apply; it is public so that tests and benchmarks can compare the two
    implementations.

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
    for index in source_chunks(problem, sources.shape[0]):
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
    (also run after other stage-A searches: :mod:`.search.beam`).

    ``last_gradient`` is the open ``dQoI/dh^L`` (n_steps, T, D) of
    :func:`.influence.token_influence`; ``done`` is called twice.
    """
    cotangents = _stage_b_cotangents(problem, state.positions, last_gradient)
    done("stage B gradients")
    for index in source_chunks(problem, sources.shape[0]):
        _StageBSweep(
            problem,
            state,
            index,
            sources[index],
            cotangents=cotangents,
        ).sweep()
    done("stage B tangents")
