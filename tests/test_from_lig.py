"""The swap from Captum's LayerIntegratedGradients (docs/from_lig.md): the layer LIG
was given, LIG's return shapes and values, LIG's meaning of ``baselines=None``, and the
output position found from the QoI.

LIG itself is the known answer: Captum computes it with its own hooks on the layer,
through none of this library's machinery."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from captum.attr import LayerIntegratedGradients
from transformers import BertForSequenceClassification

from captum_influence_patterns import InfluencePatterns, InfluencePatternsResult
from captum_influence_patterns.results import Attributions, AttributionsAndDelta
from captum_influence_patterns.testing import (
    MASK_ID,
    ModelState,
    agreement_batch,
    assert_same_patterns,
    family_model,
    masked_lm,
)
from captum_influence_patterns.testing.models import VOCAB

STEPS = 8
#: Llama's RMSNorm computes in float32 even in a float64 model.
TOLERANCE = {"llama": dict(atol=1e-6, rtol=1e-5)}


def _classifier():
    model = family_model(
        "bert", model_class=BertForSequenceClassification, config={"num_labels": 2}
    )
    ids = torch.randint(5, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    types = torch.tensor([[0, 0, 0, 1, 1, 1]]).expand(2, -1)

    def predict(inputs, token_type_ids=None):
        return model(inputs, token_type_ids=token_type_ids).logits

    return model, predict, ids, types


@pytest.fixture(scope="module")
def classifier():
    return _classifier()


@pytest.mark.parametrize("layer_name", ["bert.embeddings", "bert.embeddings.word_embeddings"])
def test_attributions_and_delta_equal_lig_on_both_layers(classifier, layer_name):
    model, predict, ids, types = classifier
    layer = model.get_submodule(layer_name)
    keywords = dict(
        baselines=torch.full_like(ids, 3),
        target=1,
        additional_forward_args=(types,),
        n_steps=STEPS,
        return_convergence_delta=True,
    )
    expected, expected_delta = LayerIntegratedGradients(predict, layer).attribute(
        ids, **keywords
    )
    attributions, delta = InfluencePatterns(predict, model, layer=layer).attribute(
        ids, **keywords
    )
    assert attributions.shape == expected.shape == (2, 6, 24)
    assert float((attributions - expected).abs().max()) < 1e-6
    assert float((delta - expected_delta).abs().max()) < 1e-6
    assert attributions.output_positions == [0, 0]  # [CLS], through the pooler
    assert attributions.metadata["layer"] == layer_name


def test_the_two_layers_differ_as_in_lig(classifier):
    """The embedding block interpolates position and type embeddings too: another
    path, other numbers (so the layer must be the one LIG was given)."""
    model, predict, ids, types = classifier
    args = dict(baselines=3, target=1, additional_forward_args=(types,), n_steps=STEPS)
    block = InfluencePatterns(predict, model, layer=model.bert.embeddings)
    words = InfluencePatterns(predict, model)
    gap = block.attribute(ids, **args).sum(-1) - words.attribute(ids, **args).sum(-1)
    assert float(gap.abs().max()) > 1e-3


@pytest.mark.parametrize("family", ["gpt2", "llama", "distilbert", "albert", "electra"])
def test_every_interpolation_layer_equals_lig_and_its_patterns_are_exact(family):
    """LIG's values on every layer a family offers, with ``baselines=None``; on each,
    the fast search equals the reference schedule and the brute-force scores of its
    patterns."""
    model = family_model(family)
    ids = torch.randint(5, VOCAB, (1, 6), generator=torch.Generator().manual_seed(2))

    def last_logits(inputs):
        return model(inputs).logits[:, -1]

    layers = InfluencePatterns(last_logits, model).graph.interpolation_layers()
    assert len(layers) >= (1 if family == "llama" else 2)
    for name, layer in layers.items():
        expected = LayerIntegratedGradients(last_logits, layer).attribute(
            ids, target=1, n_steps=STEPS
        )
        ip = InfluencePatterns(last_logits, model, layer=layer)
        found = ip.attribute(ids, target=1, n_steps=STEPS)
        assert float((found - expected).abs().max()) < 1e-6, name
        assert found.output_positions == [5]
        reference = ip.attribute(ids, target=1, n_steps=STEPS, schedule="reference")
        tolerance = TOLERANCE.get(family, {})
        assert_same_patterns(found.result, reference.result, **tolerance)
        scored = ip.pattern_influence(ids, found.patterns, target=1, n_steps=STEPS)[0]
        reported = torch.tensor([p.influence for p in found.patterns[0]])
        torch.testing.assert_close(scored, reported.to(scored.dtype), **tolerance)


def test_gpt2_baselines_none_is_token_id_zero_and_says_so():
    model = family_model("gpt2")
    ids = torch.randint(5, VOCAB, (1, 5), generator=torch.Generator().manual_seed(3))

    def last_logits(inputs):
        return model(inputs).logits[:, -1]

    ip = InfluencePatterns(last_logits, model)
    none = ip.attribute(ids, target=2, n_steps=STEPS)
    zero = ip.attribute(ids, 0, target=2, n_steps=STEPS)
    expected = LayerIntegratedGradients(last_logits, model.transformer.wte).attribute(
        ids, target=2, n_steps=STEPS
    )
    assert torch.equal(none, zero)
    assert float((none - expected).abs().max()) < 1e-6
    assert none.metadata["baseline"].startswith("token id 0")
    assert "baseline: token id 0" in none.table(0).splitlines()[0]
    assert "baseline: token id 0 at every position" in zero.table(0).splitlines()[0]


def test_return_types_unpack_like_lig_and_keep_the_result(classifier):
    model, predict, ids, types = classifier
    ip = InfluencePatterns(predict, model, layer=model.bert.embeddings)
    args = dict(target=1, additional_forward_args=(types,), n_steps=STEPS)
    attributions = ip.attribute(ids, **args)
    assert type(attributions) is Attributions
    assert isinstance(attributions.result, InfluencePatternsResult)
    assert attributions.result.convergence_delta is None
    # operations give plain tensors; g is the sum over the layer's units
    assert type(attributions.sum(-1)) is torch.Tensor
    torch.testing.assert_close(attributions.sum(-1), attributions.token_influence)
    assert len(attributions.patterns[0]) == 6 and len(attributions) == 2
    assert "route" in str(attributions)
    pair = ip.attribute(ids, **args, return_convergence_delta=True)
    assert type(pair) is AttributionsAndDelta and len(pair) == 2
    found, delta = pair
    assert delta.shape == (2,) and delta is pair.convergence_delta
    assert pair.result is found.result and torch.equal(found, attributions)
    restored = InfluencePatternsResult.from_dict(pair.result.to_dict())
    assert_same_patterns(restored, found.result, atol=0, rtol=0)
    for copied in (copy.deepcopy(found), pickle.loads(pickle.dumps(pair))[0]):
        assert type(copied) is Attributions and torch.equal(copied, found)
        assert_same_patterns(copied.result, found.result, atol=0, rtol=0)


def test_output_position_inferred_or_asked_for():
    model = masked_lm("bert")
    ids, args = agreement_batch(batch=2)
    from captum_influence_patterns.testing import attribution

    found = attribution(model).attribute(ids, MASK_ID, None, args, n_steps=STEPS)
    assert found.output_positions == [4, 4]

    def pooled(inputs):
        return model(inputs).logits.mean(1)[:, 0]

    with pytest.raises(ValueError, match="output_position: the QoI of example 0 reads"):
        InfluencePatterns(pooled, model).attribute(ids, MASK_ID, n_steps=STEPS)
    given = InfluencePatterns(pooled, model).attribute(
        ids[:1], MASK_ID, n_steps=STEPS, output_position=None
    )
    assert given.output_positions == [None]


def test_bad_layer_and_lig_only_arguments_are_refused_before_any_work(classifier):
    model, predict, ids, types = classifier
    before = ModelState.of(model)
    with pytest.raises(ValueError, match="layer: .*model.bert.embeddings"):
        InfluencePatterns(predict, model, layer=model.bert.encoder.layer[0])
    with pytest.raises(TypeError, match="split_mlp: expected a bool"):
        InfluencePatterns(predict, model, model.bert.embeddings)
    ip = InfluencePatterns(predict, model, layer=model.bert.embeddings)
    with pytest.raises(ValueError, match="attribute_to_layer_input"):
        ip.attribute(ids, target=1, attribute_to_layer_input=True)
    ip.attribute(ids, target=1, additional_forward_args=(types,), n_steps=STEPS)
    before.assert_unchanged(model)  # the block's hooks are gone, the rest as it was


def test_optimality_refuses_a_result_of_another_layer():
    from captum_influence_patterns import masked_lm_logit_difference, optimality_test
    from captum_influence_patterns.testing import attribution

    model = masked_lm("bert")
    ids, args = agreement_batch(batch=1)
    result = attribution(model).attribute(ids, MASK_ID, None, args, n_steps=STEPS)
    block = InfluencePatterns(
        masked_lm_logit_difference(model), model, layer=model.bert.embeddings
    )
    with pytest.raises(ValueError, match="interpolated layer bert.embeddings.word"):
        optimality_test(
            block, block.request(ids, MASK_ID, None, args), result, n_random=2
        )


def test_compare_scores_every_method_on_the_given_layer(classifier):
    """The reference routes (conductance included) interpolate the same layer as the
    search, so the guided route's score equals its reported influence."""
    from captum_influence_patterns import compare

    model, predict, ids, types = classifier
    ip = InfluencePatterns(predict, model, layer=model.bert.embeddings)
    request = ip.request(
        ids[:1], baselines=3, target=1, additional_forward_args=(types[:1],),
        output_position=0, n_steps=STEPS,
    )
    comparison = compare(
        ip, request, sources=[[2]], methods=("conductance", "rollout")
    )
    found = ip.attribute(
        ids[:1], 3, 1, (types[:1],), n_steps=STEPS, sources=[[2]]
    ).patterns[0][0]
    record = comparison.records[0]
    assert record["guided"]["influence"] == pytest.approx(found.influence, rel=1e-9)
    assert record["token_influence"] == pytest.approx(found.token_influence, rel=1e-9)
