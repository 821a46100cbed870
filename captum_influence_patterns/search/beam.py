"""Beam routes: stage A keeps the ``width`` best route prefixes per layer
(docs/beam.md).

Greedy guided pattern refinement (:mod:`.search`) follows one position per layer. The
beam keeps, per source, the ``width`` best route prefixes ``j_0..j_l`` at every layer,
each scored by its exact prefix influence: the influence of ``x_i`` through the nodes
``h^1_{j_1} .. h^l_{j_l}`` with everything downstream open, which stage A maximises.
Every extension of every prefix is scored at once from the open gradients, which every
prefix shares (one reverse pass per example), like the fast schedule's stage A: at each
``h^l`` every extension is scored, the best ``width`` are kept, and each kept prefix
gets its parent's tangent restricted to its new position. Like the fast schedule, the
beam runs row by row where the row-wise schedule applies (:func:`rowwise_beam`: the
recorded primal pass shared by every prefix, each prefix's tangent at one position per
layer) and by forward-mode sweeps elsewhere (:func:`forward_mode_beam`: ``width``
tangents per source through the layers); both keep the same prefixes.

At the last layer the complete routes are scored by ``I(pi^e)`` (with ``j_L`` fixed to
the output position when there is one); the best one, sign-adjusted like the greedy
choice, becomes the pattern and stage B runs on it. The others are kept on
:attr:`.results.Pattern.alternatives`.

- ``width=1`` is the greedy search: same choices, same tie rule (lowest position).
- ``width >= T^(L-1)`` keeps every prefix, so the beam is an exhaustive search over
  embedding-level routes.

Stage A holds ``width`` times the greedy search's tangents; the rest is the fast
schedule's: the same reverse pass, and its stage B on the chosen route.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from ..graph import NodeController, StopForward
from ..graph.gating import tangent_of, with_tangent
from ..influence import ExampleProblem, token_influence
from ..results import Pattern
from .fast import rowwise_or_fallback
from .forward_mode import fast_stage_b, source_chunks
from .rowwise.driver import RecordedModel
from .rowwise.linearisation import LinearisedBlock
from .rowwise.recording import rowwise_blocks
from .state import (
    SearchState,
    check_finite,
    ignore_progress,
    one_hot_positions,
    search_sign,
)


@dataclass
class BeamState(SearchState):
    """A :class:`.search.state.SearchState` whose patterns carry the beam's other
    routes.

    ``alternatives[s]`` lists source s's other complete routes, best first, as
    ``{"positions": [j_0, ..., j_L], "embedding_influence": I(pi^e)}``.
    """

    alternatives: List[List[Dict[str, Any]]] = field(default_factory=list)

    def patterns(self, token_influence: Tensor) -> List[Pattern]:
        patterns = super().patterns(token_influence)
        for pattern, others in zip(patterns, self.alternatives):
            pattern.alternatives = others
        return patterns


class _Prefixes:
    """The beam over one chunk of sources, ``width`` prefixes each: what both
    schedules keep and choose alike.

    Prefix slots are source-major (slot ``s * width + b`` is source s's b-th best).
    A slot is live when it holds a prefix: at first only each source's slot 0 (the
    source itself); later fewer than ``width`` where fewer extensions are allowed.
    Dead slots carry zero tangents.
    """

    def __init__(
        self,
        problem: ExampleProblem,
        sources: Tensor,
        width: int,
        output_position: Optional[int],
    ) -> None:
        self.width = width
        self.num_layers = problem.graph.num_layers
        self.causal = problem.graph.is_causal
        self.output_position = output_position
        count = sources.shape[0]
        self.owner = torch.arange(count, device=sources.device).repeat_interleave(width)
        self.live = self.owner.new_zeros(count * width, dtype=torch.bool)
        self.live[::width] = True
        self.prefix = sources[self.owner][:, None]  # (slots, l + 1): j_0..j_l
        # (slots, l, T): I(h^k_j) for every j, under the prefix j_0..j_{k-1}
        self.history = problem.delta.new_zeros(count * width, 0, problem.num_positions)
        self.sign = problem.delta.new_ones(count)

    def extend(self, layer: int, influence: Tensor) -> Tuple[Tensor, Tensor]:
        """Keep the ``width`` best extensions per source of the prefixes, given
        ``influence`` (slots, T), ``I(h^layer_j)`` under each slot's prefix (anything
        at dead slots); returns each new slot's parent slot and position."""
        check_finite(influence[self.live], f"the beam's influence at layer {layer}")
        if layer == 1:  # one prefix per source: the greedy sign rule
            self.sign = search_sign(influence[:: self.width])
        adjusted = (self.sign[self.owner, None] * influence).masked_fill(
            ~self._allowed(layer), float("-inf")
        )
        parent, position, self.live = self._keep(adjusted)
        self.prefix = torch.cat([self.prefix[parent], position[:, None]], dim=1)
        self.history = torch.cat([self.history[parent], influence[parent, None]], dim=1)
        return parent, position

    def _allowed(self, layer: int) -> Tensor:
        """(slots, T): live prefixes, extended where the greedy search could go:
        ``j_L`` is the output position when there is one; a causal route never moves
        backwards."""
        positions = torch.arange(self.history.shape[-1], device=self.prefix.device)
        if layer == self.num_layers and self.output_position is not None:
            allowed = (positions == self.output_position)[None]
        elif self.causal:
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

    def store(self, state: "BeamState", index: Tensor) -> None:
        """Write the complete routes of the chunk's sources (``index`` in ``state``):
        the best as the chosen positions, the others as alternatives."""
        best = torch.arange(
            0, index.shape[0] * self.width, self.width, device=index.device
        )
        state.sign[index] = self.sign
        state.positions[index] = self.prefix[best]
        state.position_candidates[index] = self.history[best]
        state.alternatives.extend(self.alternatives())

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


