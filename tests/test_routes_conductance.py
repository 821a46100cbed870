"""routes/conductance.py: the conductance route by hand, and layer conductance
(completeness, equal to Captum's LayerConductance layer by layer, bounded passes, the
authors' rule)."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerConductance

import captum_influence_patterns.influence as influence_module
import captum_influence_patterns.routes.conductance as conductance_module
from captum_influence_patterns import analysis_mode
from captum_influence_patterns.quadrature import IntegrationSettings
from captum_influence_patterns.routes.compare import compare
from captum_influence_patterns.routes.conductance import (
    conductance_route,
    layer_conductance,
)

MASK, OUTPUT = 3, 4  # conftest's routes_setting: [MASK] at position 4


def test_conductance_route_by_hand():
    conductance = torch.tensor([[0.1, -0.5, 0.3], [-0.2, 0.4, -0.6]])
    assert conductance_route(conductance, 0, 2).positions == [0, 2, 1, 2]
    negative = conductance_route(conductance, 0, 2, sign=-1)
    assert negative.positions == [0, 1, 2, 2] and negative.score == pytest.approx(-0.6)


def test_conductance_route_never_moves_backwards_under_causal_attention():
    # 3 layers, 3 positions, causal attention (each position attends to itself and
    # earlier ones); the conductance peaks at position 0 after the route reached 1,
    # which a causal route cannot go back to: it must stay at 1 or move on to 2
    causal = torch.tril(torch.ones(3, 3)) / torch.arange(1, 4)[:, None]
    attention = causal.expand(3, 2, 3, 3)
    conductance = torch.tensor([[0.0, 0.9, 0.1], [0.9, 0.2, 0.1]])
    assert conductance_route(conductance, 0, 2).positions == [0, 1, 0, 2]
    route = conductance_route(conductance, 0, 2, attention=attention)
    assert route.positions == [0, 1, 1, 2]
    # full attention allows every position: the same route as without attention
    full = torch.full((3, 2, 3, 3), 1 / 3)
    assert conductance_route(conductance, 0, 2, attention=full).positions == [0, 1, 0, 2]


def test_layer_conductance_completeness(routes_setting):
    """Conductance through each layer sums to the QoI change of its interpolation.

    Captum's LayerConductance differences the layer between consecutive points: it
    converges like a Riemann sum (about 1% off at 32 trapezoid steps on this model).
    """
    model, ip, ids, args, _ = routes_setting
    with analysis_mode(model):
        problem = ip.example_problem(
            ids, ids.new_full(ids.shape, MASK), None, args, 0, IntegrationSettings(32)
        )
        full = layer_conductance(problem, method="riemann_trapezoid")
        end, start = problem.endpoint_qoi()
        per_source = layer_conductance(problem, [1], method="riemann_trapezoid")
        change = _qoi(ip, ids[:1], args) - _qoi(ip, _swap(ids[:1], 1), args)
    assert full.shape == (1, 2, 6)
    expected = torch.full((1, 2), end - start, dtype=full.dtype)
    assert torch.allclose(full.sum(-1), expected, rtol=2e-2, atol=1e-6)
    assert torch.allclose(per_source.sum(-1), change.expand(1, 2), rtol=2e-2, atol=1e-6)


def _swap(ids, position):
    swapped = ids.clone()
    swapped[:, position] = MASK
    return swapped


def _qoi(ip, ids, args):
    with torch.no_grad():
        return ip.forward_func(ids, *[a[:1] for a in args])


@pytest.mark.parametrize("sources", [None, [1, 3]])
@pytest.mark.parametrize("internal_batch_size", [None, 7])
def test_layer_conductance_equals_captum_layer_by_layer(
    routes_setting, sources, internal_batch_size
):
    """One pass over every layer equals Captum's LayerConductance run layer by layer
    on a forward function written here from the model's own ``inputs_embeds`` (no
    library hook), in float64, with and without Captum's internal batching."""
    model, ip, ids, args, _ = routes_setting
    with analysis_mode(model):
        problem = ip.example_problem(
            ids, ids.new_full(ids.shape, MASK), None, args, 0, IntegrationSettings(8)
        )
        problem.internal_batch_size = internal_batch_size
        fast = layer_conductance(problem, sources)

    arguments = _source_interpolation(model, ids, sources, args)
    rows = len(arguments[0])
    expected = _captum_layer_by_layer(model, arguments, internal_batch_size)
    assert fast.dtype == torch.float64
    assert fast.shape == expected.shape == (rows, 2, ids.shape[1])
    assert torch.allclose(fast, expected, rtol=1e-10, atol=1e-12)


