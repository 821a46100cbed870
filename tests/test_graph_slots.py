"""Adapters are checked where they can be wrong: a family registered with its query
and key slots swapped, or a wrong attention_output slot, is caught with the slot
named (``check_adapter``, the row-wise self-check, the hooks), and the fast schedule
falls back to the exact forward-mode one."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch

from captum_influence_patterns.graph import (
    MODEL_FAMILIES,
    UnsupportedModelError,
    register_family,
)
from captum_influence_patterns.search.rowwise.linearisation import RowwiseMismatch
from captum_influence_patterns.testing import (
    agreement_batch,
    agreement_keywords,
    assert_same_patterns,
    attribution,
    check_adapter,
    family_model,
    masked_lm,
)


@contextmanager
def registered(family: str, **slots):
    """``family`` registered with some block slots changed, for the block."""
    original = MODEL_FAMILIES[family]
    register_family(
        replace(original, block=replace(original.block, **slots)), overwrite=True
    )
    try:
        yield
    finally:
        register_family(original, overwrite=True)


SWAPPED = {
    "bert": dict(query="attention.self.key", key="attention.self.query"),
    "distilbert": dict(query="attention.k_lin", key="attention.q_lin"),
}


@pytest.mark.parametrize("family", list(SWAPPED))
def test_swapped_query_and_key_slots_are_named(family):
    model = family_model(family, weight_scale=4.0)
    with registered(family, **SWAPPED[family]):
        checks = check_adapter(model, n_steps=8, raise_on_failure=False)
        failed = [check for check in checks if not check.passed]
        assert [check.name for check in failed] == ["attention slots"]
        assert f"query slot {SWAPPED[family]['query']!r}" in str(failed[0])
        with pytest.raises(AssertionError, match="attention slots: FAILED.*key slot"):
            check_adapter(model, n_steps=8)


def test_swapped_slots_fall_back_to_the_exact_schedule_with_a_warning():
    model = masked_lm("bert")
    ids, args = agreement_batch(batch=1)
    keywords = agreement_keywords(args)
    reference = attribution(model).attribute(ids, schedule="reference", **keywords)
    with registered("bert", **SWAPPED["bert"]):
        ip = attribution(model)
        with pytest.warns(RuntimeWarning, match="query slot 'attention.self.key'"):
            fast = ip.attribute(ids, **keywords)
        with pytest.raises(RowwiseMismatch, match="key slot 'attention.self.query'"):
            ip.attribute(ids, schedule="row-wise", **keywords)
    assert_same_patterns(fast, reference, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize(
    "slot, message",
    [
        ("attention.self", "attention_output .*called with 1 argument"),
        ("output", "attention_output slot .* width 48"),
    ],
)
def test_a_wrong_attention_output_slot_is_named(slot, message):
    model = masked_lm("bert")
    ids, args = agreement_batch(batch=1)
    with registered("bert", attention_output=slot):
        with pytest.raises(UnsupportedModelError, match=message):
            attribution(model).attribute(ids, **agreement_keywords(args))
    # the model is left as it was: the family restored, a plain call works
    assert torch.isfinite(
        attribution(model).attribute(ids, **agreement_keywords(args)).token_influence
    ).all()
