"""routes/scoring.py: a route's nodes by rule, and scoring that reproduces the guided
routes' influences within a bounded number of passes."""

from __future__ import annotations

import pytest
import torch

import captum_influence_patterns.influence as influence_module
from captum_influence_patterns.routes.scoring import (
    route_nodes,
    route_pattern,
    score_patterns,
)

MASK = 3  # conftest's routes_setting's [MASK]


def test_route_nodes_rule():
    attention = torch.zeros(3, 2, 3, 3, dtype=torch.float64)
    attention[0, :, 1, 0] = torch.tensor([0.2, 0.3])  # moves 0 -> 1: head 1
    attention[1, :, 1, 1] = torch.tensor([0.6, 0.1])  # stays, head 0 above 0.5: head
    attention[2, :, 1, 1] = torch.tensor([0.4, 0.5])  # stays, 0.5 not above: skip
    nodes = route_nodes(attention, [0, 1, 1, 1])
    assert [(n.kind, n.head) for n in nodes] == [
        ("head", 1),
        ("head", 0),
        ("skip", None),
    ]
    assert [n.position for n in nodes] == [1, 1, 1]
    strict = route_nodes(attention, [0, 1, 1, 1], skip_threshold=1.0)
    assert [(n.kind, n.head) for n in strict] == [("head", 1)] + [("skip", None)] * 2


def test_route_nodes_attends_reads_the_transposed_edge():
    attention = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    attention[0, :, 1, 0] = torch.tensor([0.9, 0.1])  # query 1 reads key 0: head 0
    attention[0, :, 0, 1] = torch.tensor([0.2, 0.6])  # token 0 attends to 1: head 1
    assert route_nodes(attention, [0, 1])[0].head == 0
    assert route_nodes(attention, [0, 1], orientation="attends")[0].head == 1


def test_scoring_reproduces_guided_influence(routes_setting):
    _, ip, ids, args, result = routes_setting
    guided = result.patterns[0]["guided"]
    copies = [
        route_pattern("copy", p.positions, [dict_copy(n) for n in p.nodes])
        for p in guided
    ]
    score_patterns(
        ip,
        ip.request(ids[:1], MASK, None, tuple(a[:1] for a in args), n_steps=8),
        [copies],
    )
    for copy, pattern in zip(copies, guided):
        assert copy.influence == pytest.approx(pattern.influence, rel=1e-6, abs=1e-12)
        assert copy.embedding_influence == pytest.approx(
            pattern.embedding_influence, rel=1e-6, abs=1e-12
        )


def dict_copy(node):
    return type(node)(**vars(node))


def test_gated_route_scores_bound_their_passes(routes_setting, monkeypatch):
    """The gated reverse passes that score routes (the reference schedule, and the
    fast one's fallback) split their rows to stay under PASS_ELEMENTS without
    internal_batch_size; the influences do not change."""
    _, ip, ids, args, result = routes_setting
    guided = result.patterns[0]["guided"]
    arguments = (ids[:1], [guided], MASK, None, tuple(a[:1] for a in args))
    whole = ip.pattern_influence(*arguments, n_steps=8, schedule="reference")[0]
    passes = []
    original = influence_module.ExampleProblem.gradients

    def counted(self, *a, **k):
        passes.append(1)
        return original(self, *a, **k)

    monkeypatch.setattr(influence_module, "PASS_ELEMENTS", 1)
    monkeypatch.setattr(influence_module.ExampleProblem, "gradients", counted)
    bounded = ip.pattern_influence(*arguments, n_steps=8, schedule="reference")[0]
    assert len(passes) >= 8 * len(guided)  # one row per pass
    assert torch.allclose(bounded, whole, rtol=1e-10, atol=1e-12)
