"""Contribution-based decompositions of one forward pass (docs/method.md, section 8.3):
the per-layer matrices behind the ``alti``, ``alti_logit``, ``attention_norm`` and
``information_flow`` routes and token scores.

Every layer's attention block is written as a sum of parts, one per (head, source
token) and one for the residual (the notation of Kobayashi et al. 2020 and Ferrando et
al. 2022):

    y_i = sum_j sum_h L_i(alpha^h_ij f^h(x_j)) + L_i(x_i) + L_i(b_O) + beta

with ``f^h(x_j) = W_O^h (W_V^h x_j + b_V^h)`` (GPT-2, Llama: ``x_j`` after the input
norm), ``L_i`` the linear part of the norm after the residual add in post-LN blocks
(``L_i(z) = gamma * (z - mean(z)) / sigma_i`` with ``sigma_i`` of the sum it normalises;
the identity in pre-LN blocks, where ``y_i`` is the residual stream after attention)
and ``beta`` its bias. The blocks' values are read by the row-wise schedule's recording
hooks (:func:`~.search.rowwise.recording.record_primals`) in one pass at the
input; the QoI's gradients come from the same pass.

Proximity (Ferrando et al. 2022, eq. 6; LLM-TT's ``get_contributions``):
``imp(z, y) = max(0, ||y||_1 - ||y - z||_1)`` (:func:`closeness`), normalised over
the parts of ``y``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..graph.gating import GatedPass
from ..influence import ExampleProblem
from ..search.rowwise.linearisation import LinearisedBlock
from ..search.rowwise.recording import record_primals, required_blocks
from .attention import rollout_matrices
from .finders import (
    NodeChoice,
    Route,
    RouteFinder,
    RouteQuery,
    best_route,
    mass_route,
    register_route_finder,
)

#: LLM-TT's default contribution threshold tau (its "Contribution threshold", also the
#: value Ferrando & Voita 2024 use).
INFORMATION_FLOW_THRESHOLD = 0.04
#: LLM-TT's floor on a part's proximity before normalising (``EPS``).
PROXIMITY_FLOOR = 1e-5
#: Largest relative error of a decomposition's sum against the model's own value.
_RECONSTRUCTION_TOLERANCE = 1e-4


@dataclass
class Contributions:
    """The decompositions of one example's forward pass at its input.

    Layer ``l`` is index ``l - 1``; ``i`` a query (receiving) position, ``j`` a key
    (source) position, ``h`` a head.

    Attributes:
        alti (Tensor): (L, T, T) ALTI's ``C^l[i, j]``: proximity of the token part
            ``T_i(x_j) = sum_h L_i(alpha^h_ij f^h(x_j)) + [i = j] L_i(x_i)`` to
            ``y_i``, clipped at 0, rows normalised (Ferrando et al. 2022, eq. 6-7).
        heads (Tensor): (L, T, T, A) LLM-TT's importance of each (head, token) part
            ``L_i(alpha^h_ij f^h(x_j))`` in ``y_i``, the residual ``L_i(x_i)`` being the
            one other part; floored at :data:`PROXIMITY_FLOOR` and normalised over
            all of them (Ferrando & Voita 2024, eq. 2).
        residual (Tensor): (L, T) the residual part's importance in the same sum.
        ffn (Tensor): (L, T, 2) importance of the MLP output and of the residual
            around it in ``h^l_i`` (both through the output norm's linear part in
            post-LN blocks), normalised.
        norms (Tensor): (L, T, T) Kobayashi et al.'s ``||sum_h alpha^h_ij f^h(x_j)||``.
        head_norms (Tensor): (L, T, T, A) ``||alpha^h_ij f^h(x_j)||``.
        residual_norms (Tensor): (L, T) ``||x_i||``.
        logit (Tensor): (L, T, A) ``Delta^l[j, h]``: the QoI's first-order change
            from head ``h``'s part of token ``j`` at the output position (ALTI-Logit's
            logit update, Ferrando et al. 2023).
        output_position (int): ``t``, the position ``logit`` is read at.
        input_gradient (Tensor): (T, D) ``dQoI/dx`` at the word embeddings.
        split_mlp (bool): Whether the graph splits the MLP off (routes then choose
            the MLP branch or the residual at every layer).
        attention (Tensor or None): (L, A, T, T) the attention weights of the pass.
    """

    alti: Tensor
    heads: Tensor
    residual: Tensor
    ffn: Tensor
    norms: Tensor
    head_norms: Tensor
    residual_norms: Tensor
    logit: Tensor
    output_position: int
    input_gradient: Tensor
    split_mlp: bool
    attention: Optional[Tensor] = None

    def alti_rollout(self) -> Tensor:
        """(L + 1, T, T) ``R^l = C^l ... C^1`` for l = 0..L (``R^0 = I``)."""
        eye = torch.eye(
            self.alti.shape[-1], dtype=self.alti.dtype, device=self.alti.device
        )
        rollouts = [eye]
        for matrix in self.alti:
            rollouts.append(matrix @ rollouts[-1])
        return torch.stack(rollouts)

    def alti_logit(self) -> Tensor:
        """(L, T, T) ALTI-Logit's terms ``Delta^l[j] R^{l-1}[j, s]``, indexed
        (l - 1, j, s); their sum over l and j is the token score of ``s``."""
        rollouts = self.alti_rollout()[:-1]
        return self.logit.sum(-1)[:, :, None] * rollouts


def closeness(parts: Tensor, whole: Tensor, floor: float = 0.0) -> Tensor:
    """``max(floor, ||y||_1 - ||y - z||_1)`` of each part ``z`` of ``y``: the
    proximity before it is normalised over the parts.

    Args:
        parts (Tensor): (..., D) the parts.
        whole (Tensor): (..., D) ``y``, broadcast against ``parts``.
        floor (float, optional): 0 for ALTI, :data:`PROXIMITY_FLOOR` for LLM-TT.
            Default: 0.0
    """
    distance = (whole - parts).abs_().sum(-1)
    return (whole.abs().sum(-1) - distance).clamp_min(floor)


def _share(values: Tensor, total: Tensor) -> Tensor:
    """``values / total`` (0 where the total is)."""
    return values / torch.where(total > 0, total, torch.ones_like(total))


#: A norm's linear part: (scale (T, 1), gamma (D,)), ``L(z) = gamma (z - mean) scale``.
_Linear = Tuple[Tensor, Tensor]


def _norm_linear(norm: nn.Module, summed: Tensor) -> _Linear:
    """The norm's linear part at each position as (scale (T, 1), gamma (D,)), with
    ``L(z) = gamma * (z - mean(z)) * scale``; and check ``norm`` is a LayerNorm."""
    if not isinstance(norm, nn.LayerNorm):
        raise ValueError(
            f"contributions: expected a LayerNorm after the residual add, got "
            f"{type(norm).__name__}"
        )
    variance = summed.var(-1, unbiased=False, keepdim=True)
    scale = torch.rsqrt(variance + norm.eps)
    gamma = norm.weight if norm.weight is not None else torch.ones_like(summed[0])
    return scale, gamma


def _apply_linear(z: Tensor, scale: Tensor, gamma: Tensor) -> Tensor:
    """``gamma * (z - mean(z)) * scale``, ``scale`` broadcast over leading dims."""
    return gamma * (z - z.mean(-1, keepdim=True)) * scale


class _Layer:
    """One layer application's named maps, read from the family's slots."""

    def __init__(self, block: LinearisedBlock) -> None:
        self.block = block
        if block.encoder:  # BertSelfOutput / BertOutput: dense, dropout, LayerNorm
            self.projection = block.part("attention_output").dense
            self.attention_norm = block.part("attention_output").LayerNorm
            self.output_dense = block.part("output").dense
            self.output_norm = block.part("output").LayerNorm
            self.post = True
        else:
            self.projection = block.part("output_projection")
            self.post = block.slots.norm == "post"
            self.attention_norm = block.part("attention_norm") if self.post else None
            self.output_norm = block.part("output_norm") if self.post else None

    def head_outputs(self, values: Tensor) -> Tuple[Tensor, Tensor]:
        """``f^h(x_j)`` (A, T, D) from the values (T, A, d), and ``b_O`` (D,): the
        projection applied to each head's slice alone."""
        heads, size = values.shape[1], values.shape[2]
        spread = values.new_zeros(heads, values.shape[0], heads * size)
        for h in range(heads):
            spread[h, :, h * size : (h + 1) * size] = values[:, h]
        bias = self.projection(values.new_zeros(heads * size))
        return self.projection(spread) - bias, bias

    def ffn(self, after: Tensor) -> Tuple[Tensor, Tensor, Tensor, Optional[_Linear]]:
        """The MLP part, the residual part and ``h^l`` (each (T, D)), and the output
        norm's linear part (post-LN; the parts are taken through it), else None."""
        branch = self.block.mlp_branch(after)
        if self.block.encoder:
            branch = self.output_dense(branch)
        if not self.post:
            return branch, after, after + branch, None
        summed = branch + after
        linear = _norm_linear(self.output_norm, summed)
        return (
            _apply_linear(branch, *linear),
            _apply_linear(after, *linear),
            self.output_norm(summed),
            linear,
        )


