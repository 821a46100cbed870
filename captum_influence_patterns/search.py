"""Guided pattern refinement (METHOD.md section 6) in two schedules.

- :func:`fast_search` (METHOD.md section 7): one open reverse pass serves stage A for
  every source and layer; stage A's tangents are carried through one forward-mode pass
  per chunk of sources, the choice at each layer made inside the layer's hook before the
  pass moves on; stage B's downstream gradients come from one shared forward and one
  restricted backward per source; stage B's tangents again take one forward-mode pass
  with in-hook choices.
- :func:`reference_search`: the authors' literal schedule, a fresh forward-mode and
  reverse pass for every layer of stage A, and for the heads and for the skip of every
  layer of stage B (:func:`.influence.node_influence`): 6L batched passes per source,
  the authors' (6L - 2) plus stage A's last layer, which the reference reads to report
  candidates.

Both share the decision rules below and return identical patterns up to floating point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from .influence import ExampleProblem, node_influence, token_influence
from .path_restriction import (
    Gates,
    NodeController,
    StopForward,
    gate,
    tangent_of,
    with_tangent,
)
from .results import Pattern, PatternNode

SCHEDULES = ("fast", "reference")


# ---------------------------------------------------------------------- decision rules
def search_sign(layer_one_influence: Tensor) -> Tensor:
    """+1, or -1 where the source's total influence (sum over layer 1) is negative."""
    total = layer_one_influence.sum(-1)
    return torch.where(total < 0, -torch.ones_like(total), torch.ones_like(total))


def choose_positions(
    influence: Tensor, sign: Tensor, earliest: Optional[Tensor] = None
) -> Tensor:
    """Stage A: the position with the largest sign-adjusted influence (ties: lowest j).

    ``earliest`` (S,) forbids positions before it (causal models: a route never moves
    backwards, where every influence is exactly zero anyway).
    """
    adjusted = sign[:, None] * influence
    if earliest is not None:
        positions = torch.arange(influence.shape[-1], device=influence.device)
        adjusted = adjusted.masked_fill(positions < earliest[:, None], float("-inf"))
    return adjusted.argmax(-1)


def choose_nodes(
    head_influence: Tensor, skip_influence: Tensor, sign: Tensor
) -> Tuple[Tensor, Tensor]:
    """Stage B: the best head if strictly better than the skip, else the skip.

    Returns:
        (is_head, head): (S,) bools and (S,) head indices (meaningful where is_head).
    """
    adjusted = sign[:, None] * head_influence
    head = adjusted.argmax(-1)
    best = adjusted.gather(1, head[:, None])[:, 0]
    return best > sign * skip_influence, head


def one_hot_positions(positions: Tensor, num_positions: int) -> Tensor:
    """(S,) positions -> (S, T) float masks."""
    return torch.nn.functional.one_hot(positions, num_positions).float()


