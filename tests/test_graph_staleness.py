"""The model is what it is at call time: an ``InfluencePatterns`` built before the
model's layers were reordered, replaced or added, or its config edited, gives the
changed model's exact answer or a clear refusal, never a stale graph's numbers.

The known answer is the oracle g of :func:`oracle_token_influence` (no hook of the
library), and the results of an object built after the change.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from captum_influence_patterns import InfluencePatterns, masked_lm_logit_difference
from captum_influence_patterns.testing import (
    agreement_batch,
    agreement_keywords,
    assert_same_patterns,
    masked_lm,
)
from captum_influence_patterns.testing.exactness import (
    float64_internals,
    oracle_token_influence,
)

STEPS = 4
TOL = dict(atol=1e-12, rtol=1e-9)


def _layers(model: nn.Module) -> nn.ModuleList:
    base = model.base_model
    return base.encoder.layer if hasattr(base, "encoder") else base.layers


def _set_layers(model: nn.Module, layers: nn.ModuleList) -> None:
    base = model.base_model
    if hasattr(base, "encoder"):
        base.encoder.layer = layers
    else:
        base.layers = layers


def _attribute(ip: InfluencePatterns, schedule: str):
    ids, args = agreement_batch(batch=1)
    keywords = agreement_keywords(args, STEPS, schedule=schedule, sources=[0, 1, 2, 3])
    return ip.attribute(ids, **keywords)


def _explainer(model: nn.Module) -> InfluencePatterns:
    return InfluencePatterns(masked_lm_logit_difference(model), model)


def _copy_layer(model: nn.Module, index: int, new_index: int) -> nn.Module:
    """A copy of layer ``index`` sharing the model's config (so that its attention
    setting is the model's), with the cache index of its new place."""
    layer = copy.deepcopy(_layers(model)[index], {id(model.config): model.config})
    for module in layer.modules():
        if hasattr(module, "layer_idx"):
            module.layer_idx = new_index
    return layer


def _reorder(model):
    layers = _layers(model)
    _set_layers(model, nn.ModuleList([layers[2], layers[0], layers[1]]))


def _replace(model):
    torch.manual_seed(5)
    layers = _layers(model)
    layers[1] = _copy_layer(model, 1, 1)
    with torch.no_grad():
        for parameter in layers[1].parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))


def _append(model):
    layers = _layers(model)
    layers.append(_copy_layer(model, 0, 3))
    model.config.num_hidden_layers = 4


CHANGES = {"reorder": _reorder, "replace": _replace, "append": _append}


@pytest.mark.parametrize("schedule", ["fast", "reference"])
@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_a_changed_model_gets_the_changed_models_answer(family, change, schedule):
    model = masked_lm(family)
    ip = _explainer(model)
    ids, args = agreement_batch(batch=1)
    with float64_internals():
        before = oracle_token_influence(model, ids, args, STEPS)
        _attribute(ip, schedule)  # the graph of the model as built
        CHANGES[change](model)
        expected = oracle_token_influence(model, ids, args, STEPS)
        assert (expected - before).abs().max() > 1e-6  # the change matters
        result = _attribute(ip, schedule)
        fresh = _attribute(_explainer(model), schedule)
    assert ip.graph.num_layers == len(_layers(model))
    torch.testing.assert_close(result.token_influence, expected, **TOL)
    assert_same_patterns(result, fresh)


def test_an_appended_layer_the_model_does_not_run_is_refused_naming_the_config():
    model = masked_lm("llama")  # runs layers[:config.num_hidden_layers]
    ip = _explainer(model)
    _layers(model).append(_copy_layer(model, 0, 3))
    with pytest.raises(ValueError, match=r"layers \[4\] did not run.*num_hidden_layers"):
        _attribute(ip, "fast")


@pytest.mark.parametrize("family", ["bert", "distilbert", "gpt2", "llama"])
def test_an_edited_head_count_is_refused_before_any_pass(family):
    model = masked_lm(family)
    ip = _explainer(model)
    setattr(model.config, "num_attention_heads", 2)
    if family == "llama":  # the config's head_dim was set from the old count
        model.config.head_dim = 12
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="config.num_attention_heads is 2"):
            _attribute(ip, "fast")
    finally:
        handle.remove()
    assert not calls  # refused before any pass


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_a_hook_added_after_construction_is_computed_through(family):
    """The hooks are read at each call: a hook put on after the object was built
    (and after a first call) gives the hooked model's g on every schedule."""
    model = masked_lm(family)
    ip = _explainer(model)
    _attribute(ip, "fast")
    layer = _layers(model)[1] if family == "bert" else model.base_model.h[1]
    handle = layer.register_forward_hook(
        lambda module, args, output: (1.5 * output[0], *output[1:])
        if isinstance(output, tuple)
        else 1.5 * output
    )
    try:
        ids, args = agreement_batch(batch=1)
        expected = oracle_token_influence(model, ids, args, STEPS)
        for schedule in ("fast", "reference"):
            result = _attribute(ip, schedule)
            torch.testing.assert_close(result.token_influence, expected, **TOL)
    finally:
        handle.remove()
