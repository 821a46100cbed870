"""The row-wise searches: stage A, stage B and fixed routes on one recorded pass
(docs/method.md, section 7.2)."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from ...graph import NodeController, StopForward
from ...graph.gating import tangent_of
from ...graph.hooks import hooks_in_place
from ...influence import ExampleProblem, open_gradients
from ..state import SearchState, ignore_progress
from .linearisation import LinearisedBlock, at
from .recording import PrimalRecorder, required_blocks

# Most elements of one (sources, steps, positions, heads) tensor per chunk of sources
# (a memory cap; these tensors are small next to the recorded forward pass).
_ROWWISE_ELEMENTS = 1 << 22



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
        recorder = PrimalRecorder(blocks)
        count = len(blocks)
        read = [(name, k) for k in range(1, count + 1) for name in ("heads", "skip")]
        with hooks_in_place(recorder.hooks()):
            g, gradients = open_gradients(problem, [*read, ("embedding", count)])
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
        """Chunks of sources (or routes) whose (rows, steps, T, heads) tensors hold at
        most :data:`_ROWWISE_ELEMENTS` elements, and, when ``internal_batch_size`` is
        given, at most what that many rows of a full pass hold (T * L * D each, as
        :meth:`~..influence.ExampleProblem.rows_per_pass` counts them); ``per`` rows
        per source (a beam's prefixes)."""
        problem = self.problem
        positions = problem.num_positions
        budget = _ROWWISE_ELEMENTS
        if problem.internal_batch_size is not None:
            # A source's row here is one position wide, so it is not one of the
            # batch's full-sequence rows: counting it as one made a chunk of a
            # single source at ordinary batch sizes, hundreds of small passes.
            full_row = positions * len(self.blocks) * problem.delta.shape[-1]
            budget = min(budget, problem.internal_batch_size * full_row)
        per_source = problem.n_steps * positions * self.blocks[0].num_heads
        size = max(1, budget // per_source // per)
        device = problem.delta.device
        return [
            torch.arange(start, min(start + size, count), device=device)
            for start in range(0, count, size)
        ]

    def source_tangents(self, positions: Tensor) -> Tensor:
        """(S, steps, D) ``dh^0`` at each source's position for its own tangent."""
        return at(self.embedding_tangents, positions)

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
        cotangent = at(self.last_gradient, route[:, count])
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
        cotangent = at(self.last_gradient, positions[first, count])
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


def rowwise_search(
    problem: ExampleProblem,
    sources: Tensor,
    output_position: Optional[int],
    done: Callable[[str], None] = ignore_progress,
    *,
    blocks: Optional[List[LinearisedBlock]] = None,
) -> Tuple[SearchState, Tensor]:
    """The fast schedule row by row (see the module docstring).

    Same arguments and results as :func:`.forward_mode.forward_mode_search`; the
    chunk of sources per step is capped by ``internal_batch_size // n_steps`` when
    given. ``blocks``: ``problem``'s blocks where the caller built them already.

    Raises:
        ValueError: when :func:`~.recording.rowwise_blocks` is None for ``problem``.
        RowwiseMismatch: when the recorded attention is not weights @ values.
    """
    if blocks is None:
        blocks = required_blocks(
            problem,
            hooks_fix="use schedule='fast' or 'forward-mode' (or 'reference'), which "
            "run them where the model does",
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
        ValueError: when :func:`~.recording.rowwise_blocks` is None for ``problem``.
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
    blocks: List[LinearisedBlock],
    positions: Tensor,
    heads: Optional[Tensor],
    mlp: Optional[Tensor],
) -> Tensor:
    """Fixed routes' influences (R,) row by row on ``problem``'s row-wise ``blocks``
    (:func:`~.recording.rowwise_blocks`, built by the caller); see
    :func:`.search.fast.route_influence` for the contract."""
    with torch.no_grad():
        recorded = RecordedModel(problem, blocks)
        return recorded.routes(positions, heads, mlp, recorded.chunks)
