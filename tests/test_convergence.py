"""Every result of ``attribute`` reports its convergence (|delta| / |QoI(x) - QoI(x')|)
and flags, with the numbers, an integral that missed completeness by more than 5%."""

from __future__ import annotations

import warnings

import pytest
import torch

from captum_influence_patterns import InfluencePatterns, masked_lm_logit_difference
from captum_influence_patterns.convergence import ConvergenceWarning
from captum_influence_patterns.graph import analysis_mode
from captum_influence_patterns.testing import MASK_ID, agreement_batch, masked_lm


def _run(n_steps: int):
    model = masked_lm("bert")
    ids, args = agreement_batch(batch=1)
    forward = masked_lm_logit_difference(model)
    ip = InfluencePatterns(forward, model)
    result = ip.attribute(
        ids, baselines=MASK_ID, additional_forward_args=args, output_position=4,
        n_steps=n_steps, sources=[1],
    ).result
    # The QoI difference from two plain forward passes, not from the search.
    with analysis_mode(model), torch.no_grad():
        difference = float(forward(ids, *args)) - float(
            forward(torch.full_like(ids, MASK_ID), *args)
        )
    return result, difference


def test_an_unconverged_integral_is_flagged_with_its_numbers() -> None:
    with pytest.warns(ConvergenceWarning, match=r"example 0: .*NOT CONVERGED"):
        result, difference = _run(1)
    (entry,) = result.metadata["convergence"]
    delta = float(result.token_influence[0].sum()) - difference
    assert entry["qoi_difference"] == pytest.approx(difference, abs=1e-5)
    assert entry["relative"] == pytest.approx(abs(delta) / abs(difference), rel=1e-4)
    assert entry["relative"] > 0.05 and entry["converged"] is False


def test_a_converged_integral_is_reported_and_not_flagged() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result, difference = _run(64)
    (entry,) = result.metadata["convergence"]
    delta = float(result.token_influence[0].sum()) - difference
    assert entry["relative"] == pytest.approx(abs(delta) / abs(difference), rel=1e-3)
    assert entry["converged"] is True and entry["n_steps"] == 64
