"""Beam routes: stage A keeps the ``width`` best route prefixes per layer
(docs/beam.md).

Greedy guided pattern refinement (:mod:`.search`) follows one position per layer. The
beam keeps, per source, the ``width`` best route prefixes ``j_0..j_l`` at every layer,
each scored by its exact prefix influence: the influence of ``x_i`` through the nodes
``h^1_{j_1} .. h^l_{j_l}`` with everything downstream open, which stage A maximises.
Every extension of every prefix is scored at once: the open gradient ``dQoI/dh^l`` is
shared by every prefix (one reverse pass per example), and one forward-mode sweep
carries ``width`` tangents per source through the layers, like the fast schedule's
stage A: at each ``h^l`` the sweep scores every extension, keeps the best ``width``,
and hands each kept prefix its parent's tangent restricted to its new position.

At the last layer the complete routes are scored by ``I(pi^e)`` (with ``j_L`` fixed to
the output position when there is one); the best one, sign-adjusted like the greedy
choice, becomes the pattern and stage B runs on it. The others are kept on
:attr:`.results.Pattern.alternatives`.

- ``width=1`` is the greedy search: same choices, same tie rule (lowest position).
- ``width >= T^(L-1)`` keeps every prefix, so the beam is an exhaustive search over
  embedding-level routes.

Stage A's forward-mode sweep holds ``width`` times the greedy rows; the rest is the
fast schedule's: the same reverse pass, and its stage B
(:func:`.forward_mode.fast_stage_b`) on the chosen route.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from .forward_mode import fast_stage_b
from .gating import tangent_of, with_tangent
from .influence import ExampleProblem, token_influence
from .model_graph import NodeController, StopForward
from .results import Pattern
from .search import (
    SearchState,
    fast_stages,
    ignore_progress,
    one_hot_positions,
    register_search,
    search_sign,
)


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


class _BeamSweep(NodeController):
    """Stage A's forward-mode sweep over one chunk of sources, ``width`` prefixes each.

    Prefix slots are source-major (slot ``s * width + b`` is source s's b-th best);
    rows are (slot, step) pairs, slot-major. A slot is live when it holds a prefix:
    at first only each source's slot 0 (the source itself); later fewer than ``width``
    where fewer extensions are allowed. Dead slots carry zero tangents.
    """

    def __init__(
        self,
        problem: ExampleProblem,
        sources: Tensor,
        width: int,
        gradients: Dict[int, Tensor],
        output_position: Optional[int],
    ) -> None:
        self.problem = problem
        self.width = width
        self.gradients = gradients
        self.output_position = output_position
        count = sources.shape[0]
        self.owner = torch.arange(count, device=sources.device).repeat_interleave(width)
        self.group, self.step = problem.rows(count * width)
        self.sources = sources
        self.live = self.owner.new_zeros(count * width, dtype=torch.bool)
        self.live[::width] = True
        self.prefix = sources[self.owner][:, None]  # (slots, l + 1): j_0..j_l
        # (slots, l, T): I(h^k_j) for every j, under the prefix j_0..j_{k-1}
        self.history = problem.delta.new_zeros(count * width, 0, problem.num_positions)
        self.sign = problem.delta.new_ones(count)

    def word_embeddings(self, output: Tensor) -> Tensor:
        return fwAD.make_dual(
            self.problem.interpolated(self.step),
            self.problem.source_tangent(self.sources[self.owner[self.group]]),
        )

    def sweep(self) -> "_BeamSweep":
        with torch.no_grad(), fwAD.dual_level():
            self.problem.run(self, self.step.shape[0])
        return self

    def embedding_node(self, layer: int, hidden: Tensor) -> Tensor:
        if layer == 0:
            return hidden
        tangent = tangent_of(hidden)
        products = (self.gradients[layer][self.step] * tangent).sum(-1)
        influence = self.problem.weighted_sum(
            products, self.group, self.step, self.owner.shape[0]
        )
        if layer == 1:  # one prefix per source: the greedy sign rule
            self.sign = search_sign(influence[:: self.width])
        adjusted = (self.sign[self.owner, None] * influence).masked_fill(
            ~self._allowed(layer), float("-inf")
        )
        parent, position, self.live = self._keep(adjusted)
        self.prefix = torch.cat([self.prefix[parent], position[:, None]], dim=1)
        self.history = torch.cat([self.history[parent], influence[parent, None]], dim=1)
        if layer == self.problem.graph.num_layers:
            raise StopForward
        slots, (rows, length, size) = parent.shape[0], tangent.shape
        keep = one_hot_positions(position, length).to(tangent.dtype)
        keep = keep * self.live[:, None].to(tangent.dtype)
        tangent = tangent.view(slots, -1, length, size)[parent] * keep[:, None, :, None]
        return with_tangent(hidden, tangent.view(rows, length, size))

    def _allowed(self, layer: int) -> Tensor:
        """(slots, T): live prefixes, extended where the greedy search could go:
        ``j_L`` is the output position when there is one; a causal route never moves
        backwards."""
        positions = torch.arange(self.history.shape[-1], device=self.prefix.device)
        if layer == self.problem.graph.num_layers and self.output_position is not None:
            allowed = (positions == self.output_position)[None]
        elif self.problem.graph.is_causal:
            allowed = positions[None] >= self.prefix[:, -1:]
        else:
            allowed = positions[None] >= 0
        return allowed & self.live[:, None]

    def _keep(self, adjusted: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The ``width`` best extensions per source: (parent slot, position, live)
        for every new slot. Ties go to the better prefix, then to the lowest
        position, as in the greedy search."""
        slots, length = adjusted.shape
        flat = adjusted.view(-1, self.width * length)  # one row per source
        ranked = torch.sort(flat, dim=1, descending=True, stable=True)
        best = ranked.indices[:, : self.width].reshape(-1)
        live = torch.isfinite(ranked.values[:, : self.width]).reshape(-1)
        first_slot = self.owner * self.width
        parent = torch.where(live, first_slot + best // length, first_slot)
        return parent, best % length, live

    def alternatives(self) -> List[List[Dict[str, Any]]]:
        """Each source's live complete routes after its best, best first."""
        out = []
        for s in range(self.sign.shape[0]):
            slots = range(s * self.width + 1, (s + 1) * self.width)
            out.append(
                [
                    {
                        "positions": self.prefix[r].tolist(),
                        "embedding_influence": float(
                            self.history[r, -1, self.prefix[r, -1]]
                        ),
                    }
                    for r in slots
                    if self.live[r]
                ]
            )
        return out


def beam_search(
    width: int,
) -> Callable[..., Tuple[BeamState, Tensor]]:
    """The beam schedule of width ``width``, with the signature of
    :func:`.fast_search.fast_search`: ``search(problem, sources, output_position,
    done)`` returns a :class:`BeamState` and ``g`` for every position.

    ``done(stage)`` is called at the fast schedule's four stages.
    """

    def search(
        problem: ExampleProblem,
        sources: Tensor,
        output_position: Optional[int],
        done: Callable[[str], None] = ignore_progress,
    ) -> Tuple[BeamState, Tensor]:
        return beam_schedule(
            problem, sources, output_position, done, beam_width=width
        )

    return search


@register_search("beam", fast_stages, options=("beam_width",))
def beam_schedule(
    problem: ExampleProblem,
    sources: Tensor,
    output_position: Optional[int],
    done: Callable[[str], None] = ignore_progress,
    *,
    beam_width: int,
) -> Tuple[BeamState, Tensor]:
    """The beam search of width ``beam_width`` (the search table's ``"beam"``)."""
    num_layers = problem.graph.num_layers
    # no layer has more candidate routes than T^L: wider slots would stay dead
    width = min(beam_width, problem.num_positions**num_layers)
    g, gradients = token_influence(problem, range(1, num_layers + 1))
    done("stage A gradients")
    state = BeamState.empty(problem, sources)
    unit = width * problem.n_steps  # a source's prefixes and steps share a chunk
    for chunk in problem.chunks(sources.shape[0] * unit, unit=unit):
        index = torch.arange(
            chunk.start // unit, -(-chunk.stop // unit), device=sources.device
        )
        sweep = _BeamSweep(
            problem, sources[index], width, gradients, output_position
        ).sweep()
        best = index.new_tensor(range(0, index.shape[0] * width, width))
        state.sign[index] = sweep.sign
        state.positions[index] = sweep.prefix[best]
        state.position_candidates[index] = sweep.history[best]
        state.alternatives.extend(sweep.alternatives())
    done("stage A tangents")
    fast_stage_b(problem, sources, state, gradients[num_layers], done)
    return state, g
