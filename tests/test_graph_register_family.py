"""register_family: a new family is one declarative entry, read by the hooks and by the
row-wise schedule alike; named slots are validated when the entry is written."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from captum_influence_patterns import (
    Family,
    analysis_mode,
    model_graph,
    register_family,
)
from captum_influence_patterns.search.fast import rowwise_supported
from captum_influence_patterns.graph import MODEL_FAMILIES
from captum_influence_patterns.search.rowwise.driver import rowwise_search
from captum_influence_patterns.search import reference_search
from captum_influence_patterns.testing import agreement_batch, masked_lm, problem


@pytest.fixture
def my_gpt2():
    """A GPT-2 under its own model_type, registered for the test only."""
    model = masked_lm("gpt2")
    model.config.model_type = "my_gpt2"
    yield model
    MODEL_FAMILIES.pop("my_gpt2", None)


def test_a_registered_family_is_searched_row_by_row_and_exactly(my_gpt2):
    with pytest.raises(ValueError, match="unsupported architecture 'my_gpt2'"):
        model_graph(my_gpt2)
    spec = register_family(replace(MODEL_FAMILIES["gpt2"], name="my_gpt2"))
    assert MODEL_FAMILIES["my_gpt2"] is spec
    ids, args = agreement_batch()
    example = problem(my_gpt2, ids, args, n_steps=3)
    assert example.graph.family == "my_gpt2"
    sources = torch.arange(5)
    with analysis_mode(my_gpt2):
        assert rowwise_supported(example)
        fast, g_fast = rowwise_search(example, sources, 4)
        reference, g_reference = reference_search(example, sources, 4)
    torch.testing.assert_close(g_fast, g_reference, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(
        fast.node_candidates, reference.node_candidates, atol=1e-12, rtol=1e-9
    )
    assert torch.equal(fast.positions, reference.positions)


def test_registering_twice_needs_overwrite(my_gpt2):
    register_family(replace(MODEL_FAMILIES["gpt2"], name="my_gpt2"))
    with pytest.raises(ValueError, match="^name: a family 'my_gpt2' is registered already; pass overwrite=True"):
        register_family(replace(MODEL_FAMILIES["gpt2"], name="my_gpt2"))
    causal_bert = replace(MODEL_FAMILIES["bert"], name="my_gpt2", is_causal=True)
    assert register_family(causal_bert, overwrite=True) is MODEL_FAMILIES["my_gpt2"]
    with pytest.raises(TypeError, match="^family: expected a Family, got dict"):
        register_family({"name": "my_gpt2"})


def test_a_wrong_slot_falls_back_to_the_forward_mode_schedule(my_gpt2):
    """Slots naming no submodule: the row-wise schedule does not apply."""
    block = replace(MODEL_FAMILIES["gpt2"].block, qkv="attn.no_such_projection")
    register_family(replace(MODEL_FAMILIES["gpt2"], name="my_gpt2", block=block))
    ids, args = agreement_batch()
    example = problem(my_gpt2, ids, args, n_steps=2)
    with analysis_mode(my_gpt2):
        assert not rowwise_supported(example)


@pytest.mark.parametrize(
    "slots, message",
    [
        (dict(norm="middle"), "^norm: 'post' or 'pre'"),
        (dict(qkv="attn.c_attn", query="q"), "^qkv: name either"),
        (dict(input_norm=None), "^input_norm: needed for norm='pre' only"),
        (dict(output_norm="ln_3"), "^output_norm: needed for norm='post' only"),
    ],
)
def test_inline_block_slots_are_checked(slots, message):
    with pytest.raises(ValueError, match=message):
        replace(MODEL_FAMILIES["gpt2"].block, **slots)  # dataclasses.replace: __init__ again
    assert isinstance(MODEL_FAMILIES["gpt2"], Family)
