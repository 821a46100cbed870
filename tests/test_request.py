"""One request, validated once: compare validates its arguments, enters the model's
analysis mode once and builds no second graph, and gives what the keyword calls
give."""

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
    by_keywords = compare(
        ip, ids, MASK_ID, None, args, output_position=4, n_steps=STEPS, methods=METHODS
    )
    assert by_request.records == by_keywords.records


def test_attribute_and_pattern_influence_take_the_request(setting):
    ip, ids, args = setting
    request = ip.request(ids, MASK_ID, None, args, output_position=4, n_steps=STEPS)
    keywords = dict(baselines=MASK_ID, additional_forward_args=args, n_steps=STEPS)
    result = ip.attribute(request)
    assert_same_patterns(result, ip.attribute(ids, output_position=4, **keywords))
    assert result.metadata["n_steps"] == STEPS
    assert [
        v.tolist() for v in ip.pattern_influence(request, result.patterns)
    ] == [v.tolist() for v in ip.pattern_influence(ids, result.patterns, **keywords)]


def test_arguments_beside_a_request_are_refused(setting):
    ip, ids, args = setting
    request = ip.request(ids, MASK_ID, None, args, output_position=4, n_steps=STEPS)
    with pytest.raises(ValueError, match="inputs: an AttributionRequest carries n_steps"):
        ip.attribute(request, n_steps=8)
    with pytest.raises(ValueError, match="output_position: the AttributionRequest"):
        ip.attribute(request, output_position=3)
    with pytest.raises(ValueError, match="carries baselines"):
        compare(ip, request, baselines=MASK_ID, methods=METHODS)


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
    result = ip.attribute(request)
    expected = optimality_test(ip, ids, result, MASK_ID, None, args, n_random=3)
    validations = _counting(monkeypatch, request_module, "validate_inputs")
    entries = _counting(monkeypatch, session_module, "_guard_other_threads")
    records = optimality_test(ip, request, result, n_random=3)
    assert records == expected
    assert entries == ["_guard_other_threads"]
    # the given request is validated already: the scoring reads it (the optimum
    # of these short sentences is exhaustive, so no beam search is run)
    assert validations == []
