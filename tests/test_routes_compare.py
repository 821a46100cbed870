"""routes/compare.py: every reference route compared on a model: valid routes, both
orientations, JSON-safe records, the guided choice where routes split; method names."""

from __future__ import annotations

import json
import math

import pytest

from captum_influence_patterns.routes.compare import (
    DEFAULT_METHODS,
    ROUTES,
    RouteComparison,
    compare,
    resolve_methods,
)

MASK, OUTPUT = 3, 4  # conftest's routes_setting: [MASK] at position 4


def test_resolve_methods_orientation_applies_to_attention_routes_only():
    specs = dict(resolve_methods(["greedy", "rollout", "conductance"], "attends"))
    assert specs["greedy"].orientation == "attends"
    assert specs["rollout"].orientation == "flow"
    assert specs["conductance"].orientation == "flow"
    assert dict(resolve_methods(["greedy"]))["greedy"].orientation == "flow"
    with pytest.raises(ValueError, match="unknown route 'nope'"):
        resolve_methods(["nope"])


def test_old_names_warn_and_still_work():
    from captum_influence_patterns.routes import compare as module

    with pytest.warns(DeprecationWarning, match="use ROUTES"):
        assert module.BASELINES is ROUTES
    with pytest.warns(DeprecationWarning, match="use RouteComparison"):
        assert module.BaselineComparison is RouteComparison
    assert set(DEFAULT_METHODS) <= set(ROUTES)


def test_compare_routes_are_valid(routes_setting):
    model, _, ids, _, result = routes_setting
    assert model.config._attn_implementation == "sdpa"
    assert result.methods == list(ROUTES)
    for example in result.patterns:
        for name, row in example.items():
            assert [p.source for p in row] == [0, 1, 2, 3, 5]
            for pattern in row:
                assert pattern.label == name
                positions = pattern.positions
                assert positions[0] == pattern.source and positions[-1] == OUTPUT
                assert len(positions) == 4 and len(pattern.nodes) == 3
                for layer, node in enumerate(pattern.nodes, start=1):
                    assert node.layer == layer and node.position == positions[layer]
                    if node.kind == "skip":
                        assert positions[layer] == positions[layer - 1]
                assert math.isfinite(pattern.influence)
                assert math.isfinite(pattern.embedding_influence)


def test_compare_with_attends_orientation(routes_setting):
    model, ip, ids, args, result = routes_setting
    attends = compare(
        ip,
        ip.request(
            ids[:1],
            MASK,
            None,
            tuple(a[:1] for a in args),
            output_position=OUTPUT,
            n_steps=8,
        ),
        methods=["greedy", "rollout"],
        orientation="attends",
        guided=None,
    )
    assert attends.metadata["routes"]["greedy"]["orientation"] == "attends"
    assert attends.metadata["routes"]["rollout"]["orientation"] == "flow"
    for pattern in attends.patterns[0]["greedy"]:
        assert pattern.positions[1] == pattern.source  # layer 1 unsearched
        assert pattern.positions[-1] == OUTPUT and math.isfinite(pattern.influence)
    rollout = [p.positions for p in attends.patterns[0]["rollout"]]
    assert rollout == [p.positions for p in result.patterns[0]["rollout"]]


def test_compare_records_are_json_safe(routes_setting):
    *_, result = routes_setting
    assert len(result.records) == 2 * 5
    record = result.records[0]
    for name in ["guided"] + result.methods:
        entry = record[name]
        ratio = entry["influence"] / record["token_influence"]
        assert entry["sufficiency"] == pytest.approx(ratio)
    assert record["rollout"]["score"] is not None and record["guided"]["score"] is None
    json.dumps(result.to_dict(), allow_nan=False)
    assert set(result.summary()) == {"guided", *result.methods}


def test_guided_choice_dominates_where_routes_split(routes_setting):
    """The one ordering that holds by construction.

    At the first layer where a reference route leaves the guided positions, the guided
    stage-A choice has at least the route's sign-adjusted influence, given the prefix.
    """
    *_, result = routes_setting
    checked = 0
    for example in result.patterns:
        for s, guided in enumerate(example["guided"]):
            for name in result.methods:
                route = example[name][s].positions
                split = next(
                    (
                        k
                        for k in range(1, len(route) - 1)
                        if route[k] != guided.positions[k]
                    ),
                    None,
                )
                if split is None:
                    continue
                candidates = guided.position_candidates[split - 1]
                ours = guided.sign * candidates[guided.positions[split]]
                theirs = guided.sign * candidates[route[split]]
                assert ours >= theirs - 1e-12
                checked += 1
    assert checked > 0