def example_contributions(
    problem: ExampleProblem, output_position: int
) -> Contributions:
    """The decompositions of ``problem``'s example at its input, from one forward
    and one reverse pass.

    Args:
        problem (ExampleProblem): The example (its model, QoI and input).
        output_position (int): ``t``: where the ALTI-Logit terms are read.

    Returns:
        Contributions: every layer's matrices (float64 where the model is).

    Raises:
        ValueError: where the model's attention cannot be decomposed (the cases the
            row-wise schedule refuses: relative positions, non-eager attention,
            unrecognised layers).
        RuntimeError: when a decomposition does not sum to the model's own value.
    """
    blocks = required_blocks(
        problem,
        who="the contribution routes",
        hooks_fix="remove them, or use the attention or conductance routes",
        fix="use the attention or conductance routes",
        hooks_argument="model",
    )
    graph = problem.graph
    inputs = (problem.baseline_embeds + problem.delta)[None].detach().requires_grad_()
    controller = GatedPass(inputs, torch.zeros(1, dtype=torch.long))
    with torch.enable_grad():
        qoi = record_primals(blocks, lambda: problem.run(controller, 1))
        hidden = [
            controller.values[("embedding", k)] for k in range(graph.num_layers + 1)
        ]
        wanted = [inputs] + hidden[1:]
        grads = torch.autograd.grad(qoi.sum(), wanted, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for w, g in zip(wanted, grads)]
    input_gradient, layer_gradients = grads[0][0], [g[0] for g in grads[1:]]
    last_gradient = layer_gradients[-1][output_position]
    layers: List[Tuple[Tensor, ...]] = []
    with torch.no_grad():
        attention = [block.attention_weights()[0] for block in blocks]
        for number, block in enumerate(blocks):
            layer = _Layer(block)
            outputs = hidden[number + 1][0].detach()
            readout = (
                layer_gradients[number][output_position]
                if layer.post
                else last_gradient
            )
            layers.append(
                _decompose(layer, attention[number], outputs, readout, output_position)
            )
    fields = [torch.stack(values) for values in zip(*layers)]
    return Contributions(
        *fields,
        output_position=output_position,
        input_gradient=input_gradient.detach(),
        split_mlp=graph.split_mlp,
        attention=torch.stack(attention),
    )


