"""The summary of an evaluation (paper/summary.py): every source explained, routes
read from old files, and the bootstrap intervals of the claims."""

from __future__ import annotations

import math

import pytest

from captum_influence_patterns.paper.consistency import layer_consistency
from captum_influence_patterns.paper.metrics import role_influence, route_names
from captum_influence_patterns.paper.metrics import sufficiency
from captum_influence_patterns.paper.summary import intervals, summarize
from captum_influence_patterns.testing.records import (
    RECORD_1,
    RECORD_2,
    ROLES,
    record_dict,
    route_dict,
)


def _all_sources_record(qoi, subject_route):
    """Every position but the output (7) explained; roles only for 2 and 5."""
    patterns = []
    for source in range(7):
        route = subject_route if source == 2 else [source, source, 7]
        patterns.append(
            route_dict(source, route, [(None, 0.1), (0, 0.1)], g=0.5, e=0.2, a=0.1)
        )
    return record_dict("t1", "SS", qoi, patterns, ROLES)


def test_every_token_a_source_keeps_roles_and_groups_the_rest_by_position():
    records = [_all_sources_record(1.0, [2, 2, 7]), _all_sources_record(2.0, [2, 2, 7])]
    assert set(role_influence(records)) == {"subject", "attractor"}
    same = layer_consistency(records)
    assert same["consistency"] == 1.0 and same["positions"] == [0.0, 0.0]
    # The subject moves in one record: only the subject group (1 of 7) has entropy.
    records[1] = _all_sources_record(2.0, [2, 3, 7])
    moved = layer_consistency(records)
    assert moved["positions"][0] == pytest.approx(1 / 7)
    summary = summarize(records, n_resamples=20)
    assert summary["overall"]["sources_per_example"] == 7


def test_routes_are_read_from_routes_and_from_old_baselines_files():
    new = dict(RECORD_2, routes={"greedy": RECORD_2["patterns"]})
    old = dict(RECORD_1, baselines={"rollout": RECORD_1["patterns"]})
    assert route_names([new, old]) == ["greedy", "rollout"]
    assert sufficiency([old], "rollout")["embedding_mean"] == pytest.approx(0.65)
    summary = summarize([new, old], n_resamples=10)
    assert set(summary["overall"]["route_sufficiency"]) == {"greedy", "rollout"}


def _keep(guided, greedy, nothing=0.0):
    return {
        "mean": {
            "nothing": nothing,
            "guided": {"union": {"keep": guided}},
            "greedy": {"union": {"keep": greedy}},
        }
    }


def test_intervals_of_the_claims():
    records = [
        record_dict("t1", "SS", 2.0, RECORD_1["patterns"], ROLES, _keep(1.5, 0.5)),
        record_dict("t1", "SP", 1.0, RECORD_2["patterns"], {"subject": 2}, _keep(0.5, 0.5)),
    ]
    result = intervals(records, n_resamples=200, seed=0)
    assert result["settings"] == {"n_resamples": 200, "seed": 0, "level": 0.95}
    # guided retains (1.5 + 0.5) / 3, greedy 1 / 3: margin 1/3; resamples of one
    # record give margins 0.5 (first) and 0 (second).
    ablation = result["ablation"]
    assert ablation["guided"]["value"] == pytest.approx(2 / 3)
    assert ablation["margin"]["value"] == pytest.approx(1 / 3)
    assert ablation["margin"]["low"] == pytest.approx(0.0)
    assert ablation["margin"]["high"] == pytest.approx(0.5)
    weighted = result["skip_share"]["weighted"]
    assert weighted["value"] == pytest.approx(1.7 / 2.9)
    assert weighted["low"] <= weighted["value"] <= weighted["high"]
    # Two task x form groups with one record each: no correlation to resample.
    assert math.isnan(result["correlation"]["pearson"]["value"])
