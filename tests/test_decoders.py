"""Decoder QoIs a user cannot get wrong, and convergence checked on every family: on the
tiny Llama GGUF written by the tests (a byte-level BPE where " are" and " is" are one
token each) and the tiny BERT checkpoint."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("gguf")

from captum_influence_patterns import InfluencePatterns  # noqa: E402
from captum_influence_patterns.convergence import (  # noqa: E402
    ConvergenceError,
    ConvergenceWarning,
    attribute_converged,
    relative_delta,
)
from captum_influence_patterns.paper.lm_prefixes import (  # noqa: E402
    model_accuracy,
    to_prefix,
)
from captum_influence_patterns.models.explanation import (  # noqa: E402
    explain,
    prepare_explanation,
)
from captum_influence_patterns.models.gguf import CACHE_ENV  # noqa: E402
from captum_influence_patterns.models.loading import load_model  # noqa: E402
from captum_influence_patterns.models.qoi_kinds import ExplanationError  # noqa: E402
from captum_influence_patterns.testing.gguf_files import write_tiny_gguf  # noqa: E402


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(root / "cache"))
        path = str(root / "tiny.gguf")
        write_tiny_gguf(path)
        loaded = load_model(path, dtype="float64")
    return loaded


def _vocab_id(loaded, token: str) -> int:
    return int(loaded.tokenizer.convert_tokens_to_ids(token))


class TestDecoderQoI:
    def test_words_resolve_to_the_spaced_tokens(self, tiny_decoder) -> None:
        explanation = prepare_explanation(tiny_decoder, "The keys", "are", "is")
        are, is_ = _vocab_id(tiny_decoder, "Ġare"), _vocab_id(tiny_decoder, "Ġis")
        assert explanation.extra["target_id"] == are
        assert explanation.extra["contrast_id"] == is_
        # the unspaced token exists too ("a" "re" merge): the QoI must not use it
        assert _vocab_id(tiny_decoder, "are") != are
        assert f"tokens 'Ġare' (id {are}) and 'Ġis' (id {is_})" in explanation.qoi

    def test_multi_token_word_refused_with_the_reason(self, tiny_decoder) -> None:
        with pytest.raises(ExplanationError, match=r"is \d+ tokens after this text"):
            prepare_explanation(tiny_decoder, "The keys", "cabinet", "is")

    def test_neutral_baseline_keeps_the_bos(self, tiny_decoder) -> None:
        explanation = prepare_explanation(tiny_decoder, "The keys", "are", "is")
        space = _vocab_id(tiny_decoder, "Ġ")
        assert explanation.baseline == "neutral"
        assert explanation.input_ids[0].tolist() == [1, 270, 269]  # BOS The Ġkeys
        assert explanation.baselines[0].tolist() == [1, space, space]
        assert explanation.sources == [1, 2]
        assert "kept at position 0" in explanation.baseline_note
        assert explanation.describe()["baseline_id"] == [[1, space, space]]

    def test_neutral_baseline_refused_for_encoders(self, class_checkpoints_paths):
        loaded = load_model(class_checkpoints_paths["mlm"])
        with pytest.raises(ExplanationError, match="decoders' baseline"):
            prepare_explanation(
                loaded, "the cat [MASK] old .", "is", "are", baseline="neutral"
            )

    def test_completeness_against_plain_forward_passes(self, tiny_decoder) -> None:
        explanation = prepare_explanation(tiny_decoder, "The keys", "are", "is")
        result = explain(tiny_decoder, explanation, n_steps=50)
        # the QoI difference from two plain forward passes, not the library's hooks
        forward, args = explanation.forward_func, explanation.additional_forward_args
        with torch.no_grad():
            difference = float(forward(explanation.input_ids, *args)) - float(
                forward(explanation.baselines, *args)
            )
        total = float(result.token_influence[0].sum())
        assert total == pytest.approx(difference, rel=1e-3, abs=1e-9)
        assert float(result.token_influence[0, 0]) == 0.0  # the kept BOS
        assert [p.source for p in result.patterns[0]] == [1, 2]
        (convergence,) = result.metadata["convergence"]
        assert convergence["qoi_difference"] == pytest.approx(difference, rel=1e-6)
        assert convergence["converged"] and convergence["relative"] <= 0.05


@pytest.fixture
def class_checkpoints_paths(tiny_checkpoints):
    return tiny_checkpoints[1]


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


def test_prefix_cut_before_the_mask() -> None:
    assert to_prefix("the author that the guard likes [MASK] young .") == (
        "The author that the guard likes"
    )
    with pytest.raises(ValueError, match="no"):
        to_prefix("no mask here")


def test_model_accuracy_by_hand() -> None:
    records = [
        dict(task="a", form="SS", id="1", prediction_correct=True, top2=True),
        dict(task="a", form="SS", id="2", prediction_correct=False, top2=True),
        dict(task="a", form="SP", id="3", prediction_correct=True, top2=False),
        dict(task="b", form="PP", id="4", prediction_correct=False, top2=False),
    ]
    accuracy = model_accuracy(records)
    assert accuracy["a"]["n"] == 3
    assert accuracy["a"]["accuracy"] == pytest.approx(2 / 3)
    assert accuracy["a"]["top2_share"] == pytest.approx(2 / 3)
    assert accuracy["a"]["wrong_ids"] == ["2"]
    assert accuracy["a"]["forms"]["SS"] == {"n": 2, "accuracy": 0.5, "top2_share": 1.0}
    assert accuracy["b"] == {
        "n": 1, "accuracy": 0.0, "top2_share": 0.0, "wrong_ids": ["4"],
        "forms": {"PP": {"n": 1, "accuracy": 0.0, "top2_share": 0.0}},
    }


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