def _decompose(
    layer: _Layer, attention: Tensor, outputs: Tensor, readout: Tensor, t: int
) -> Tuple[Tensor, ...]:
    """One layer's fields of :class:`Contributions`, in their order, from its
    recorded values and its weights ``attention`` (A, T, T); ``outputs`` (T, D) is
    the model's ``h^l``, ``readout`` (D,) the QoI's gradient the ALTI-Logit terms
    are read with."""
    block = layer.block
    x = block.hidden[0]
    values = block.values[0].repeat_interleave(block.group, dim=-2)  # per query head
    f, bias = layer.head_outputs(values)  # (A, T, D), (D,)
    summed = torch.einsum("hij,hjd->id", attention, f) + bias + x  # the norm reads it
    if layer.post:  # L_i(alpha f) = alpha scale_i gamma (f - mean f): centre f once
        scale, gamma = _norm_linear(layer.attention_norm, summed)
        after = layer.attention_norm(summed)
        weights = attention * scale[:, 0][None, :, None]
        parts = torch.einsum(
            "hij,hjd->ijhd", weights, gamma * (f - f.mean(-1, keepdim=True))
        )
        residual = _apply_linear(x, scale, gamma)
    else:
        parts, residual = torch.einsum("hij,hjd->ijhd", attention, f), x
        after = summed
    whole = after  # y_i, biases included (Ferrando et al. 2022)
    tokens = parts.sum(2)  # T_i(x_j) (T, T, D), the residual added at j = i
    tokens.diagonal(dim1=0, dim2=1).add_(residual.T)
    alti = closeness(tokens, whole[:, None])
    alti = _share(alti, alti.sum(-1, keepdim=True))
    heads = closeness(parts, whole[:, None, None], PROXIMITY_FLOOR)  # (T, T, A)
    own = closeness(residual, whole, PROXIMITY_FLOOR)
    total = heads.sum((1, 2)) + own
    mlp, around, rebuilt, output_linear = layer.ffn(after)
    _check(rebuilt, outputs)
    ffn = closeness(torch.stack([mlp, around], 1), rebuilt[:, None], PROXIMITY_FLOOR)
    # ALTI-Logit: the attention parts at t carried to h^l (post-LN: through the
    # output norm's linear part), read by the QoI's gradient there.
    at_t = parts[t]  # (T, A, D)
    if output_linear is not None:
        at_t = _apply_linear(at_t, output_linear[0][t], output_linear[1])
    return (
        alti,
        _share(heads, total[:, None, None]),
        _share(own, total),
        _share(ffn, ffn.sum(-1, keepdim=True)),
        torch.einsum("hij,hjd->ijd", attention, f).norm(dim=-1),
        torch.einsum("hij,hj->ijh", attention, f.norm(dim=-1)),
        x.norm(dim=-1),
        at_t @ readout,
    )