def test_layer_conductance_bounds_its_passes(routes_setting, monkeypatch):
    """Without internal_batch_size a problem too large for one pass is split into
    passes of a few steps (Captum's batching, one step shared between passes), and
    the values are those of one unbatched pass of Captum's LayerConductance."""
    model, ip, ids, args, _ = routes_setting
    calls = []
    original = conductance_module._LayersConductance._attribute

    def counted(self, *a, **k):
        calls.append(k.get("n_steps"))
        return original(self, *a, **k)

    monkeypatch.setattr(influence_module, "PASS_ELEMENTS", 1)
    monkeypatch.setattr(conductance_module._LayersConductance, "_attribute", counted)
    with analysis_mode(model):
        problem = ip.example_problem(
            ids, ids.new_full(ids.shape, MASK), None, args, 0, IntegrationSettings(8)
        )
        bounded = layer_conductance(problem, [1, 3])
    assert len(calls) == 8  # two points (one difference) per pass
    expected = _captum_layer_by_layer(
        model, _source_interpolation(model, ids, [1, 3], args), None
    )
    assert torch.allclose(bounded, expected, rtol=1e-10, atol=1e-12)


def _inputs_embeds_qoi(model):
    """The logit difference from word embeddings, through the model's own
    ``inputs_embeds`` (no library hook)."""

    def logit_difference(word_embeds, position, correct, wrong):
        logits = model(inputs_embeds=word_embeds).logits
        rows = torch.arange(len(logits))
        return logits[rows, position, correct] - logits[rows, position, wrong]

    return logit_difference


def _source_interpolation(model, ids, sources, args):
    """Example 0's word embeddings, baselines and QoI arguments: every token
    interpolated from [MASK] (``sources=None``) or one row per source."""
    embed = model.bert.embeddings.word_embeddings
    with torch.no_grad():
        inputs = embed(ids[:1])
        masked = embed(ids.new_full(ids[:1].shape, MASK))
    if sources is None:
        baselines = masked
    else:
        inputs = inputs.expand(len(sources), -1, -1)
        baselines = inputs.clone()
        baselines[range(len(sources)), sources] = masked[0, sources]
    return inputs, baselines, tuple(arg[:1].expand(len(inputs)) for arg in args)


def _captum_layer_by_layer(
    model, arguments, internal_batch_size, n_steps=8, method="gausslegendre"
):
    """Captum's ``LayerConductance`` of each layer below the last in turn, summed over
    hidden units, through :func:`_inputs_embeds_qoi`, with the model in eval mode
    (the fixture's model is built in train mode) and its mode restored after."""
    inputs, baselines, forward_args = arguments
    forward = _inputs_embeds_qoi(model)
    training = model.training
    model.eval()
    try:
        return torch.stack(
            [
                LayerConductance(forward, layer)
                .attribute(
                    inputs,
                    baselines=baselines,
                    additional_forward_args=forward_args,
                    n_steps=n_steps,
                    method=method,
                    internal_batch_size=internal_batch_size,
                )
                .sum(-1)
                for layer in model.bert.encoder.layer[:-1]
            ],
            dim=1,
        ).detach()
    finally:
        model.train(training)


def test_conductance_under_the_authors_rule(routes_setting):
    """``method="authors"`` (which Captum does not know) takes the authors' points,
    linspace(0, 1, n): compare runs the conductance routes, and the conductance is
    Captum's with the trapezoid rule's points, which are those points."""
    model, ip, ids, args, _ = routes_setting
    request = ip.request(
        ids, MASK, None, args, output_position=OUTPUT, n_steps=9, method="authors"
    )
    result = compare(ip, request, methods=["conductance"])
    assert [p.source for p in result.patterns[0]["conductance"]] == [0, 1, 2, 3, 5]
    with analysis_mode(model):
        problem = ip.example_problem(
            ids, ids.new_full(ids.shape, MASK), None, args, 0,
            IntegrationSettings(9, "authors"),
        )
        authors = layer_conductance(problem, [1], method="authors")
    expected = _captum_layer_by_layer(
        model,
        _source_interpolation(model, ids, [1], args),
        None,
        n_steps=9,
        method="riemann_trapezoid",
    )
    assert torch.allclose(authors, expected, rtol=1e-10, atol=1e-12)
