"""How the guided routes rank against random routes and opponents
(paper/optimality_metrics.py), on hand-made records worked out by hand."""

from __future__ import annotations

import pytest

from captum_influence_patterns.paper.optimality_metrics import (
    opponent_metrics,
    optimality_metrics,
)
from captum_influence_patterns.paper.summary import intervals
from captum_influence_patterns.testing.records import RECORD_1, RECORD_2, record_dict


def test_optimality_metrics_by_hand():
    listed = dict(
        RECORD_1,
        optimality=[
            {"share_beaten": 1.0, "gap": 0.2, "n_random": 10},
            {"share_beaten": 0.5, "gap": -0.1, "n_random": 10},
        ],
    )
    keyed = dict(
        RECORD_2,
        optimality={
            "2": {"share_beaten": 0.75, "gap": 0.0, "n_random": 30}
        },
    )
    result = optimality_metrics([listed, keyed])
    assert result["n"] == 3
    assert result["share_beaten"] == pytest.approx(0.75)
    assert result["share_beaten_median"] == pytest.approx(0.75)
    assert result["beats_all"] == pytest.approx(1 / 3)
    assert result["gap"] == pytest.approx(0.1 / 3)
    assert result["gap_median"] == pytest.approx(0.0)
    assert result["at_least_best"] == pytest.approx(2 / 3)
    assert result["n_random"] == 10
    assert optimality_metrics([RECORD_1]) == {"n": 0}


def _opponent_entry(source, guided, sign, opponents, shortfall, by):
    return {
        "source": source, "sign": sign, "guided": guided, "share_beaten": 1.0,
        "n_random": 2, "random_best": 0.0, "gap": abs(guided),
        "opponents": {name: {"influence": v} for name, v in opponents.items()},
        "best_found_by": by, "shortfall": shortfall,
        "within_1pct": shortfall is not None and shortfall <= 0.01,
        "within_5pct": shortfall is not None and shortfall <= 0.05,
    }


def test_opponent_metrics_by_hand():
    one = record_dict("t1", "SS", 1.0, [], {})
    one["optimality"] = [
        # guided 1.0, the optimum 1.02: shortfall 0.02 / 1.02
        _opponent_entry(0, 1.0, 1, {"optimum": 1.02, "stay_then_jump": 0.5},
                        0.02 / 1.02, "optimum"),
        # negative route: sign -1, guided -2.0 is the best (opponents -1.0, -2.0)
        _opponent_entry(1, -2.0, -1, {"optimum": -2.0, "stay_then_jump": -1.0},
                        0.0, "guided"),
    ]
    two = record_dict("t1", "SP", 1.0, [], {})
    two["optimality"] = [
        _opponent_entry(0, 1.0, 1, {"optimum": 2.0, "stay_then_jump": 2.0}, 0.5,
                        "optimum"),
    ]
    result = opponent_metrics([one, two])
    assert result["n"] == 3
    assert result["within_1pct"] == pytest.approx(1 / 3)
    assert result["within_5pct"] == pytest.approx(2 / 3)
    assert result["shortfall_median"] == pytest.approx(0.02 / 1.02)
    assert result["best_found_by"] == {"guided": 1 / 3, "optimum": 2 / 3}
    stay = result["opponents"]["stay_then_jump"]
    # guided at least as good: 1.0 >= 0.5, 2.0 >= 1.0, not 1.0 >= 2.0
    assert stay["at_least"] == pytest.approx(2 / 3)
    assert stay["ratio_median"] == pytest.approx(0.5)  # 0.5, 0.5, 2.0
    assert result["opponents"]["optimum"]["at_least"] == pytest.approx(1 / 3)
    boot = intervals([one, two], n_resamples=200)["opponents"]
    assert boot["within_5pct"]["value"] == pytest.approx(2 / 3)
    # resampling the two sentences: 0 (two twice), 2/3, or 1 (one twice)
    assert boot["within_5pct"]["low"] == 0.0 and boot["within_5pct"]["high"] == 1.0
    assert opponent_metrics([RECORD_1]) == {"n": 0}