def _check(rebuilt: Tensor, outputs: Tensor) -> None:
    """The decomposition's ``h^l`` must be the model's."""
    error = float((rebuilt - outputs).abs().max())
    scale = float(outputs.abs().max()) or 1.0
    if error > _RECONSTRUCTION_TOLERANCE * scale:
        raise RuntimeError(
            f"contributions: the decomposed layer differs from the model's output by "
            f"{error:.3g}; this model's blocks are not what the family's slots say"
        )


# ------------------------------------------------------------------- the route finders
def norm_matrices(contributions: Contributions) -> Tensor:
    """(L, T, T) attention-norm rollout's per-layer matrices: Kobayashi et al.'s
    norms, rows normalised, then Abnar & Zuidema's ``(N + I) / 2`` renormalised."""
    norms = contributions.norms
    shares = norms / norms.sum(-1, keepdim=True).clamp_min(1e-12)
    return rollout_matrices(shares[:, None])


def flow_matrices(contributions: Contributions, threshold: float) -> Tensor:
    """(L, T, T) the edge weights of Ferrando & Voita's graph a route multiplies:
    ``W^l[i, j] = E^l[i, j] F^l[i]``.

    ``E^l[i, j]`` is the attention edge from ``(l - 1, j)`` to ``(l, i)``: the sum
    over heads of the (head, token) importances, plus the residual's where ``i = j``
    (LLM-TT sums them into one edge), after LLM-TT's renormalising threshold (parts
    at or below ``threshold`` dropped, the rest renormalised), kept where above
    ``threshold``. ``F^l[i]`` is the larger kept edge of the feed-forward block at
    ``i`` (through the MLP or around it; both renormalised alike).
    """
    heads, residual, ffn = (
        contributions.heads, contributions.residual, contributions.ffn
    )
    heads = heads * (heads > threshold)
    residual = residual * (residual > threshold)
    total = (heads.sum((-1, -2)) + residual).clamp_min(1e-12)
    heads, residual = heads / total[..., None, None], residual / total
    eye = torch.eye(heads.shape[-2], dtype=heads.dtype, device=heads.device)
    edges = heads.sum(-1) + eye * residual[..., None]
    edges = edges * (edges > threshold)
    ffn = ffn * (ffn > threshold)
    ffn = ffn / ffn.sum(-1, keepdim=True).clamp_min(1e-12)
    kept = ffn * (ffn > threshold)
    return edges * kept.amax(-1)[..., None]


def route_choices(
    contributions: Contributions,
    positions: List[int],
    head_weights: Tensor,
    residual_weights: Tensor,
) -> List[NodeChoice]:
    """The node of each layer of a route: where it moves, the head with the largest
    weight on its edge; where it stays, that head if its weight exceeds the
    residual's, else the skip; with the MLP split off, the MLP branch where its
    importance exceeds the residual's around it, else the residual.

    Args:
        head_weights (Tensor): (L, T, T, A) per-head weights ``[l - 1, i, j, h]``.
        residual_weights (Tensor): (L, T) the residual's weight at each ``(l, i)``.
    """
    choices: List[NodeChoice] = []
    for layer in range(1, len(positions)):
        here, before = positions[layer], positions[layer - 1]
        weights = head_weights[layer - 1, here, before]
        head = int(weights.argmax())
        stays_on_skip = here == before and not bool(
            weights[head] > residual_weights[layer - 1, here]
        )
        ffn = None
        if contributions.split_mlp:
            mlp, around = contributions.ffn[layer - 1, here].tolist()
            ffn = "mlp" if mlp > around else "residual"
        choices.append((None if stays_on_skip else head, ffn))
    return choices