class _BeamSweep(NodeController):
    """Stage A's forward-mode sweep over one chunk of sources, ``width`` prefixes
    each: rows are (slot, step) pairs, slot-major."""

    def __init__(
        self,
        problem: ExampleProblem,
        sources: Tensor,
        width: int,
        gradients: Dict[int, Tensor],
        output_position: Optional[int],
    ) -> None:
        self.problem = problem
        self.gradients = gradients
        self.beam = _Prefixes(problem, sources, width, output_position)
        self.group, self.step = problem.rows(sources.shape[0] * width)
        self.sources = sources

    def word_embeddings(self, output: Tensor) -> Tensor:
        return fwAD.make_dual(
            self.problem.interpolated(self.step),
            self.problem.source_tangent(self.sources[self.beam.owner[self.group]]),
        )

    def sweep(self) -> _Prefixes:
        with torch.no_grad(), fwAD.dual_level():
            self.problem.run(self, self.step.shape[0])
        return self.beam

    def embedding_node(self, layer: int, hidden: Tensor) -> Tensor:
        if layer == 0:
            return hidden
        tangent = tangent_of(hidden)
        products = (self.gradients[layer][self.step] * tangent).sum(-1)
        beam = self.beam
        influence = self.problem.weighted_sum(
            products, self.group, self.step, beam.owner.shape[0]
        )
        parent, position = beam.extend(layer, influence)
        if layer == self.problem.graph.num_layers:
            raise StopForward
        slots, (rows, length, size) = parent.shape[0], tangent.shape
        keep = one_hot_positions(position, length).to(tangent.dtype)
        keep = keep * beam.live[:, None].to(tangent.dtype)
        tangent = tangent.view(slots, -1, length, size)[parent] * keep[:, None, :, None]
        return with_tangent(hidden, tangent.view(rows, length, size))


def _rowwise_prefixes(
    recorded: RecordedModel,
    sources: Tensor,
    width: int,
    output_position: Optional[int],
) -> _Prefixes:
    """Stage A of the row-wise beam over one chunk of sources: each live prefix's
    tangent at its last position, scored at every position of the next layer (as the
    row-wise greedy stage A scores its one prefix) and carried to the kept
    extensions."""
    problem = recorded.problem
    beam = _Prefixes(problem, sources, width, output_position)
    live = beam.live.nonzero()[:, 0]
    d_hidden = recorded.source_tangents(beam.prefix[live, -1])
    for number, block in enumerate(recorded.blocks, start=1):
        tangent = block.tangent(beam.prefix[live, -1], d_hidden)
        influence = beam.history.new_zeros(beam.live.shape[0], problem.num_positions)
        influence[live] = block.open_influence(tangent, problem.weights)
        parent, position = beam.extend(number, influence)
        if number == len(recorded.blocks):
            break
        rank = torch.zeros_like(parent)  # a live slot's row in ``tangent``
        rank[live] = torch.arange(live.shape[0], device=live.device)
        live = beam.live.nonzero()[:, 0]
        query = position[live]
        kept = tangent.select(rank[parent[live]])
        d_hidden = block.carry(query, *block.context_tangent(kept, query))
    return beam


