"""Beam routes: stage A keeps the ``width`` best route prefixes per layer
(docs/beam.md).

Greedy guided pattern refinement (:mod:`.search`) follows one position per layer. The
beam keeps, per source, the ``width`` best route prefixes ``j_0..j_l`` at every layer,
each scored by its exact prefix influence: the influence of ``x_i`` through the nodes
``h^1_{j_1} .. h^l_{j_l}`` with everything downstream open, which stage A maximises.
Every extension of every prefix is scored at once: one forward-mode pass under the
prefix's gates gives the tangents at every ``h^l_j``, and the open gradient
``dQoI/dh^l`` is shared by every prefix (one reverse pass per example).

At the last layer the complete routes are scored by ``I(pi^e)`` (with ``j_L`` fixed to
the output position when there is one); the best one, sign-adjusted like the greedy
choice, becomes the pattern and stage B runs on it. The others are kept on
:attr:`.results.Pattern.alternatives`.

- ``width=1`` is the greedy search: same choices, same tie rule (lowest position).
- ``width >= T^(L-1)`` keeps every prefix, so the beam is an exhaustive search over
  embedding-level routes.

Stage A costs one forward-mode pass per layer over ``width`` times the greedy rows,
each pass stopping at its layer (``L (L + 1) / 2`` layer evaluations); stage B is the
fast schedule's (:func:`.fast_search.fast_stage_b`), on the chosen route.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .fast_search import fast_stage_b
from .gating import Gates
from .influence import ExampleProblem, token_influence
from .results import Pattern
from .search import SearchState, ignore_progress, one_hot_positions, search_sign


@dataclass
class BeamState(SearchState):
    """A :class:`.search.SearchState` whose patterns carry the beam's other routes.

    ``alternatives[s]`` lists source s's other complete routes, best first, as
    ``{"positions": [j_0, ..., j_L], "embedding_influence": I(pi^e)}``.
    """

    alternatives: List[List[Dict[str, Any]]] = field(default_factory=list)

    def patterns(self, token_influence: Tensor) -> List[Pattern]:
        patterns = super().patterns(token_influence)
        for pattern, others in zip(patterns, self.alternatives):
            pattern.alternatives = others
        return patterns


@dataclass
class _Beams:
    """The kept route prefixes of every source, each source's best first."""

    owner: Tensor  # (G,) index of each prefix's source
    prefix: Tensor  # (G, l + 1) positions j_0..j_l
    history: Tensor  # (G, l, T) I(h^k_j) for every j, under the prefix j_0..j_{k-1}

    def gates(self, num_positions: int) -> Gates:
        """Upstream gates keeping each prefix's nodes (one group per prefix)."""
        layers = self.prefix.shape[1]
        return Gates(
            embedding={
                k: one_hot_positions(self.prefix[:, k], num_positions)
                for k in range(1, layers)
            }
        )

    def extend(self, influence: Tensor, adjusted: Tensor, width: int) -> "_Beams":
        """Keep the ``width`` best extensions (prefix, j) per source.

        ``influence`` (G, T) is ``I(h^l_j)`` under each prefix, ``adjusted`` the same
        sign-adjusted with forbidden extensions at ``-inf``. Ties go to the better
        prefix, then to the lowest position, as in the greedy search.
        """
        num_positions = influence.shape[1]
        parents, positions = [], []
        for s in range(int(self.owner.max()) + 1):
            rows = (self.owner == s).nonzero()[:, 0]
            flat = adjusted[rows].reshape(-1)
            order = torch.sort(flat, descending=True, stable=True).indices
            order = order[torch.isfinite(flat[order])][:width]
            parents.append(rows[order // num_positions])
            positions.append(order % num_positions)
        parent, j = torch.cat(parents), torch.cat(positions)
        return _Beams(
            owner=self.owner[parent],
            prefix=torch.cat([self.prefix[parent], j[:, None]], dim=1),
            history=torch.cat([self.history[parent], influence[parent, None]], dim=1),
        )


def _extension_influence(
    problem: ExampleProblem,
    sources: Tensor,
    beams: _Beams,
    layer: int,
    gradient: Tensor,
) -> Tensor:
    """(G, T) ``I(h^layer_j)`` under every prefix: forward-mode tangents under the
    prefix gates times the open gradient ``dQoI/dh^layer`` (n_steps, T, D)."""
    groups = beams.owner.shape[0]
    gates = beams.gates(problem.num_positions)
    group, step = problem.rows(groups)
    key = ("embedding", layer)
    total = problem.delta.new_zeros(groups, problem.num_positions)
    for chunk in problem.chunks(step.shape[0]):
        rows = (group[chunk], step[chunk])
        tangent = problem.tangents(
            rows[0], sources[beams.owner[rows[0]]], rows[1], gates, [key]
        )[key]
        products = (gradient[rows[1]] * tangent).sum(-1)
        total += problem.weighted_sum(products, *rows, groups)
    return total


def _allowed(
    beams: _Beams,
    layer: int,
    num_layers: int,
    num_positions: int,
    output_position: Optional[int],
    causal: bool,
) -> Tensor:
    """(G, T) which extensions the greedy search could choose: ``j_L`` is the output
    position when there is one; a causal route never moves backwards."""
    positions = torch.arange(num_positions, device=beams.prefix.device)
    if layer == num_layers and output_position is not None:
        allowed = positions == output_position
        return allowed.expand(beams.prefix.shape[0], -1)
    if causal:
        return positions[None] >= beams.prefix[:, -1:]
    return torch.ones(
        beams.prefix.shape[0], num_positions, dtype=torch.bool, device=positions.device
    )


def beam_stages(num_layers: int) -> int:
    """How often a beam search calls its ``done`` callback per example."""
    return num_layers + 3


def beam_search(
    width: int,
) -> Callable[..., Tuple[BeamState, Tensor]]:
    """The beam schedule of width ``width``, with the signature of
    :func:`.fast_search.fast_search`: ``search(problem, sources, output_position,
    done)`` returns a :class:`BeamState` and ``g`` for every position.

    ``done(stage)`` is called :func:`beam_stages` times per example.
    """

    def search(
        problem: ExampleProblem,
        sources: Tensor,
        output_position: Optional[int],
        done: Callable[[str], None] = ignore_progress,
    ) -> Tuple[BeamState, Tensor]:
        return _beam_search(problem, sources, output_position, width, done)

    return search


def _beam_search(
    problem: ExampleProblem,
    sources: Tensor,
    output_position: Optional[int],
    width: int,
    done: Callable[[str], None],
) -> Tuple[BeamState, Tensor]:
    num_layers, num_positions = problem.graph.num_layers, problem.num_positions
    g, gradients = token_influence(problem, range(1, num_layers + 1))
    done("token influence")
    count = sources.shape[0]
    beams = _Beams(
        owner=torch.arange(count, device=sources.device),
        prefix=sources[:, None].clone(),
        history=problem.delta.new_zeros(count, 0, num_positions),
    )
    sign = problem.delta.new_ones(count)
    for layer in range(1, num_layers + 1):
        influence = _extension_influence(
            problem, sources, beams, layer, gradients[layer]
        )
        if layer == 1:  # one prefix per source: the greedy sign rule
            sign = search_sign(influence)
        allowed = _allowed(
            beams,
            layer,
            num_layers,
            num_positions,
            output_position,
            problem.graph.is_causal,
        )
        adjusted = (sign[beams.owner, None] * influence).masked_fill(
            ~allowed, float("-inf")
        )
        beams = beams.extend(influence, adjusted, width)
        done(f"beam layer {layer}")
    state = BeamState.empty(problem, sources)
    best = torch.stack(
        [(beams.owner == s).nonzero()[0, 0] for s in range(count)]
    )  # each source's first kept route is its best
    state.sign = sign
    state.positions = beams.prefix[best].clone()
    state.position_candidates = beams.history[best].clone()
    state.alternatives = [
        [
            {
                "positions": beams.prefix[r].tolist(),
                "embedding_influence": float(beams.history[r, -1, beams.prefix[r, -1]]),
            }
            for r in (beams.owner == s).nonzero()[1:, 0].tolist()
        ]
        for s in range(count)
    ]
    fast_stage_b(problem, sources, state, gradients[num_layers], done)
    return state, g
