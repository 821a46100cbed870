"""Layer-based reference routes: Captum's layer conductance and the route that follows
it (docs/method.md, section 8)."""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from captum.attr import LayerConductance
from torch import Tensor

from ..utils._captum_compat import (
    approximation_parameters,
    compute_layer_gradients_and_eval,
    expand_additional_forward_args,
    expand_target,
    format_additional_forward_args,
    reshape_and_sum,
)
from ..graph import ModelGraph
from ..graph.hooks import Hook, hooks_in_place
from ..influence import ExampleProblem
from ..quadrature import AUTHORS, DEFAULT_METHOD, DEFAULT_N_STEPS
from ..search.state import choose_positions
from .finders import (
    Route,
    RouteFinder,
    RouteQuery,
    reachable,
    register_route_finder,
)


def _rows_per_pass(problem: ExampleProblem, rows: int) -> int:
    """Captum's ``internal_batch_size`` for ``rows`` interpolations: every step in one
    pass when it fits :meth:`.influence.ExampleProblem.rows_per_pass`, else as many
    steps as fit (at least the two that a difference needs)."""
    steps = problem.rows_per_pass() // rows
    return rows * min(problem.n_steps + 1, max(2, steps))


class _EmbeddingForward:
    """``forward(word_embeds, input_ids, *args)``: ``forward_func`` with the output of
    the interpolated layer (the word embeddings, or the ``layer`` given to
    ``InfluencePatterns``) replaced, so Captum can interpolate embeddings of a token-id
    model."""

    def __init__(self, graph: ModelGraph, forward_func: Callable) -> None:
        self.graph = graph
        self.forward_func = forward_func

    def __call__(self, word_embeds: Tensor, input_ids: Tensor, *args: Any) -> Any:
        interpolated = self.graph.interpolated
        with hooks_in_place([Hook(interpolated, lambda m, args, output: word_embeds)]):
            return self.forward_func(input_ids, *args)


class _LayersConductance(LayerConductance):
    """Captum's ``LayerConductance`` of several layers from one interpolation pass.

    ``LayerConductance`` takes one layer, so L - 1 layers cost L - 1 forward and
    backward passes over every step. The gradient toward each layer's output is the
    same whichever layers are hooked, so one pass with every layer hooked gives each
    layer's conductance by Captum's own formula (``_attribute`` below is Captum's with
    the layer replaced by a list). ``attribute`` and its internal batching are
    Captum's, unchanged; the result is a tuple with one tensor per layer.
    """

    def __init__(self, forward_func: Callable, layers: Sequence[torch.nn.Module]):
        super().__init__(forward_func, layers[0])
        self.layers = list(layers)

    def _attribute(  # type: ignore[override]
        self,
        inputs: Tuple[Tensor, ...],
        baselines: Tuple[Tensor, ...],
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = DEFAULT_N_STEPS,
        method: str = DEFAULT_METHOD,
        attribute_to_layer_input: bool = False,
        step_sizes_and_alphas: Optional[Tuple[List[float], List[float]]] = None,
        grad_kwargs: Optional[dict] = None,
    ) -> Tuple[Tensor, ...]:
        (inputs,), (baselines,) = inputs, baselines
        examples = inputs.shape[0]
        if step_sizes_and_alphas is None:
            alphas = approximation_parameters(method)[1](n_steps + 1)
        else:
            alphas = step_sizes_and_alphas[1]
        scaled = torch.cat(
            [baselines + alpha * (inputs - baselines) for alpha in alphas]
        ).requires_grad_()
        gradients, evals = compute_layer_gradients_and_eval(
            self.forward_func,
            self.layers,
            scaled,
            target_ind=expand_target(target, n_steps + 1),
            additional_forward_args=expand_additional_forward_args(
                format_additional_forward_args(additional_forward_args), n_steps + 1
            ),
        )
        return tuple(
            reshape_and_sum(
                (evaluated[examples:] - evaluated[:-examples])
                * gradient[:-examples],
                n_steps,
                examples,
                tuple(evaluated.shape[1:]),
            )
            for (gradient,), (evaluated,) in zip(gradients, evals)
        )