def beam_search(
    width: int,
) -> Callable[..., Tuple[BeamState, Tensor]]:
    """The beam schedule of width ``width``, with the signature of
    :func:`.search.fast.fast_search`: ``search(problem, sources, output_position,
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


def beam_schedule(
    problem: ExampleProblem,
    sources: Tensor,
    output_position: Optional[int],
    done: Callable[[str], None] = ignore_progress,
    *,
    beam_width: int,
) -> Tuple[BeamState, Tensor]:
    """The beam search of width ``beam_width`` (the search table's ``"beam"``): row by
    row where :func:`.search.fast.rowwise_supported`, else (and, with a warning,
    where the recorded attention turns out not to be weights @ values) by
    forward-mode sweeps; both keep the same prefixes."""
    return rowwise_or_fallback(
        problem,
        lambda blocks: rowwise_beam(
            problem, sources, output_position, done, beam_width=beam_width,
            blocks=blocks,
        ),
        lambda: forward_mode_beam(
            problem, sources, output_position, done, beam_width=beam_width
        ),
    )


def _width(problem: ExampleProblem, beam_width: int) -> int:
    # no layer has more candidate routes than T^L: wider slots would stay dead
    return min(beam_width, problem.num_positions**problem.graph.num_layers)


def rowwise_beam(
    problem: ExampleProblem,
    sources: Tensor,
    output_position: Optional[int],
    done: Callable[[str], None] = ignore_progress,
    *,
    beam_width: int,
    blocks: Optional[List[LinearisedBlock]] = None,
) -> Tuple[BeamState, Tensor]:
    """The beam on the row-wise schedule (:mod:`.search.rowwise`): the primal pass
    shared by every prefix, each prefix's tangent at one position per layer, every
    extension scored from the open gradients, then the row-wise stage B on the best
    route.
    Chunks of sources hold every prefix of their sources
    (:meth:`~.rowwise.driver.RecordedModel.chunks`). ``blocks``: ``problem``'s blocks where the caller built them already.

    Raises:
        ValueError: when :func:`.rowwise.recording.rowwise_blocks` is None for
            ``problem``.
        RowwiseMismatch: when the recorded attention is not weights @ values.
    """
    if blocks is None:
        blocks = rowwise_blocks(problem)
    if blocks is None:
        raise ValueError(
            "problem: the row-wise schedule does not apply to this model; use "
            "forward_mode_beam"
        )
    width = _width(problem, beam_width)
    with torch.no_grad():
        recorded = RecordedModel(problem, blocks)
        done("stage A gradients")
        state = BeamState.empty(problem, sources)
        for index in recorded.chunks(sources.shape[0], per=width):
            beam = _rowwise_prefixes(recorded, sources[index], width, output_position)
            beam.store(state, index)
        done("stage A tangents")
        for index in recorded.chunks(sources.shape[0]):
            recorded.stage_b(state, index)
        done("stage B gradients")
        done("stage B tangents")
    return state, recorded.token_influence


def forward_mode_beam(
    problem: ExampleProblem,
    sources: Tensor,
    output_position: Optional[int],
    done: Callable[[str], None] = ignore_progress,
    *,
    beam_width: int,
) -> Tuple[BeamState, Tensor]:
    """The beam on forward-mode sweeps (any family): whole sources per sweep, each
    with its ``width`` prefixes and every step (:func:`.forward_mode.source_chunks`),
    then the forward-mode stage B."""
    num_layers = problem.graph.num_layers
    width = _width(problem, beam_width)
    g, gradients = token_influence(problem, range(1, num_layers + 1))
    done("stage A gradients")
    state = BeamState.empty(problem, sources)
    for index in source_chunks(problem, sources.shape[0], per_source=width):
        beam = _BeamSweep(
            problem, sources[index], width, gradients, output_position
        ).sweep()
        beam.store(state, index)
    done("stage A tangents")
    fast_stage_b(problem, sources, state, gradients[num_layers], done)
    return state, g
