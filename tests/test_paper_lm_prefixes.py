"""paper/lm_prefixes.py: a masked sentence cut into a decoder's prefix, and the model's
accuracy per task and form by hand."""

from __future__ import annotations

import pytest

from captum_influence_patterns.paper.lm_prefixes import model_accuracy, to_prefix


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