def layer_conductance(
    problem: ExampleProblem,
    sources: Optional[Sequence[int]] = None,
    method: str = DEFAULT_METHOD,
) -> Tensor:
    """Captum ``LayerConductance`` of each position at layers 1..L-1, summed over D.

    Args:
        problem (ExampleProblem): One example (its interpolation path, QoI,
            settings).
        sources (sequence of int, optional): Interpolate only each source's word
            embedding from the baseline (the others stay at the input), one row per
            source. None interpolates every position (Captum's usual setting): one row.
        method (str, optional): Captum approximation method, or ``"authors"``, whose
            points (``linspace(0, 1, n)``) are those of Captum's
            ``"riemann_trapezoid"``: conductance differences the layer between
            consecutive points and reads no weights. Default: ``gausslegendre``

    Without ``problem.internal_batch_size`` the steps are split into passes that
    keep memory bounded (:func:`_rows_per_pass`); the values are the same.

    Returns:
        Tensor: (rows, L - 1, T) conductance of ``h^l_j`` toward the QoI.
    """
    graph = problem.graph
    embeds = problem.baseline_embeds + problem.delta
    if sources is None:
        inputs, baselines = embeds[None], problem.baseline_embeds[None]
    else:
        index = torch.arange(len(sources), device=embeds.device)
        inputs = embeds.expand(len(sources), -1, -1)
        baselines = inputs.clone()
        baselines[index, list(sources)] = problem.baseline_embeds[list(sources)]
    rows = inputs.shape[0]
    args = (problem.input_ids.expand(rows, -1),) + tuple(
        (
            arg.expand(rows, *arg.shape[1:])
            if isinstance(arg, Tensor) and arg.dim()
            else arg
        )
        for arg in problem.additional_forward_args
    )
    layers = graph.layers[:-1]
    if not layers:
        return inputs.new_zeros(rows, 0, inputs.shape[1])
    values = _LayersConductance(
        _EmbeddingForward(graph, problem.forward_func), layers
    ).attribute(
        inputs,
        baselines=baselines,
        target=problem.target,
        additional_forward_args=args,
        n_steps=problem.n_steps,
        method="riemann_trapezoid" if method == AUTHORS else method,
        internal_batch_size=problem.internal_batch_size
        or _rows_per_pass(problem, rows),
    )
    if isinstance(values, Tensor):  # Captum unwraps a one-layer tuple
        values = (values,)
    return torch.stack([value.sum(-1) for value in values], dim=1).detach()


def conductance_route(
    conductance: Tensor,
    source: int,
    output_position: int,
    sign: int = 1,
    attention: Optional[Tensor] = None,
) -> Route:
    """At each layer 1..L-1 the position with the largest ``sign * conductance``.

    Args:
        conductance (Tensor): (L - 1, T) one row of :func:`layer_conductance`.
        sign (int, optional): -1 to follow the most negative conductance (as the guided
            search does when ``g < 0``). Default: 1
        attention (Tensor, optional): (L, A, T, T) attention probabilities: each
            layer then chooses among the positions that attend to the previous one
            and can still reach the output position (under causal attention a
            route never moves backwards; full attention allows every position).
            Default: None (every position)

    Returns:
        Route: positions, and the conductance at the last searched layer's position
        (nan for a one-layer model).
    """
    if attention is None:
        signs = conductance.new_full((conductance.shape[0],), float(sign))
        chosen = choose_positions(conductance, signs).tolist()
    else:
        edges = (attention.sum(1) > 0).to(conductance.dtype).cpu()  # (L, j_l, j_l-1)
        reach = reachable(edges, output_position)
        chosen, previous = [], source
        for row in range(conductance.shape[0]):
            allowed = (edges[row][:, previous] > 0) & reach[row]
            scores = (sign * conductance[row].cpu()).masked_fill(
                ~allowed, float("-inf")
            )
            previous = int(scores.argmax())
            chosen.append(previous)
    positions = [source] + chosen + [output_position]
    last = float(conductance[-1, chosen[-1]]) if chosen else math.nan
    return Route(positions, last)


def _conductance_routes(spec: Any, query: RouteQuery) -> List[Route]:
    """Per source, :func:`conductance_route` on its row of the conductance (the one
    row of every position, for ``"conductance_all"``)."""
    rows = query.conductance
    return [
        conductance_route(
            rows[s % rows.shape[0]], i, query.output_position, sign, query.attention
        )
        for s, (i, sign) in enumerate(zip(query.sources, query.signs))
    ]


for _finder in (
    RouteFinder("conductance", _conductance_routes, conductance="sources"),
    RouteFinder("conductance_all", _conductance_routes, conductance="positions"),
):
    register_route_finder(_finder)
