"""Metrics on hand-made result sets whose answers are worked out by hand below."""

from __future__ import annotations

import math
import os

import pytest

from captum_influence_patterns.experiments.metrics import (
    ablation_metrics,
    accuracy,
    consistency_accuracy,
    consistency_by_prediction,
    correlation,
    layer_consistency,
    normalized_entropy,
    role_influence,
    skip_share,
    sufficiency,
    summarize,
)
from captum_influence_patterns.experiments.report import claims, write_report

T = 8  # tokens per sentence; 2 layers; 2 heads (node candidates: head 0, head 1, skip)


def _pattern(source, positions, nodes, g, e, a, candidates=None):
    return {
        "source": source, "sign": 1 if g >= 0 else -1, "token_influence": g,
        "positions": positions, "position_influence": [e, e],
        "embedding_influence": e,
        "nodes": [
            {"layer": k + 1, "position": positions[k + 1],
             "kind": "skip" if head is None else "head", "head": head, "influence": i}
            for k, (head, i) in enumerate(nodes)
        ],
        "influence": a, "position_candidates": [],
        "node_candidates": candidates or [], "label": "guided",
    }


def _record(task, form, qoi, patterns, roles, ablation=None):
    g = [0.0] * T
    for p in patterns:
        g[p["source"]] = p["token_influence"]
    record = {
        "id": f"{task}-{form}-{qoi}", "index": 0, "task": task, "form": form,
        "qoi": qoi, "prediction_correct": qoi > 0, "input_ids": list(range(T)),
        "sources": [p["source"] for p in patterns],
        "source_roles": {str(pos): role for role, pos in roles.items()},
        "token_influence": g, "patterns": patterns,
    }
    if ablation is not None:
        record["ablation"] = ablation
    return record


ROLES = {"subject": 2, "attractor": 5}
# Record 1: subject route 2 -> 2 -> 7 (skip, then head 0); attractor route 5 -> 5 -> 7.
R1 = _record("t1", "SS", 2.0, [
    _pattern(2, [2, 2, 7], [(None, 0.9), (0, 0.5)], g=2.0, e=1.0, a=0.5,
             candidates=[[0.1, -0.2, 0.7], [0.5, 0.0, 0.0]]),
    _pattern(5, [5, 5, 7], [(None, -0.6), (None, -0.2)], g=-1.0, e=-0.8, a=-0.2,
             candidates=[[0.0, 0.1, -0.6], [0.3, 0.1, -0.2]]),
], ROLES)
# Record 2: subject route 2 -> 3 -> 7 (head 1, then head 0); wrong prediction.
R2 = _record("t1", "SP", -1.0, [
    _pattern(2, [2, 3, 7], [(1, 0.4), (0, 0.3)], g=1.0, e=0.5, a=0.3),
], {"subject": 2})


def test_accuracy_and_role_influence():
    assert accuracy([R1, R2]) == 0.5
    assert accuracy([R1, R2, _record("t1", "PP", 0.5, [], {})]) == pytest.approx(2 / 3)
    # subject: g = 2.0 and 1.0; attractor: -1.0
    assert role_influence([R1, R2]) == {"subject": 1.5, "attractor": -1.0}


def test_sufficiency_means_over_patterns():
    # I(e)/g: 1/2, 0.8, 0.5 -> 0.6; I(a)/g: 0.25, 0.2, 0.3 -> 0.25
    result = sufficiency([R1, R2])
    assert result["embedding"] == pytest.approx(0.6)
    assert result["attention"] == pytest.approx(0.25)
    assert result["embedding_median"] == pytest.approx(0.5)
    assert result["attention_median"] == pytest.approx(0.25)
    assert result["n"] == 3
    zero_g = _record("t1", "SS", 1.0, [
        _pattern(2, [2, 2, 7], [(None, 0.0), (None, 0.0)], g=0.0, e=0.0, a=0.0)
    ], ROLES)
    assert sufficiency([R1, zero_g])["embedding"] == pytest.approx(0.65)


def test_skip_share():
    result = skip_share([R1, R2])
    # nodes: skip, head | skip, skip | head, head -> 3 of 6 layers
    assert result["layers"] == pytest.approx(0.5)
    # |influence| on skips: 0.9 + 0.6 + 0.2 = 1.7; all: 1.7 + 0.5 + 0.4 + 0.3 = 2.9
    assert result["weighted"] == pytest.approx(1.7 / 2.9)
    # candidates (R1 only): skips 0.7 + 0 + 0.6 + 0.2 = 1.5; all |.|: 1.0 + 0.5 + 0.7
    # + 0.6 = 2.8
    assert result["flow"] == pytest.approx(1.5 / 2.8)


