"""The graph is built once per model (issue 22 item 3) and never served stale: a
changed model, config or family gets a fresh graph; a caller's graph is its own."""

from __future__ import annotations

import copy
import gc
import weakref
from dataclasses import replace

import pytest

from captum_influence_patterns.graph import MODEL_FAMILIES, model_graph, register_family
from captum_influence_patterns.graph import cache
from captum_influence_patterns.graph.layouts import PostLNEncoderGraph
from captum_influence_patterns.testing import masked_lm


@pytest.fixture
def builds(monkeypatch):
    """The graphs built (not served from the cache) during the test."""
    built = []
    original = PostLNEncoderGraph.__init__

    def counted(self, *args, **kwargs):
        built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(PostLNEncoderGraph, "__init__", counted)
    return built


def _resolved(graph, model):
    """The modules a graph holds are the model's current ones."""
    layers = list(model.bert.encoder.layer)
    return (
        graph.model is model
        and graph.word_embeddings is model.bert.embeddings.word_embeddings
        and graph.embedding_output is model.bert.embeddings
        and len(graph.layers) == len(layers)
        and all(a is b for a, b in zip(graph.layers, layers))
        and all(
            a is layer.attention.self
            for a, layer in zip(graph.self_attentions, layers)
        )
        and graph.num_heads == model.config.num_attention_heads
    )


def test_built_once_per_model_and_split(builds):
    model = masked_lm("bert")
    first, second = model_graph(model), model_graph(model)
    assert len(builds) == 1
    assert _resolved(first, model) and _resolved(second, model)
    split = model_graph(model, split_mlp=True)
    assert split.split_mlp and not model_graph(model).split_mlp
    assert len(builds) == 2  # one per split_mlp


def test_a_callers_changes_stay_its_own(builds):
    model = masked_lm("bert")
    mine = model_graph(model)
    mine.split_mlp = True
    mine.layers.pop()
    theirs = model_graph(model)
    assert not theirs.split_mlp and _resolved(theirs, model)
    assert len(builds) == 1


def test_a_replaced_layer_or_attention_gets_a_fresh_graph(builds):
    model = masked_lm("bert")
    model_graph(model)
    layers = model.bert.encoder.layer
    layers[1] = copy.deepcopy(layers[0])
    assert _resolved(model_graph(model), model)
    layers[2].attention.self = copy.deepcopy(layers[2].attention.self)
    assert _resolved(model_graph(model), model)
    model.bert.encoder.layer = layers[:2]
    graph = model_graph(model)
    assert _resolved(graph, model) and graph.num_layers == 2
    assert len(builds) == 4


def test_a_changed_config_is_read_again_and_checked(builds):
    """The config is read again; a head count the modules do not compute with is
    refused (graph staleness: tests/test_graph_staleness.py)."""
    model = masked_lm("bert")
    assert model_graph(model).num_heads == 4
    model.config.num_attention_heads = 2
    with pytest.raises(ValueError, match="config.num_attention_heads is 2"):
        model_graph(model)
    for attention in model.modules():
        if hasattr(attention, "attention_head_size"):
            attention.num_attention_heads, attention.attention_head_size = 2, 12
    graph = model_graph(model)
    assert graph.num_heads == 2 and graph.head_size == 12
    assert len(builds) == 3


def test_switched_attention_is_served_the_models_modules():
    model = masked_lm("bert")
    model_graph(model)
    for implementation in ("sdpa", "eager"):
        model.set_attn_implementation(implementation)
        assert _resolved(model_graph(model), model)


def test_another_model_gets_its_own_graph(builds):
    one, other = masked_lm("bert"), masked_lm("bert", seed=1)
    assert _resolved(model_graph(one), one)
    assert _resolved(model_graph(other), other)
    assert len(builds) == 2


def test_a_reregistered_family_gets_a_fresh_graph(builds):
    model = masked_lm("bert")
    original = MODEL_FAMILIES["bert"]
    assert model_graph(model).spec is original
    changed = replace(original, embedding_output=("embeddings", "embeddings_project"))
    try:
        register_family(changed, overwrite=True)
        assert model_graph(model).spec is changed
    finally:
        register_family(original, overwrite=True)
    assert model_graph(model).spec is original
    assert len(builds) == 3


def test_the_cache_keeps_no_model_alive():
    model = masked_lm("bert")
    model_graph(model)
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None
    assert all(m is not None for m in cache._GRAPHS.keys())
