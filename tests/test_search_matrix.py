"""Every family x every search x split_mlp: the same patterns as the reference
schedule, and every reported influence equal to its brute-force gated integrated
gradient."""

from __future__ import annotations

import functools

import pytest
import torch

from captum_influence_patterns import InfluencePatterns, masked_lm_logit_difference
from captum_influence_patterns.search import SEARCHES
from captum_influence_patterns.testing import (
    FAMILIES,
    MASK_ID,
    MORE_FAMILIES,
    agreement_batch,
    agreement_keywords,
    assert_same_patterns,
    masked_lm,
)

STEPS = 8
POST_LN = ("bert", "roberta", "electra")
#: Llama's logits are larger (RMSNorm, no dropout scaling): absolute tolerance.
TOLERANCE = {"llama": dict(atol=1e-5, rtol=0.0)}


@functools.lru_cache(maxsize=None)
def _model(family: str):
    return masked_lm(family)


def _attribute(family: str, split_mlp: bool, schedule: str):
    model = _model(family)
    ids, args = agreement_batch(batch=1)
    ip = InfluencePatterns(masked_lm_logit_difference(model), model, split_mlp=split_mlp)
    result = ip.attribute(ids, **agreement_keywords(args, STEPS, schedule=schedule))
    return ip, ids, args, result


@functools.lru_cache(maxsize=None)
def _reference(family: str, split_mlp: bool):
    return _attribute(family, split_mlp, "reference")[3]


@pytest.mark.parametrize("split_mlp", [False, True])
@pytest.mark.parametrize("schedule", sorted(set(SEARCHES) - {"reference"}))
@pytest.mark.parametrize("family", FAMILIES + MORE_FAMILIES)
def test_search_matches_reference_and_brute_force(family, schedule, split_mlp):
    if schedule == "row-wise" and family not in POST_LN:
        pytest.skip("the row-wise search needs a post-LN encoder")
    ip, ids, args, result = _attribute(family, split_mlp, schedule)
    tolerance = TOLERANCE.get(family, {})
    assert result.metadata["schedule"] == schedule
    assert result.metadata["split_mlp"] == split_mlp
    assert_same_patterns(result, _reference(family, split_mlp), **tolerance)
    (brute,) = ip.pattern_influence(
        ids, result.patterns, MASK_ID, None, args, n_steps=STEPS
    )
    reported = torch.tensor(
        [p.influence for p in result.patterns[0]], dtype=torch.float64
    )
    torch.testing.assert_close(brute, reported, **(tolerance or dict(atol=1e-12, rtol=1e-9)))