# ----------------------------------------------------------------------- search state
@dataclass
class SearchState:
    """Choices and candidate influences of every source of one example."""

    sign: Tensor  # (S,)
    positions: Tensor  # (S, L + 1)
    position_candidates: Tensor  # (S, L, T)
    is_head: Tensor  # (S, L)
    head: Tensor  # (S, L)
    node_candidates: Tensor  # (S, L, A + 1), the skip last
    is_mlp: Tensor  # (S, L), with the MLP split off
    ffn_candidates: Tensor  # (S, L, 2): [I(mlp), I(residual)]
    causal: bool = False
    split_mlp: bool = False

    @classmethod
    def empty(cls, problem: ExampleProblem, sources: Tensor) -> "SearchState":
        graph = problem.graph
        count, layers = sources.shape[0], graph.num_layers
        options = {"dtype": problem.delta.dtype, "device": problem.delta.device}
        positions = torch.zeros(
            count, layers + 1, dtype=torch.long, device=sources.device
        )
        positions[:, 0] = sources
        return cls(
            sign=torch.ones(count, **options),
            positions=positions,
            position_candidates=torch.zeros(
                count, layers, problem.num_positions, **options
            ),
            is_head=torch.zeros(count, layers, dtype=torch.bool, device=sources.device),
            head=torch.zeros(count, layers, dtype=torch.long, device=sources.device),
            node_candidates=torch.zeros(count, layers, graph.num_heads + 1, **options),
            is_mlp=torch.zeros(count, layers, dtype=torch.bool, device=sources.device),
            ffn_candidates=torch.zeros(count, layers, 2, **options),
            causal=graph.is_causal,
            split_mlp=graph.split_mlp,
        )

    def record_positions(
        self,
        index: Tensor,
        layer: int,
        influence: Tensor,
        output_position: Optional[int],
    ) -> Tensor:
        """Store stage A's influences at ``layer``; choose and return ``j_layer``."""
        self.position_candidates[index, layer - 1] = influence
        if layer == 1:
            self.sign[index] = search_sign(influence)
        last = layer == self.positions.shape[1] - 1
        if last and output_position is not None:
            chosen = torch.full_like(index, output_position)
        else:  # j_L is searched too when the QoI reads every position (pooling)
            earliest = self.positions[index, layer - 1] if self.causal else None
            chosen = choose_positions(influence, self.sign[index], earliest)
        self.positions[index, layer] = chosen
        return chosen

    def record_nodes(
        self, index: Tensor, layer: int, head_influence: Tensor, skip_influence: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Store stage B's influences at ``layer`` and choose the node; returns it."""
        self.node_candidates[index, layer - 1] = torch.cat(
            [head_influence, skip_influence[:, None]], dim=1
        )
        is_head, head = choose_nodes(head_influence, skip_influence, self.sign[index])
        self.is_head[index, layer - 1], self.head[index, layer - 1] = is_head, head
        return is_head, head

    def record_ffn(
        self, index: Tensor, layer: int, mlp_influence: Tensor, residual: Tensor
    ) -> Tensor:
        """Store the MLP-or-residual influences at ``layer`` and choose; ``True``
        where the MLP is strictly better (ties go to the residual, like the skip)."""
        self.ffn_candidates[index, layer - 1] = torch.stack(
            [mlp_influence, residual], dim=1
        )
        sign = self.sign[index]
        is_mlp = sign * mlp_influence > sign * residual
        self.is_mlp[index, layer - 1] = is_mlp
        return is_mlp

    def patterns(self, token_influence: Tensor) -> List[Pattern]:
        """One :class:`Pattern` per source, from the recorded choices."""
        patterns = []
        layers = self.positions.shape[1] - 1
        for s in range(self.positions.shape[0]):
            positions = self.positions[s].tolist()
            chosen_positions = [
                float(self.position_candidates[s, k - 1, positions[k]])
                for k in range(1, layers + 1)
            ]
            nodes = []
            for k in range(1, layers + 1):
                head = int(self.head[s, k - 1]) if self.is_head[s, k - 1] else None
                column = head if head is not None else -1
                node = PatternNode(
                    layer=k,
                    position=positions[k],
                    kind="skip" if head is None else "head",
                    head=head,
                    influence=float(self.node_candidates[s, k - 1, column]),
                )
                if self.split_mlp:
                    through = bool(self.is_mlp[s, k - 1])
                    node.ffn = "mlp" if through else "residual"
                    node.ffn_influence = float(
                        self.ffn_candidates[s, k - 1, 0 if through else 1]
                    )
                nodes.append(node)
            patterns.append(
                Pattern(
                    source=positions[0],
                    sign=int(self.sign[s]),
                    token_influence=float(token_influence[positions[0]]),
                    positions=positions,
                    position_influence=chosen_positions,
                    embedding_influence=chosen_positions[-1],
                    nodes=nodes,
                    influence=(
                        nodes[-1].ffn_influence
                        if self.split_mlp
                        else nodes[-1].influence
                    ),
                    position_candidates=self.position_candidates[s].tolist(),
                    node_candidates=self.node_candidates[s].tolist(),
                    ffn_candidates=(
                        self.ffn_candidates[s].tolist() if self.split_mlp else []
                    ),
                )
            )
        return patterns


# ----------------------------------------------------------------------- fast schedule
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


def _source_chunks(problem: ExampleProblem, count: int) -> List[Tensor]:
    """Chunks of whole sources: in-hook choices need all of a source's steps."""
    chunks = problem.chunks(count * problem.n_steps, unit=problem.n_steps)
    device = problem.delta.device
    return [
        torch.arange(
            c.start // problem.n_steps, -(-c.stop // problem.n_steps), device=device
        )
        for c in chunks
    ]


def stages(schedule: str, num_layers: int) -> int:
    """How often a ``schedule`` search calls its ``done`` callback per example."""
    return 4 if schedule == "fast" else 2 * num_layers + 1


def _ignore(stage: str) -> None:
    return None


def fast_search(
    problem: ExampleProblem,
    sources: Tensor,
    output_position: Optional[int],
    done: Callable[[str], None] = _ignore,
) -> Tuple[SearchState, Tensor]:
    """Both stages with the fast schedule. Returns the state and g for every position.

    ``done(stage)`` is called after each of the :func:`stages` steps (progress bars).
    """
    layers = range(1, problem.graph.num_layers + 1)
    g, gradients = token_influence(problem, layers)
    done("stage A gradients")
    state = SearchState.empty(problem, sources)
    chunks = _source_chunks(problem, sources.shape[0])
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
    cotangents = _stage_b_cotangents(
        problem, state.positions, gradients[problem.graph.num_layers]
    )
    done("stage B gradients")
    for index in chunks:
        _StageBSweep(
            problem,
            state,
            index,
            sources[index],
            cotangents=cotangents,
        ).sweep()
    done("stage B tangents")
    return state, g


def reference_search(
    problem: ExampleProblem,
    sources: Tensor,
    output_position: Optional[int],
    done: Callable[[str], None] = _ignore,
) -> Tuple[SearchState, Tensor]:
    """Both stages with the literal per-layer schedule (fresh passes per layer)."""
    g, _ = token_influence(problem, ())
    done("token influence")
    state = SearchState.empty(problem, sources)
    everyone = torch.arange(sources.shape[0], device=sources.device)
    num_layers, num_positions = problem.graph.num_layers, problem.num_positions

    def position_masks(layer: int) -> Tensor:
        return one_hot_positions(state.positions[:, layer], num_positions)

    for layer in range(1, num_layers + 1):
        upstream = Gates(embedding={k: position_masks(k) for k in range(1, layer)})
        influence = node_influence(problem, sources, layer, "embedding", upstream)
        state.record_positions(
            everyone, layer, influence[("embedding", layer)], output_position
        )
        done(f"stage A layer {layer}")
    at_route = {k: position_masks(k) for k in range(1, num_layers + 1)}
    upstream = Gates()  # grows with every choice: the route prefix
    for layer in range(1, num_layers + 1):
        if layer > 1:
            upstream.embedding[layer - 1] = at_route[layer - 1]
        downstream = Gates(
            embedding={k: at_route[k] for k in range(layer, num_layers + 1)}
        )
        # Like the authors: heads and skip each get their own pair of passes.
        heads = node_influence(problem, sources, layer, "heads", upstream, downstream)
        skip = node_influence(problem, sources, layer, "skip", upstream, downstream)
        j = state.positions[:, layer]
        is_head, head = state.record_nodes(
            everyone,
            layer,
            heads[("heads", layer)][everyone, j],
            skip[("skip", layer)][everyone, j],
        )
        chosen_head = torch.nn.functional.one_hot(head, problem.graph.num_heads)
        is_head = is_head[:, None].float()
        upstream.heads[layer] = (
            at_route[layer][..., None]
            * chosen_head[:, None].float()
            * is_head[..., None]
        )
        upstream.skip[layer] = at_route[layer] * (1 - is_head)
        if state.split_mlp:
            mlp = node_influence(problem, sources, layer, "mlp", upstream, downstream)
            rest = node_influence(
                problem, sources, layer, "residual", upstream, downstream
            )
            is_mlp = state.record_ffn(
                everyone,
                layer,
                mlp[("mlp", layer)][everyone, j],
                rest[("residual", layer)][everyone, j],
            )[:, None].float()
            upstream.mlp[layer] = at_route[layer] * is_mlp
            upstream.residual[layer] = at_route[layer] * (1 - is_mlp)
        done(f"stage B layer {layer}")
    return state, g
