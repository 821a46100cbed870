"""routes/attention.py: attention matrices by hand, and captured from every family
with the model left as it was."""

from __future__ import annotations

import pytest
import torch

from captum_influence_patterns import masked_lm_logit_difference
from captum_influence_patterns.routes.attention import (
    attention_matrices,
    capture_attention,
)
from captum_influence_patterns.testing import FAMILIES, MORE_FAMILIES, masked_lm

CORRECT, WRONG = 10, 11  # as in conftest's routes_setting
OUTPUT = 4


def test_attention_matrices_by_hand():
    heads = torch.tensor([[[1.0, 0.0], [0.2, 0.8]], [[0.5, 0.5], [0.6, 0.4]]])[None]
    mean = attention_matrices(heads, "mean")
    assert torch.allclose(mean[0], torch.tensor([[0.75, 0.25], [0.4, 0.6]]))
    high = attention_matrices(heads, "max", normalize=True)
    assert torch.allclose(
        high[0], torch.tensor([[1 / 1.5, 0.5 / 1.5], [0.6 / 1.4, 0.8 / 1.4]])
    )
    mixed = attention_matrices(heads, "mean", residual=True)
    assert torch.allclose(mixed[0], torch.tensor([[0.875, 0.125], [0.2, 0.8]]))


@pytest.mark.parametrize("family", FAMILIES + MORE_FAMILIES)
def test_capture_attention_families(family):
    model = masked_lm(family).train()
    before = model.config._attn_implementation
    ids = torch.randint(5, 40, (2, 6))
    forward = masked_lm_logit_difference(model)
    attention = capture_attention(model, forward, ids, (OUTPUT, CORRECT, WRONG))
    assert attention.shape == (2, 3, 4, 6, 6)
    assert torch.allclose(
        attention.sum(-1), torch.ones(2, 3, 4, 6, dtype=torch.float64)
    )
    assert model.config._attn_implementation == before and model.training
    assert all(not (m._forward_hooks or m._forward_pre_hooks) for m in model.modules())
    model.eval().set_attn_implementation("eager")
    with torch.no_grad():
        expected = torch.stack(model(ids, output_attentions=True).attentions, dim=1)
    assert torch.allclose(attention, expected)


def test_capture_attention_restores_after_error():
    model = masked_lm("bert").train()
    before = model.config._attn_implementation

    def failing(input_ids):
        model(input_ids=input_ids)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        capture_attention(model, failing, torch.randint(5, 40, (1, 4)))
    assert model.config._attn_implementation == before and model.training
    assert all(not m._forward_hooks for m in model.modules())
