"""The reference schedule: the authors' literal schedule, a fresh forward-mode and
reverse pass for every layer of stage A, and for the heads and for the skip of every
layer of stage B (:func:`..influence.node_influence`): 6L batched passes per source, the
authors' (6L - 2) plus stage A's last layer, which the reference reads to report
candidates. The fast schedule lives in :mod:`.fast`.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from ..graph.gating import Gates
from ..influence import ExampleProblem, node_influence, token_influence
from .state import SearchState, ignore_progress, one_hot_positions


def reference_search(
    problem: ExampleProblem,
    sources: Tensor,
    output_position: Optional[int],
    done: Callable[[str], None] = ignore_progress,
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
    reference_nodes(problem, sources, state, done)
    return state, g


def reference_nodes(
    problem: ExampleProblem,
    sources: Tensor,
    state: SearchState,
    done: Callable[[str], None] = ignore_progress,
) -> None:
    """Stage B with the literal per-layer schedule along the positions of ``state``
    (its choices and ``node_candidates`` filled in place)."""
    num_layers, num_positions = problem.graph.num_layers, problem.num_positions
    everyone = torch.arange(sources.shape[0], device=sources.device)
    at_route = {
        k: one_hot_positions(state.positions[:, k], num_positions)
        for k in range(1, num_layers + 1)
    }
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
