"""One request, validated once: compare validates its arguments, enters the model's
analysis mode once and builds no second graph; search and score give what attribute
and pattern_influence give; every analysis refuses token ids in place of a request
before any work."""

from __future__ import annotations

import importlib

import pytest

from captum_influence_patterns.request import AttributionRequest
from captum_influence_patterns.routes.compare import compare
from captum_influence_patterns.testing import (
    MASK_ID,
    agreement_batch,
    assert_same_patterns,
    attribution,
    masked_lm,
)

STEPS = 4
request_module = importlib.import_module("captum_influence_patterns.request")
session_module = importlib.import_module("captum_influence_patterns.graph.session")
attention_module = importlib.import_module("captum_influence_patterns.routes.attention")
METHODS = ["greedy", "rollout", "conductance"]


@pytest.fixture(scope="module")
def setting():
    model = masked_lm("bert")
    ids, args = agreement_batch(batch=2)
    return attribution(model), ids, args


def _counting(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(*a, **k):
        calls.append(name)
        return original(*a, **k)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_compare_validates_and_enters_analysis_once(setting, monkeypatch):
    ip, ids, args = setting
    validations = _counting(monkeypatch, request_module, "validate_inputs")
    entries = _counting(monkeypatch, session_module, "_guard_other_threads")
    graphs = _counting(monkeypatch, attention_module, "model_graph")
    request = ip.request(
        ids, MASK_ID, None, args, output_position=4, n_steps=STEPS
    )
    assert isinstance(request, AttributionRequest)
    by_request = compare(ip, request, methods=METHODS)
    assert validations == ["validate_inputs"]
    assert entries == ["_guard_other_threads"]
    assert graphs == []  # the attention capture reads ip.graph
    # the guided patterns are attribute's on the same arguments
    guided = ip.attribute(
        ids, MASK_ID, None, args, n_steps=STEPS, output_position=4
    )
    assert [
        [r["guided"]["positions"] for r in by_request.records if r["example"] == b]
        for b in range(2)
    ] == [[p.positions for p in row] for row in guided.patterns]


def test_search_and_score_are_attribute_and_pattern_influence(setting):
    ip, ids, args = setting
    request = ip.request(ids, MASK_ID, None, args, output_position=4, n_steps=STEPS)
    keywords = dict(baselines=MASK_ID, additional_forward_args=args, n_steps=STEPS)
    result = ip.search(request)
    assert_same_patterns(result, ip.attribute(ids, output_position=4, **keywords))
    assert result.metadata["n_steps"] == STEPS
    assert [
        v.tolist() for v in ip.score(request, result.patterns)
    ] == [v.tolist() for v in ip.pattern_influence(ids, result.patterns, **keywords)]


def test_token_ids_in_place_of_a_request_are_refused_before_any_work(
    setting, monkeypatch
):
    from captum_influence_patterns.convergence import attribute_converged
    from captum_influence_patterns.paper.ablation import ablated_qoi, ablation_record
    from captum_influence_patterns.routes.optimality import optimality_test
    from captum_influence_patterns.routes.scoring import score_patterns, score_routes

    ip, ids, args = setting
    request = ip.request(ids, MASK_ID, None, args, output_position=4, n_steps=STEPS)
    result = ip.search(request).result
    entries = _counting(monkeypatch, session_module, "_guard_other_threads")
    message = (
        r"^request: expected an AttributionRequest, got Tensor; build one with "
        r"ip\.request\(inputs, baselines=\.\.\., \.\.\.\)$"
    )
    calls = {
        "search": lambda: ip.search(ids),
        "score": lambda: ip.score(ids, result.patterns),
        "compare": lambda: compare(ip, ids, methods=METHODS),
        "optimality_test": lambda: optimality_test(ip, ids, result, n_random=2),
        "score_routes": lambda: score_routes(ip, ids, result.patterns, "embedding"),
        "score_patterns": lambda: score_patterns(ip, ids, result.patterns),
        "attribute_converged": lambda: attribute_converged(ip, ids),
        "ablated_qoi": lambda: ablated_qoi(ip.model, ip.forward_func, ids, [], []),
        "ablation_record": lambda: ablation_record(
            ip.model, ip.forward_func, ids, {}, {}
        ),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=message):
            call()
        assert entries == [], name  # refused before the model's analysis mode
    with pytest.raises(TypeError, match="inputs: got an AttributionRequest"):
        ip.attribute(request)
    with pytest.raises(TypeError, match="inputs: got an AttributionRequest"):
        ip.pattern_influence(request, result.patterns)


def test_token_ids_without_output_position_take_the_one_the_qoi_reads(setting):
    ip, ids, args = setting
    found = ip.attribute(ids, MASK_ID, None, args, n_steps=STEPS)
    given = ip.attribute(ids, MASK_ID, None, args, n_steps=STEPS, output_position=4)
    assert found.output_positions == [4, 4]
    assert_same_patterns(found.result, given.result, atol=0, rtol=0)


def test_optimality_takes_the_request_and_validates_once(setting, monkeypatch):
    from captum_influence_patterns.routes.optimality import optimality_test

    ip, ids, args = setting
    request = ip.request(ids, MASK_ID, None, args, output_position=4, n_steps=STEPS)
    result = ip.search(request).result
    again = ip.request(ids, MASK_ID, None, args, output_position=4, n_steps=STEPS)
    expected = optimality_test(ip, again, result, n_random=3)
    validations = _counting(monkeypatch, request_module, "validate_inputs")
    entries = _counting(monkeypatch, session_module, "_guard_other_threads")
    records = optimality_test(ip, request, result, n_random=3)
    assert records == expected
    assert entries == ["_guard_other_threads"]
    # the given request is validated already: the scoring reads it (the optimum
    # of these short sentences is exhaustive, so no beam search is run)
    assert validations == []
