"""Consistency (paper/consistency.py) on hand-made records: entropies by the definition,
each group normalised by its own length, the correlation with accuracy and its
intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from captum_influence_patterns.paper.consistency import (
    consistency_accuracy,
    correlation_intervals,
    consistency_by_prediction,
    layer_consistency,
    normalized_entropy,
)
from captum_influence_patterns.testing.records import (
    RECORD_1,
    RECORD_2,
    TOKENS,
    record_dict,
    route_dict,
)


def test_normalized_entropy():
    assert normalized_entropy(["a", "a", "b", "b"], 4) == pytest.approx(0.5)
    assert normalized_entropy(["a", "a", "b", "b"], 2) == pytest.approx(1.0)
    assert normalized_entropy(["a", "b"], 10) == pytest.approx(1.0)
    assert normalized_entropy(["a", "a", "a"], 10) == 0.0
    assert normalized_entropy(["a"], 10) == 0.0
    # p = (1/2, 1/4, 1/4): H = 1.5 log 2, over log 4 -> 0.75
    assert normalized_entropy([1, 1, 2, 3], 8) == pytest.approx(0.75)


def test_layer_consistency_and_split_by_prediction():
    result = layer_consistency([RECORD_1, RECORD_2])
    # subject: layer 1 positions {2, 3} -> 1; nodes {skip, head 1} -> 1; layer 2:
    # positions {7, 7} -> 0, nodes {0, 0} -> 0. attractor (one instance): all 0.
    assert result["positions"] == pytest.approx([0.5, 0.0])
    assert result["heads"] == pytest.approx([0.5, 0.0])
    # 1 - (mean positions over layer 1 only = 0.5 + mean heads = 0.25) / 2
    assert result["consistency"] == pytest.approx(1 - 0.75 / 2)
    assert result["n"] == 2
    split = consistency_by_prediction([RECORD_1, RECORD_2])
    assert split["correct"]["n"] == 1 and split["incorrect"]["n"] == 1
    assert split["correct"]["consistency"] == 1.0


def test_consistency_accuracy_groups():
    result = consistency_accuracy([RECORD_1, RECORD_2], ("task", "form"))
    assert [p["group"] for p in result["points"]] == [["t1", "SP"], ["t1", "SS"]]
    assert [p["accuracy"] for p in result["points"]] == [0.0, 1.0]
    assert [p["consistency"] for p in result["points"]] == [1.0, 1.0]
    assert result["n"] == 2 and math.isnan(result["pearson"])


def _label(head):
    return "skip" if head is None else head


def test_choice_table_entropies_match_the_definition_on_random_choices():
    """The vectorized entropies equal normalized_entropy over each role and layer."""
    rng = np.random.default_rng(0)
    records = []
    for k in range(9):
        patterns = []
        for source in (1, 2, 4):  # source 4 has no role: grouped by position
            if source == 1 and k % 3 == 0:
                continue  # some records lack this source
            route = [source, *rng.integers(0, TOKENS, size=2).tolist(), 7]
            heads = [None if h == 2 else int(h) for h in rng.integers(0, 3, size=3)]
            patterns.append(
                route_dict(source, route, [(h, 0.1) for h in heads], 1.0, 0.5, 0.4)
            )
        records.append(record_dict("t", "SS", 1.0, patterns, {"a": 1, "b": 2}))
    for record in records:
        for p in record["patterns"]:
            p["position_influence"] = [0.5] * 3
    result = layer_consistency(records, num_heads=2)
    expected_positions, expected_heads = [], []
    for layer in range(3):
        per_role_pos, per_role_node = [], []
        for source in (1, 2, 4):
            chosen = [
                p for r in records for p in r["patterns"] if p["source"] == source
            ]
            per_role_pos.append(
                normalized_entropy([p["positions"][layer + 1] for p in chosen], TOKENS)
            )
            per_role_node.append(
                normalized_entropy(
                    [_label(p["nodes"][layer]["head"]) for p in chosen],
                    3,
                )
            )
        expected_positions.append(np.mean(per_role_pos))
        expected_heads.append(np.mean(per_role_node))
    assert result["positions"] == pytest.approx(expected_positions)
    assert result["heads"] == pytest.approx(expected_heads)


def _length_record(form, qoi, length, head):
    pattern = route_dict(1, [1, 1, length - 1], [(None, 1.0), (head, 1.0)], 1, 1, 1)
    record = record_dict("t", form, qoi, [pattern], {"subject": 1})
    record["input_ids"] = list(range(length))
    record["token_influence"] = record["token_influence"][:length]
    return record


def test_each_group_normalises_by_its_own_length():
    # Form A: 4 tokens, form B: 8 tokens; each group's consistency is that of its
    # records alone (K = its own length), not of the longest sentence overall.
    records = [
        _length_record("A", 1.0, 4, 0), _length_record("A", -1.0, 4, 1),
        _length_record("B", 1.0, 8, 0), _length_record("B", 1.0, 8, 0),
        _length_record("B", -1.0, 8, 1),
    ]
    points = consistency_accuracy(records)["points"]
    for point, form in zip(points, "AB"):
        alone = [r for r in records if r["form"] == form]
        assert point["consistency"] == layer_consistency(alone)["consistency"]
    # the node entropy over K = 3 (two heads and the skip), n = 2 -> log 2
    assert layer_consistency(records[:2])["heads"] == pytest.approx([0.0, 1.0])


def test_correlation_interval_resamples_groups_then_sentences():
    records = [
        _length_record(form, qoi, 8, head)
        for form, qoi, head in [
            ("A", 1.0, 0), ("A", 1.0, 0), ("B", 1.0, 0), ("B", -1.0, 1),
            ("C", -1.0, 0), ("C", -1.0, 1), ("D", 1.0, 1), ("D", -1.0, 0),
        ]
    ]
    result = correlation_intervals(records, n_resamples=300, seed=0)
    value = consistency_accuracy(records)["pearson"]
    assert result["pearson"]["value"] == pytest.approx(value)
    assert result["pearson"]["low"] <= value <= result["pearson"]["high"]
    assert set(result) == {"pearson", "spearman"} and "mean" in result["pearson"]
    assert result == correlation_intervals(records, n_resamples=300, seed=0)
