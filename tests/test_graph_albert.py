"""ALBERT as transformers runs it: the layer group of each application chosen by
``int(i / (L / G))`` (not ``i * G // L``: they differ at layer 9 of 18 layers in 14
groups), and a chunked feed-forward (``chunk_size_feed_forward``) whose MLP branch is
every chunk, with ``split_mlp``. The known answer is the oracle g through
``model(inputs_embeds=...)`` (no hook of the library)."""

from __future__ import annotations

import warnings

import pytest
import torch

from captum_influence_patterns.graph import model_graph
from captum_influence_patterns.testing import (
    agreement_batch,
    agreement_keywords,
    assert_same_patterns,
    attribution,
    family_model,
)
from captum_influence_patterns.testing.exactness import oracle_token_influence

TOL = dict(atol=1e-12, rtol=1e-9)
STEPS = 4


def _check_exact(model, split_mlp, length=7, reference=True, sources=None):
    """fast (with no fallback) == the oracle's g, == the reference schedule's
    patterns (where ``reference``), reported influences == brute force."""
    ids, args = agreement_batch(batch=1, length=length)
    keywords = agreement_keywords(args, n_steps=STEPS, sources=sources)
    ip = attribution(model, split_mlp=split_mlp)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback
        warnings.simplefilter("error", UserWarning)
        fast = ip.attribute(ids, **keywords)
    expected = oracle_token_influence(model, ids, args, STEPS)
    torch.testing.assert_close(fast.token_influence, expected, **TOL)
    if reference:
        slow = ip.attribute(ids, schedule="reference", **keywords)
        torch.testing.assert_close(slow.token_influence, expected, **TOL)
        assert_same_patterns(fast, slow, atol=1e-12, rtol=1e-9)
    level = "attention"
    brute = ip.pattern_influence(
        ids, fast.patterns, keywords["baselines"], None, args, n_steps=STEPS,
        level=level,
    )[0]
    reported = torch.tensor([p.influence for p in fast.patterns[0]], dtype=brute.dtype)
    torch.testing.assert_close(reported, brute, **TOL)


def test_the_group_of_each_layer_is_transformers_choice():
    model = family_model(
        "albert",
        weight_scale=4.0,
        num_hidden_layers=18,
        config=dict(num_hidden_groups=14, inner_group_num=1),
    )
    groups = model.albert.encoder.albert_layer_groups
    chosen = [int(i / (18 / 14)) for i in range(18)]
    assert chosen[9] == 6 and 9 * 14 // 18 == 7  # where the two rules differ
    graph = model_graph(model)
    assert [id(layer) for layer in graph.layers] == [
        id(groups[g].albert_layers[0]) for g in chosen
    ]
    # (18 layers: the reference schedule's per-layer passes would take long)
    _check_exact(model, split_mlp=False, reference=False, sources=[0, 2])


@pytest.mark.parametrize("split_mlp", [False, True])
def test_a_chunked_feed_forward_is_every_chunk(split_mlp):
    model = family_model("albert", config=dict(chunk_size_feed_forward=2))
    _check_exact(model, split_mlp, length=8)  # four chunks of two positions