def _contributions(query: RouteQuery) -> Contributions:
    if query.contributions is None:
        raise ValueError("contribution routes: the query has no contributions")
    return query.contributions


def _alti_routes(spec: Any, query: RouteQuery) -> List[Route]:
    """ALTI rollout's route: :func:`~.finders.mass_route` on ``C^l``; score
    ``R^L[t, i]``; nodes by the (head, token) importances."""
    found = _contributions(query)
    routes = []
    for i in query.sources:
        route = mass_route(found.alti, i, query.output_position)
        nodes = route_choices(found, route.positions, found.heads, found.residual)
        routes.append(route._replace(nodes=nodes))
    return routes


def _norm_routes(spec: Any, query: RouteQuery) -> List[Route]:
    """Attention-norm rollout's route: :func:`~.finders.mass_route` on
    :func:`norm_matrices`; nodes by the per-head norms against ``||x_i||``."""
    found = _contributions(query)
    matrices = norm_matrices(found)
    routes = []
    for i in query.sources:
        route = mass_route(matrices, i, query.output_position)
        nodes = route_choices(
            found, route.positions, found.head_norms, found.residual_norms
        )
        routes.append(route._replace(nodes=nodes))
    return routes


def _alti_logit_routes(spec: Any, query: RouteQuery) -> List[Route]:
    """ALTI-Logit's route: the largest signed term ``Delta^l[j] R^{l-1}[j, i]``
    names a layer ``l*`` and a position ``j*``; the route follows ALTI's mass from
    ``i`` to ``j*`` over layers ``1 .. l* - 1``, moves to ``t`` at layer ``l*``
    through the head with the largest signed ``Delta^{l*}[j*, h]``, and stays at
    ``t`` through the skip after. Score: the ALTI-Logit token score of ``i``."""
    found = _contributions(query)
    terms = found.alti_logit()  # (L, T, T): [l - 1, j, s]
    t, num_layers = query.output_position, found.alti.shape[0]
    routes = []
    for i, sign in zip(query.sources, query.signs):
        signed = sign * terms[:, :, i]
        flat = int(signed.flatten().argmax())
        layer, middle = divmod(flat, signed.shape[1])  # layer = l* - 1
        prefix = mass_route(found.alti[:layer], i, middle) if layer else None
        positions = (prefix.positions if prefix else [i]) + [t] * (
            num_layers - layer
        )
        nodes = route_choices(found, positions, found.heads, found.residual)
        head = int((sign * found.logit[layer, middle]).argmax())
        nodes[layer] = (head, nodes[layer][1])
        nodes[layer + 1 :] = [(None, ffn) for _, ffn in nodes[layer + 1 :]]
        routes.append(Route(positions, float(terms[:, :, i].sum()), nodes))
    return routes


def _information_flow_routes(spec: Any, query: RouteQuery) -> List[Route]:
    """Ferrando & Voita's information flow route of each source: the path of
    largest product of edge weights from ``(0, i)`` to ``(L, t)`` in the graph
    thresholded at ``spec.threshold`` (:func:`flow_matrices`, by
    :func:`~.finders.best_route`), with the head or skip its edges give. A source
    the thresholded graph does not connect to the output gets the best path of the
    unthresholded graph (``tau = 0``) and the score 0."""
    found = _contributions(query)
    kept = flow_matrices(found, spec.threshold)
    everything = None
    routes = []
    for i in query.sources:
        route = best_route(kept, i, query.output_position)
        if route.score <= 0:
            if everything is None:  # every edge where attention reaches
                eye = torch.eye(kept.shape[-1], dtype=torch.bool, device=kept.device)
                everything = flow_matrices(found, 0.0) * ((found.norms > 0) | eye)
            route = best_route(everything, i, query.output_position)._replace(
                score=0.0
            )
        nodes = route_choices(found, route.positions, found.heads, found.residual)
        routes.append(route._replace(nodes=nodes))
    return routes


for _finder in (
    RouteFinder("alti", _alti_routes, contributions=True),
    RouteFinder("attention_norm", _norm_routes, contributions=True),
    RouteFinder("alti_logit", _alti_logit_routes, contributions=True),
    RouteFinder("information_flow", _information_flow_routes, contributions=True),
):
    register_route_finder(_finder)
