"""The fast schedule of guided pattern refinement (docs/method.md, section 7): one
entry that dispatches between its two implementations, which choose alike.

- :mod:`.search.rowwise`, for every registered family in eval mode with eager attention:
  primal values recorded once, tangents and cotangents carried at one position per
  layer.
- :mod:`.forward_mode`, the fallback for what the row-wise schedule does not cover
  (relative positions, an attention it cannot read, training mode, an unrecognised
  layer): forward-mode passes over chunks of sources with in-hook choices.

:func:`route_influence` scores fixed routes with the same dispatch, and
:func:`example_route_influence` chooses its chunks.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar

from torch import Tensor

from ..influence import (
    ExampleProblem,
    gated_influence,
    pattern_influence,
    route_gates,
    route_tensors,
)
from ..quadrature import IntegrationSettings
from ..results import Level, Pattern
from .forward_mode import forward_mode_search
from .rowwise.driver import rowwise_routes, rowwise_search
from .rowwise.linearisation import LinearisedBlock, RowwiseMismatch
from .rowwise.recording import rowwise_blocks
from .state import SearchState, ignore_progress

Result = TypeVar("Result")
#: Routes per chunk of the row-wise route scorer by default: its (routes x steps x T x
#: heads) tensors stay small (about 100 MB at BERT size), the shared primal pass is
#: not repeated per chunk, and a chunk's routes share prefixes and positions.
ROUTES_PER_CHUNK = 256


def rowwise_supported(problem: ExampleProblem) -> bool:
    """Whether :func:`fast_search` and :func:`route_influence` take the row-wise
    schedule for ``problem``: a registered family in eval mode with eager,
    absolute-position or rotary self-attention and recognised layers."""
    return rowwise_blocks(problem) is not None


def rowwise_or_fallback(
    problem: ExampleProblem,
    rowwise: Callable[[List[LinearisedBlock]], Result],
    fallback: Callable[[], Result],
    blocks: Optional[List[LinearisedBlock]] = None,
) -> Result:
    """``rowwise(blocks)`` where :func:`rowwise_supported`, else ``fallback()``; also
    ``fallback()``, with a warning, where the recorded attention turns out not to be
    weights @ values (:class:`.rowwise.linearisation.RowwiseMismatch`). The blocks
    are built here once (or given: a caller that built them already), and the
    row-wise side runs on them."""
    if blocks is None:
        blocks = rowwise_blocks(problem)
    if blocks is not None:
        try:
            return rowwise(blocks)
        except RowwiseMismatch as error:
            warnings.warn(
                f"{error}; falling back to the forward-mode schedule", RuntimeWarning, 2
            )
    return fallback()


def fast_search(
    problem: ExampleProblem,
    sources: Tensor,
    output_position: Optional[int],
    done: Callable[[str], None] = ignore_progress,
) -> Tuple[SearchState, Tensor]:
    """Both stages with the fast schedule. Returns the state and g for every position.

    Row by row where :func:`rowwise_supported`, else (and, with a warning, where the
    recorded attention turns out not to be weights @ values) by forward-mode passes;
    both choose alike. ``done(stage)`` is called after each of the
    :func:`.search.table.fast_stages` (progress bars).
    """
    return rowwise_or_fallback(
        problem,
        lambda blocks: rowwise_search(
            problem, sources, output_position, done, blocks=blocks
        ),
        lambda: forward_mode_search(problem, sources, output_position, done),
    )


def route_influence(
    problem: ExampleProblem,
    positions: Tensor,
    heads: Optional[Tensor] = None,
    mlp: Optional[Tensor] = None,
    *,
    blocks: Optional[List[LinearisedBlock]] = None,
) -> Tensor:
    """Influence ``I(pi)`` of fixed routes, batched over routes on one shared primal
    pass (docs/method.md, eq. 7.11-7.12).

    Each route keeps ``h^l`` at ``j_l`` only. Without ``heads`` that is the
    embedding-level route ``pi^e`` (every head and the skip at ``j_l`` kept); with
    ``heads`` the attention-level route ``pi^a`` (only the chosen node at ``j_l``),
    and in split graphs with ``mlp`` also only the MLP branch or the residual around
    it. The values equal :func:`.influence.pattern_influence` of the same patterns at
    ``level="embedding"`` or ``"attention"``.

    Where :func:`rowwise_supported` holds, one open reverse pass records every layer's
    primal values and each route's tangent is carried at one position per layer, so
    memory grows with the number of routes only through one-position rows (chunked
    by :meth:`~.rowwise.driver.RecordedModel.chunks`). Elsewhere the routes
    are scored by gated reverse passes (:func:`.influence.gated_influence`): the same
    values at the cost of one dense pass per route. Call it inside
    :func:`~.graph.session.analysis_mode`.

    Args:
        problem (ExampleProblem): The example.
        positions (Tensor): (R, L + 1) long, ``j_0 .. j_L`` per route; ``j_0`` is the
            source.
        heads (Tensor, optional): (R, L) long, per layer the head kept at ``j_l``, or
            -1 for the skip. Default: None (embedding level)
        mlp (Tensor, optional): (R, L) bool, only with ``heads`` and a graph built with
            ``split_mlp``: True keeps the MLP branch at ``j_l``, False the residual.
            Default: None (both kept)
        blocks (list of LinearisedBlock, optional): ``problem``'s row-wise blocks,
            where the caller built them already (:func:`rowwise_or_fallback`).
            Default: None (built here)

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

    def gated() -> Tensor:
        gates = route_gates(
            positions, problem.num_positions, problem.graph.num_heads, heads, mlp
        )
        return gated_influence(problem, positions[:, 0], gates)

    return rowwise_or_fallback(
        problem,
        lambda built: rowwise_routes(problem, built, positions, heads, mlp),
        gated,
        blocks,
    )


def example_route_influence(
    problem_of: Callable[[IntegrationSettings], ExampleProblem],
    settings: IntegrationSettings,
    patterns: Sequence[Pattern],
    level: Level,
    schedule: str,
) -> Tensor:
    """One example's route influences (:meth:`~..attribution.InfluencePatterns.score`):
    ``problem_of(settings)`` is the example's problem under ``settings``, ``schedule``
    ``"reference"`` (gated reverse passes) or ``"fast"`` (:func:`route_influence`
    where the row-wise schedule applies). Unless ``internal_batch_size`` is given,
    the row-wise scorer takes :data:`ROUTES_PER_CHUNK` routes at a time, and gated
    reverse passes run in chunks of ``T x n_steps`` rows, fewer where
    :meth:`..influence.ExampleProblem.rows_per_pass` says so (one pass over every
    route would hold routes x n_steps rows of activations)."""
    problem = problem_of(settings)

    def chunked(rows: int) -> ExampleProblem:
        if settings.internal_batch_size is not None:
            return problem
        return problem_of(replace(settings, internal_batch_size=rows))

    def rowwise(blocks: List[LinearisedBlock]) -> Tensor:
        routes = chunked(ROUTES_PER_CHUNK * settings.n_steps)  # one-position rows
        tensors = route_tensors(patterns, level, routes.delta.device)
        return route_influence(routes, *tensors, blocks=blocks)

    def gated() -> Tensor:
        rows = min(problem.num_positions * settings.n_steps, problem.rows_per_pass())
        return pattern_influence(chunked(rows), patterns, level)

    if schedule == "fast" and patterns:
        return rowwise_or_fallback(problem, rowwise, gated)
    return gated()
