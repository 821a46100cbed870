"""models/qoi_kinds.py: decoder QoIs a user cannot get wrong, on the tiny Llama GGUF
written by the tests (conftest's ``tiny_decoder``: a byte-level BPE where " are" and
" is" are one token each) and the tiny BERT checkpoint."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gguf")

from captum_influence_patterns.models.explanation import (  # noqa: E402
    explain,
    prepare_explanation,
)
from captum_influence_patterns.models.loading import load_model  # noqa: E402
from captum_influence_patterns.models.qoi_kinds import ExplanationError  # noqa: E402


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