def test_normalized_entropy():
    assert normalized_entropy(["a", "a", "b", "b"], 4) == pytest.approx(0.5)
    assert normalized_entropy(["a", "a", "b", "b"], 2) == pytest.approx(1.0)
    assert normalized_entropy(["a", "b"], 10) == pytest.approx(1.0)
    assert normalized_entropy(["a", "a", "a"], 10) == 0.0
    assert normalized_entropy(["a"], 10) == 0.0
    # p = (1/2, 1/4, 1/4): H = 1.5 log 2, over log 4 -> 0.75
    assert normalized_entropy([1, 1, 2, 3], 8) == pytest.approx(0.75)


def test_layer_consistency_and_split_by_prediction():
    result = layer_consistency([R1, R2])
    # subject: layer 1 positions {2, 3} -> 1; nodes {skip, head 1} -> 1; layer 2:
    # positions {7, 7} -> 0, nodes {0, 0} -> 0. attractor (one instance): all 0.
    assert result["positions"] == pytest.approx([0.5, 0.0])
    assert result["heads"] == pytest.approx([0.5, 0.0])
    # 1 - (mean positions over layer 1 only = 0.5 + mean heads = 0.25) / 2
    assert result["consistency"] == pytest.approx(1 - 0.75 / 2)
    assert result["n"] == 2
    split = consistency_by_prediction([R1, R2])
    assert split["correct"]["n"] == 1 and split["incorrect"]["n"] == 1
    assert split["correct"]["consistency"] == 1.0


def test_correlation_by_hand():
    # x = 1..4, y = 2, 4, 6, 9: sum dx dy = 11.5, sum dx^2 = 5, sum dy^2 = 26.75
    result = correlation([1, 2, 3, 4], [2, 4, 6, 9])
    assert result["pearson"] == pytest.approx(11.5 / math.sqrt(5 * 26.75))
    assert result["spearman"] == pytest.approx(1.0)
    assert result["n"] == 4
    # ties: ranks (1.5, 1.5, 3) against (1, 2, 3) -> 1.5 / sqrt(1.5 * 2)
    assert correlation([1, 1, 2], [1, 2, 3])["spearman"] == pytest.approx(
        1.5 / math.sqrt(3)
    )
    assert math.isnan(correlation([1, 2], [3, 4])["pearson"])
    assert correlation([1, 2, float("nan"), 3], [1, 2, 3, 4])["n"] == 3


def test_consistency_accuracy_groups():
    result = consistency_accuracy([R1, R2], ("task", "form"))
    assert [p["group"] for p in result["points"]] == [["t1", "SP"], ["t1", "SS"]]
    assert [p["accuracy"] for p in result["points"]] == [0.0, 1.0]
    assert [p["consistency"] for p in result["points"]] == [1.0, 1.0]
    assert result["n"] == 2 and math.isnan(result["pearson"])


def _ablated(nothing, keep):
    return {"mean": {"nothing": nothing,
                     "guided": {"union": {"keep": keep, "remove": nothing}}}}


def test_ablation_metrics_by_hand():
    records = [
        _record("t1", "SS", 2.0, [], {}, _ablated(0.5, 1.5)),
        _record("t1", "SP", 1.0, [], {}, _ablated(-0.2, 0.25)),
        _record("t1", "PS", 1.0, [], {}),  # not ablated: left out
    ]
    result = ablation_metrics(records)["mean"]
    keep = result["guided"]["union"]["keep"]
    # (1.5 - 0.5 + 0.25 + 0.2) / (2 - 0.5 + 1 + 0.2) = 1.45 / 2.7; raw 1.75 / 3
    assert keep["retained"] == pytest.approx(1.45 / 2.7)
    assert keep["retained_raw"] == pytest.approx(1.75 / 3)
    assert keep["accuracy"] == 1.0 and keep["n"] == 2
    assert result["guided"]["union"]["remove"]["retained"] == pytest.approx(0.0)
    assert result["nothing"]["accuracy"] == 0.5
    assert result["nothing"]["retained_raw"] == pytest.approx(0.3 / 3)


def test_summary_and_report(tmp_path):
    records = [R1, R2, _record("t2", "SS", 1.0, R1["patterns"], ROLES)]
    summary = summarize(records)
    assert set(summary["tasks"]) == {"t1", "t2"}
    assert summary["tasks"]["t2"]["accuracy"] == 1.0
    assert summary["overall"]["n"] == 3
    assert summary["correlation"]["task"]["n"] == 2
    results = tmp_path / "results.jsonl"
    import json

    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    static = tmp_path / "docs" / "_static" / "results"
    write_report([str(results)], str(tmp_path / "docs" / "results.md"), str(static))
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "| t1 | 2 | 0.50 |" in text
    assert "](_static/results/task_metrics.png)" in text
    for name in os.listdir(static):
        assert os.path.getsize(static / name) < 200_000
    verdicts = claims(summary)
    # constant consistency (no correlation), no ablation
    assert [c["holds"] for c in verdicts][1:] == [None, None]
