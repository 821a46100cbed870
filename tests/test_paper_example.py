"""paper/example.py: one evaluated example builds one attribution object and one
request, validated once, and records every optimality opponent."""

from __future__ import annotations

import json

import pytest

from captum_influence_patterns.paper import evaluation, example
from captum_influence_patterns.paper.settings import EvaluationSettings


def test_one_attribution_object_per_example(
    loaded, items, evaluation_settings, monkeypatch
):
    """The search, the reference routes and the optimality share one
    InfluencePatterns (issue 22: it was rebuilt three times per example)."""
    from dataclasses import replace

    from captum_influence_patterns import attribution as attribution_module
    from captum_influence_patterns.paper.example import evaluate_example

    built = []
    original = attribution_module.InfluencePatterns.__init__

    def counted(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(attribution_module.InfluencePatterns, "__init__", counted)
    settings = replace(evaluation_settings, optimality=2, ablation=False)
    record = evaluate_example(loaded, items[0], settings)
    assert "routes" in record and "optimality" in record
    assert len(built) == 1


def test_optimality_records_every_opponent(loaded, items):
    """Issue 21 item 1: the evaluation records the guided score, each opponent's
    and the best found per source, in plain JSON next to the old fields."""
    settings = EvaluationSettings(n_steps=4, sources="roles", optimality=3)
    record = evaluation.evaluate_example(loaded, items[0], settings)
    json.loads(json.dumps(record))
    entries = record["optimality"]
    assert [e["source"] for e in entries] == record["sources"]
    for entry, pattern in zip(entries, record["patterns"]):
        assert entry["guided"] == pytest.approx(pattern["embedding_influence"],
                                                abs=1e-9)
        assert {"share_beaten", "gap", "n_random", "random_best"} <= set(entry)
        assert set(entry["opponents"]) == {
            "optimum", "stay_then_jump", "attention_route", "contribution_route",
            "attention_random", "random",
        }
        sign = entry["sign"]
        best = max([entry["guided"]] + [o["influence"]
                                       for o in entry["opponents"].values()],
                   key=lambda v: sign * v)
        assert entry["best_found"] == best
        assert 0.0 <= entry["shortfall"]
        assert entry["within_5pct"] == (entry["shortfall"] <= 0.05)


def test_one_example_is_validated_once_in_one_analysis(
    loaded, items, evaluation_settings, monkeypatch
):
    """Issue 22 item 3: an evaluated example (search, reference routes, optimality
    and ablation) builds one request, validated once, and enters the model's analysis
    mode once; every step reads that request (was: 3 validations, 4 entries, and 3
    graphs built)."""
    import importlib
    from dataclasses import replace

    request_module = importlib.import_module("captum_influence_patterns.request")
    session_module = importlib.import_module("captum_influence_patterns.graph.session")
    layouts_module = importlib.import_module("captum_influence_patterns.graph.layouts")
    counts = {"validate_inputs": 0, "_guard_other_threads": 0, "__init__": 0}
    for module, name in ((request_module, "validate_inputs"),
                         (session_module, "_guard_other_threads"),
                         (layouts_module.PostLNEncoderGraph, "__init__")):
        original = getattr(module, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    # routes, optimality and ablation
    settings = replace(evaluation_settings, optimality=2)
    references = example.AblationReferences(loaded, items, settings)
    references.for_task(items[0].task)  # the task's means: once per run, not per example
    counts.update(validate_inputs=0, _guard_other_threads=0, __init__=0)
    record = example.evaluate_example(loaded, items[0], settings, references)
    assert {"routes", "optimality", "ablation"} <= set(record)
    # and no graph built: the model's graph was built before (model_graph's cache)
    assert counts == {"validate_inputs": 1, "_guard_other_threads": 1, "__init__": 0}
