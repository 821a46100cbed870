"""convergence.py: every result of ``attribute`` reports its convergence (|delta| /
|QoI(x) - QoI(x')|) and flags, with the numbers, an integral that missed completeness
by more than 5%; ``attribute_converged`` doubles the steps until it converges, on the
tiny Llama GGUF (conftest's ``tiny_decoder``) and the tiny BERT checkpoint."""

from __future__ import annotations

import warnings

import pytest
import torch

from captum_influence_patterns import InfluencePatterns, masked_lm_logit_difference
from captum_influence_patterns.convergence import (
    ConvergenceError,
    ConvergenceWarning,
    attribute_converged,
    relative_delta,
)
from captum_influence_patterns.graph import analysis_mode
from captum_influence_patterns.models.explanation import explain, prepare_explanation
from captum_influence_patterns.models.loading import load_model
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


# ------------------------- doubling the steps until converged (the tiny Llama GGUF)
def _coarse(loaded, text, target, contrast, baseline=None, n_steps=2):
    explanation = prepare_explanation(loaded, text, target, contrast, baseline=baseline)
    ip = InfluencePatterns(explanation.forward_func, loaded.model)
    request = explanation.request(ip, n_steps=n_steps, method="riemann_right")
    return explanation, ip, request


class TestConvergence:
    def test_doubles_until_converged(self, tiny_decoder) -> None:
        explanation, ip, request = _coarse(tiny_decoder, "The keys", "are", "is")
        first = ip.search(request, return_convergence_delta=True)
        delta0 = float(first.convergence_delta[0])
        difference = float(first.token_influence[0].sum()) - delta0
        assert relative_delta(delta0, difference) > 0.05  # two right-Riemann steps
        result = attribute_converged(
            ip, request, tolerance=0.05, max_steps=512, sources=explanation.sources
        )
        (report,) = result.metadata["convergence"]
        steps = [int(n) for n, _ in report["tried"]]
        assert steps[0] == 2 and steps == [2 * 2**k for k in range(len(steps))]
        assert report["n_steps"] == steps[-1] == result.metadata["n_steps"]
        delta = float(result.convergence_delta[0])
        assert report["relative"] == pytest.approx(abs(delta) / abs(difference))
        assert report["converged"] and report["relative"] <= 0.05

    def test_flagged_or_refused_when_the_limit_is_reached(self, tiny_decoder) -> None:
        explanation, ip, request = _coarse(tiny_decoder, "The keys", "are", "is")
        with pytest.warns(ConvergenceWarning, match="NOT CONVERGED"):
            result = attribute_converged(ip, request, max_steps=4)
        (report,) = result.metadata["convergence"]
        assert not report["converged"] and report["n_steps"] == 2
        assert [int(n) for n, _ in report["tried"]] == [2, 4]
        with pytest.raises(ConvergenceError, match="unreliable"):
            attribute_converged(ip, request, max_steps=2, strict=True)

    def test_encoder_with_a_bad_baseline_gets_the_same_warning(
        self, class_checkpoints_paths
    ) -> None:
        loaded = load_model(class_checkpoints_paths["mlm"], dtype="float64")
        explanation = prepare_explanation(
            loaded, "the cat that the dogs see [MASK] old .", "is", "are",
            baseline="zero",
        )
        with pytest.warns(ConvergenceWarning, match="NOT CONVERGED"):
            result = explain(
                loaded, explanation, n_steps=2, max_steps=2, method="riemann_right",
                tolerance=1e-6,
            )
        assert not result.metadata["convergence"][0]["converged"]

    def test_bad_tolerance_refused_before_any_work(self, tiny_decoder) -> None:
        explanation, ip, request = _coarse(tiny_decoder, "The keys", "are", "is")
        for tolerance in (0, -0.1, 1.5, True):
            with pytest.raises(ValueError, match="tolerance"):
                attribute_converged(ip, request, tolerance=tolerance)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match="max_steps"):
                attribute_converged(ip, request, max_steps=0)


def test_records_convergence_and_the_report_section_by_hand() -> None:
    from captum_influence_patterns.convergence import records_convergence
    from captum_influence_patterns.paper.records import Summary
    from captum_influence_patterns.paper.report_sections import convergence_section

    def entry(steps, converged, relative):
        return dict(n_steps=steps, converged=converged, relative=relative)

    records = [
        dict(id="a", task="sva_pp", form="SS", prediction_correct=True, top2=False,
             convergence=entry(50, True, 0.01)),
        dict(id="b", task="sva_pp", form="SP", prediction_correct=False, top2=True,
             convergence=entry(400, False, 0.2)),
        dict(id="c", task="sva_pp", form="SP", prediction_correct=True, top2=True,
             convergence=entry(100, True, 0.04)),
        dict(id="old", task="sva_pp", form="PP", prediction_correct=True),
    ]
    summary = records_convergence(records)
    assert summary == {
        "n": 3, "without_check": 1, "converged": 2, "unconverged_ids": ["b"],
        "steps": {"50": 1, "100": 1, "400": 1}, "max_relative": 0.2,
    }
    text = "\n".join(convergence_section(Summary(convergence=summary)))
    assert "2 of 3 sentences converged" in text
    assert "**1 did not converge" in text and "(b)" in text
    assert convergence_section(Summary()) == []  # pages of records before the check
