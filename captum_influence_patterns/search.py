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
    causal: bool = False

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
            causal=graph.is_causal,
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
                nodes.append(
                    PatternNode(
                        layer=k,
                        position=positions[k],
                        kind="skip" if head is None else "head",
                        head=head,
                        influence=float(self.node_candidates[s, k - 1, column]),
                    )
                )
            patterns.append(
                Pattern(
                    source=positions[0],
                    sign=int(self.sign[s]),
                    token_influence=float(token_influence[positions[0]]),
                    positions=positions,
                    position_influence=chosen_positions,
                    embedding_influence=chosen_positions[-1],
                    nodes=nodes,
                    influence=nodes[-1].influence,
                    position_candidates=self.position_candidates[s].tolist(),
                    node_candidates=self.node_candidates[s].tolist(),
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
    """Carry stage B's tangents, choosing head or skip at ``j_l`` inside each hook."""

    def __init__(self, *args, head_cotangents: Tensor, skip_cotangents: Tensor) -> None:
        super().__init__(*args)
        self.head_cotangents = head_cotangents  # (S, L, n, A, head_size) at j_l
        self.skip_cotangents = skip_cotangents  # (S, L, n, D) at j_l

    def attention_inputs(
        self, layer: int, heads: Tensor, skip: Tensor
    ) -> Tuple[Tensor, Tensor]:
        head_tangent, skip_tangent = tangent_of(heads), tangent_of(skip)
        rows = torch.arange(self.step.shape[0], device=self.step.device)
        source_rows = self.index[self.group]
        position = self.state.positions[source_rows, layer]
        cotangent = (source_rows, layer - 1, self.step)
        head_products = (
            self.head_cotangents[cotangent] * head_tangent[rows, position]
        ).sum(-1)
        skip_products = (
            self.skip_cotangents[cotangent] * skip_tangent[rows, position]
        ).sum(-1)
        is_head, head = self.state.record_nodes(
            self.index,
            layer,
            self.influence(head_products),
            self.influence(skip_products),
        )
        if layer == self.problem.graph.num_layers:
            raise StopForward
        head_mask = torch.zeros_like(head_tangent[..., :1])
        head_mask[rows, position, head[self.group]] = is_head[self.group, None].to(
            head_mask.dtype
        )
        skip_mask = torch.zeros_like(skip_tangent[..., :1])
        skip_mask[rows, position] = (~is_head[self.group, None]).to(skip_mask.dtype)
        return (
            with_tangent(heads, head_tangent * head_mask),
            with_tangent(skip, skip_tangent * skip_mask),
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
        self.heads: Dict[int, Tensor] = {}
        self.skips: Dict[int, Tensor] = {}
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

    def attention_inputs(
        self, layer: int, heads: Tensor, skip: Tensor
    ) -> Tuple[Tensor, Tensor]:
        self.heads[layer], self.skips[layer] = gate(heads, 1.0), gate(skip, 1.0)
        return self.heads[layer], self.skips[layer]


def _stage_b_cotangents(
    problem: ExampleProblem, positions: Tensor, last_gradient: Tensor
) -> Tuple[Tensor, Tensor]:
    """``dQoI/da^l_{j_l,n}`` and ``dQoI/ds^l_{j_l}`` per source, layer and step.

    ``last_gradient`` is the open ``dQoI/dh^L`` (n_steps, T, D).
    """
    graph = problem.graph
    count, layers, steps = positions.shape[0], graph.num_layers, problem.n_steps
    dtype, device = problem.delta.dtype, problem.delta.device
    heads = torch.zeros(
        count,
        layers,
        steps,
        graph.num_heads,
        graph.head_size,
        dtype=dtype,
        device=device,
    )
    skips = torch.zeros(
        count,
        layers,
        steps,
        graph.num_heads * graph.head_size,
        dtype=dtype,
        device=device,
    )
    _, step = problem.rows(1)
    for chunk in problem.chunks(steps):
        controller = _StageBCotangents(problem, step[chunk])
        with torch.enable_grad():
            problem.run(controller, step[chunk].shape[0])
            wanted = [controller.heads[k] for k in range(1, layers + 1)]
            wanted += [controller.skips[k] for k in range(1, layers + 1)]
            for s in range(count):
                masks = one_hot_positions(positions[s], problem.num_positions).to(dtype)
                controller.masks = {
                    k: masks[k][None, :, None] for k in range(1, layers)
                }
                grads = torch.autograd.grad(
                    controller.last,
                    wanted,
                    grad_outputs=last_gradient[chunk] * masks[layers][None, :, None],
                    retain_graph=True,
                )
                for k in range(1, layers + 1):
                    j = positions[s, k]
                    heads[s, k - 1, chunk] = grads[k - 1][:, j]
                    skips[s, k - 1, chunk] = grads[layers + k - 1][:, j]
    return heads, skips


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
    head_cotangents, skip_cotangents = _stage_b_cotangents(
        problem, state.positions, gradients[problem.graph.num_layers]
    )
    done("stage B gradients")
    for index in chunks:
        _StageBSweep(
            problem,
            state,
            index,
            sources[index],
            head_cotangents=head_cotangents,
            skip_cotangents=skip_cotangents,
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
    downstream_all = {k: position_masks(k) for k in range(1, num_layers + 1)}
    for layer in range(1, num_layers + 1):
        upstream = Gates(embedding={k: downstream_all[k] for k in range(1, layer)})
        for k in range(1, layer):
            masks = downstream_all[k]
            chosen_head = torch.nn.functional.one_hot(
                state.head[:, k - 1], problem.graph.num_heads
            ).float()
            is_head = state.is_head[:, k - 1, None].float()
            upstream.heads[k] = (
                masks[..., None] * chosen_head[:, None] * is_head[..., None]
            )
            upstream.skip[k] = masks * (1 - is_head)
        downstream = Gates(
            embedding={k: downstream_all[k] for k in range(layer, num_layers + 1)}
        )
        # Like the authors: heads and skip each get their own pair of passes.
        heads = node_influence(problem, sources, layer, "heads", upstream, downstream)
        skip = node_influence(problem, sources, layer, "skip", upstream, downstream)
        j = state.positions[:, layer]
        state.record_nodes(
            everyone,
            layer,
            heads[("heads", layer)][everyone, j],
            skip[("skip", layer)][everyone, j],
        )
        done(f"stage B layer {layer}")
    return state, g
