"""A misused ``forward_func``, a stale ``AttributionRequest`` or an absurd ``n_steps``
gets one line naming the argument and the fix, before any attribution, with the model
left as it was: never a raw shape, index, autograd or overflow error."""

from __future__ import annotations

import pytest
import torch

from captum_influence_patterns import InfluencePatterns, masked_lm_logit_difference
from captum_influence_patterns.cli import main
from captum_influence_patterns.testing import (
    MASK_ID,
    ModelState,
    agreement_batch,
    agreement_keywords,
    attribution,
    masked_lm,
)

FAMILIES = ("bert", "gpt2")


def _refused(model, forward_func, message, error=ValueError, **overrides):
    ids, args = agreement_batch(batch=1)
    before = ModelState.of(model)
    ip = InfluencePatterns(forward_func, model)
    with pytest.raises(error, match=message):
        ip.attribute(ids, **agreement_keywords(args, **overrides))
    before.assert_unchanged(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_forward_func_that_micro_batches_is_refused(family):
    model = masked_lm(family)
    qoi = masked_lm_logit_difference(model)

    def micro_batched(ids, *args):
        return torch.cat([qoi(ids[k : k + 3], *args) for k in range(0, len(ids), 3)])

    _refused(model, micro_batched, "split its input into batches")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_forward_func_that_calls_the_word_embeddings_too_is_refused(family):
    model = masked_lm(family)
    qoi = masked_lm_logit_difference(model)

    def with_embeddings(ids, *args):
        norm = model.get_input_embeddings()(ids).norm()
        return qoi(ids, *args) + 0.0 * norm

    _refused(model, with_embeddings, "word-embedding module 2 times")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_forward_func_that_calls_a_layer_on_a_dummy_is_refused(family):
    model = masked_lm(family)
    qoi = masked_lm_logit_difference(model)
    base = model.base_model
    layer = base.encoder.layer[0] if family == "bert" else base.h[0]

    def with_dummy(ids, *args):
        layer(torch.zeros(1, 3, 24, dtype=torch.float64))
        return qoi(ids, *args)

    _refused(model, with_dummy, "called the model's layers outside")


def test_attribute_inside_forward_func_is_refused():
    model = masked_lm("bert")
    qoi = masked_lm_logit_difference(model)
    inner = {}

    def nested(ids, *args):
        if "ip" in inner:
            ids1, args1 = agreement_batch(batch=1)
            inner["ip"].attribute(ids1, **agreement_keywords(args1))
        return qoi(ids, *args)

    inner["ip"] = InfluencePatterns(qoi, model)
    _refused(model, nested, "inside itself", error=RuntimeError)


def test_a_request_for_a_larger_vocabulary_is_refused():
    big = masked_lm("bert", vocab_size=80)
    small = masked_lm("bert")  # 60 ids
    ids, args = agreement_batch(batch=1)
    ids[0, 0] = 70
    request = attribution(big).request(
        ids, MASK_ID, None, args, output_position=4, n_steps=4
    )
    with pytest.raises(ValueError, match="outside this model's vocabulary of 60"):
        attribution(small).search(request)


def test_a_request_edited_in_place_is_refused():
    model = masked_lm("bert")
    ip = attribution(model)
    ids, args = agreement_batch(batch=1)
    request = ip.request(ids, MASK_ID, None, args, output_position=4, n_steps=4)
    ids[0, 0] = 10**6
    with pytest.raises(ValueError, match="edited in place after it was built"):
        ip.search(request)
    with pytest.raises(ValueError, match="edited in place"):
        ip.score(request, [[]])


def test_too_many_steps_are_refused():
    model = masked_lm("bert")
    ids, args = agreement_batch(batch=1)
    with pytest.raises(ValueError, match="n_steps: at most 100000"):
        attribution(model).attribute(
            ids, **agreement_keywords(args, n_steps=99999999999999999999)
        )


def test_too_many_steps_on_the_command_line_exit_2(capsys, tmp_path):
    code = main(
        ["explain", "--n-steps", "99999999999999999999", "The keys [MASK] here.",
         "-o", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--n-steps: at most 100000" in err[0]
    assert not (tmp_path / "out").exists()
