"""viz/tokens.py: token labels without the tokenizers' marks."""

from __future__ import annotations

from captum_influence_patterns.viz.tokens import clean_token


class TestCleanToken:
    def test_tokenizer_artefacts(self) -> None:
        assert clean_token("##ing") == "ing"
        assert clean_token("##ing", mark_continuation=True) == "-ing"
        assert clean_token("Ġword") == "word"
        assert clean_token("▁word") == "word"
        assert clean_token("word</w>") == "word"
        assert clean_token("Ġ") == "␣"
        assert clean_token("[CLS]") == "[CLS]"
        assert clean_token("##") == "##"
