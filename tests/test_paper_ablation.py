"""Ablation: keeping everything is the model, keeping nothing is the reference value."""

from __future__ import annotations

import math

from unittest import mock

import pytest
import torch

from captum_influence_patterns.paper import ablation

from captum_influence_patterns.paper.ablation import (
    NodeSet,
    ablated_qoi,
    ablation_record,
    node_means,
    route_nodes_set,
    route_sets,
)
from captum_influence_patterns.attribution import InfluencePatterns, analysis_mode
from captum_influence_patterns.graph import model_graph
from captum_influence_patterns.qoi import masked_lm_logit_difference
from captum_influence_patterns.results import Pattern, PatternNode
from captum_influence_patterns.testing import agreement_batch, masked_lm


def _pattern(positions, nodes, label="guided"):
    return Pattern(
        source=positions[0], sign=1, token_influence=1.0, positions=list(positions),
        position_influence=[math.nan] * (len(positions) - 1), embedding_influence=0.5,
        nodes=[PatternNode(layer, pos, kind, head, 0.1)
               for layer, (pos, kind, head) in enumerate(nodes, start=1)],
        influence=0.4, label=label,
    )


# A route of the tiny 3-layer model: source 1, skip, skip, then head 2 into position 4.
ROUTE = _pattern([1, 1, 1, 4], [(1, "skip", None), (1, "skip", None), (4, "head", 2)])
OTHER = _pattern([5, 4, 4, 4], [(4, "head", 0), (4, "skip", None), (4, "head", 1)])


def _request(setup, b):
    """The request of example ``b`` of the fixture, with the first one's arguments."""
    model, forward, ids, args = setup[:4]
    return InfluencePatterns(forward, model).request(ids[b : b + 1], None, None, args)


@pytest.fixture(scope="module")
def setup():
    model = masked_lm("bert")
    ids, args = agreement_batch(batch=3)
    forward = masked_lm_logit_difference(model)
    means = node_means(model, ids.tolist())
    example_args = tuple(a[:1] for a in args)
    with analysis_mode(model), torch.no_grad():  # eager attention, as ablation runs
        clean = forward(ids[:1], *example_args)
    return model, forward, ids, example_args, means, float(clean)


def test_route_nodes_set_attention_and_embedding_level():
    nodes = route_nodes_set([ROUTE], num_positions=7, num_heads=4)
    assert nodes.embedding.nonzero().flatten().tolist() == [1]
    assert nodes.skip.nonzero().tolist() == [[0, 1], [1, 1]]
    assert nodes.heads.nonzero().tolist() == [[2, 4, 2]]
    assert nodes.count() == 4
    layers_only = route_nodes_set([ROUTE], 7, 4, include_source=False)
    assert not layers_only.embedding.any() and layers_only.count() == 3
    union = route_nodes_set([ROUTE, OTHER], 7, 4)
    assert union.embedding.nonzero().flatten().tolist() == [1, 5]
    # layer 1: skip at 1 (ROUTE), head 0 at 4 (OTHER); layer 3: heads 2 and 1 at 4
    assert union.count() == 2 + 3 + 1 + 2
    embedding = route_nodes_set([ROUTE], 7, 4, level="embedding")
    # every head and the skip at j_l: positions 1, 1, 4 at layers 1..3
    assert embedding.count() == 1 + 3 * (4 + 1)
    assert embedding.heads[2, 4].all() and not embedding.heads[2, 1].any()


def test_keep_everything_is_the_model_exactly(setup):
    model, forward, ids, args, means, clean = setup
    graph = model_graph(model)
    full = NodeSet.full(graph, ids.shape[1])
    first = _request(setup, 0)
    for reference in (means, means.zeros_like()):
        kept = ablated_qoi(model, forward, first, [full], reference, "keep")
        removed = ablated_qoi(
            model, forward, first, [NodeSet.full(graph, ids.shape[1], False)],
            reference, "remove",
        )
        assert float(kept[0]) == clean
        assert float(removed[0]) == clean


def _last_layer_replaced(model, forward, ids, args, reference):
    """QoI with only the last layer's head contexts and skip replaced, by a plain hook
    (with every node replaced, nothing upstream of the last layer matters)."""
    module = model.bert.encoder.layer[-1].attention.output

    def hook(mod, hook_args):
        rows, length, _ = hook_args[0].shape
        heads = reference.heads[-1].reshape(length, -1).expand(rows, -1, -1)
        return heads, reference.skip[-1].expand(rows, -1, -1)

    handle = module.register_forward_pre_hook(hook)
    try:
        with analysis_mode(model), torch.no_grad():
            return float(forward(ids, *args))
    finally:
        handle.remove()


def test_keep_nothing_gives_the_reference_value(setup):
    model, forward, ids, args, means, clean = setup
    graph = model_graph(model)
    nothing = NodeSet.full(graph, ids.shape[1], False)
    everything = NodeSet.full(graph, ids.shape[1])
    first, second = _request(setup, 0), _request(setup, 1)
    for reference in (means, means.zeros_like()):
        expected = _last_layer_replaced(model, forward, ids[:1], args, reference)
        kept = ablated_qoi(model, forward, first, [nothing], reference, "keep")
        removed = ablated_qoi(model, forward, first, [everything], reference,
                              "remove")
        other = ablated_qoi(model, forward, second, [nothing], reference, "keep")
        assert float(kept[0]) == pytest.approx(expected, abs=1e-10)
        assert float(removed[0]) == pytest.approx(expected, abs=1e-10)
        assert float(other[0]) == pytest.approx(expected, abs=1e-10)
        assert expected != pytest.approx(clean)


def test_ablation_changes_forward_values_and_rows_are_independent(setup):
    model, forward, ids, args, means, clean = setup
    graph = model_graph(model)
    route = route_nodes_set([ROUTE], ids.shape[1], graph.num_heads)
    full = NodeSet.full(graph, ids.shape[1])
    first = _request(setup, 0)
    batched = ablated_qoi(model, forward, first, [full, route], means, "keep")
    alone = ablated_qoi(model, forward, first, [route], means, "keep")
    assert float(batched[0]) == pytest.approx(clean, abs=1e-12)  # batch rounding
    assert float(batched[1]) == pytest.approx(float(alone[0]), abs=1e-12)
    assert float(alone[0]) != pytest.approx(clean)


def test_node_means_per_position_over_examples_of_any_length(setup):
    model = setup[0]
    short, long = [5, 8, 9, 3, 10], [5, 11, 12, 3, 13, 14, 15]
    means = node_means(model, [short, long], batch_size=1)
    with torch.no_grad():
        h_short = model.bert.embeddings(input_ids=torch.tensor([short]))[0]
        h_long = model.bert.embeddings(input_ids=torch.tensor([long]))[0]
    expected = torch.cat([(h_short + h_long[:5]) / 2, h_long[5:]])
    assert means.embedding.shape == (7, 24)
    assert torch.allclose(means.embedding, expected, atol=1e-12)
    assert means.heads.shape == (3, 7, 4, 6) and means.skip.shape == (3, 7, 24)


def test_ablation_record_structure(setup):
    model, forward, ids, args, means, clean = setup
    patterns = {"guided": [ROUTE, OTHER], "greedy": [OTHER, ROUTE]}
    assert set(route_sets(patterns, subject=1)) == {
        ("guided", "subject"), ("guided", "union"), ("greedy", "subject"),
        ("greedy", "union"),
    }
    record = ablation_record(
        model, forward, _request(setup, 0), patterns,
        {"mean": means, "zero": means.zeros_like()}, subject=1,
    )
    assert set(record) == {"mean", "zero"}
    entry = record["mean"]
    # the same route set gives the same numbers whichever method found it
    for which in ("subject", "union"):
        for mode in ("keep", "remove"):
            assert entry["guided"][which][mode] == pytest.approx(
                entry["greedy"][which][mode], abs=1e-12
            )
    assert set(entry["guided"]["subject"]) == {"keep", "remove"}
    single = ablated_qoi(
        model, forward, _request(setup, 0),
        [route_nodes_set([ROUTE], ids.shape[1], 4)], means, "remove",
    )
    assert entry["guided"]["subject"]["remove"] == pytest.approx(float(single[0]))


def test_one_pass_per_sentence_equals_each_set_alone(setup):
    """Issue 20 item 3: every reference, set and mode of a sentence in one batched
    forward pass gives what each ablation gives alone, one pass each."""
    model, forward, ids, args, means, clean = setup
    patterns = {"guided": [ROUTE, OTHER], "greedy": [OTHER]}
    references = {"mean": means, "zero": means.zeros_like()}
    calls = []
    original = ablation.AblationController.__init__

    def counting(self, node_sets, *rest):
        calls.append(len(node_sets))
        original(self, node_sets, *rest)

    first = _request(setup, 0)
    with mock.patch.object(ablation.AblationController, "__init__", counting):
        record = ablation_record(
            model, forward, first, patterns, references, subject=1
        )
    sets = route_sets(patterns, 1)
    assert len(sets) == 3
    assert calls == [2 * (1 + 2 * 3)]  # one pass: 2 references x (nothing + 3 sets x 2)
    graph = model_graph(model)
    for name, reference in references.items():
        nothing = NodeSet.full(graph, ids.shape[1], False)
        alone = ablated_qoi(model, forward, first, [nothing], reference, "keep")
        assert record[name]["nothing"] == pytest.approx(float(alone[0]), abs=1e-12)
        for (method, which), routes in sets.items():
            node_set = route_nodes_set(routes, ids.shape[1], graph.num_heads)
            for mode in ("keep", "remove"):
                alone = ablated_qoi(
                    model, forward, first, [node_set], reference, mode
                )
                assert record[name][method][which][mode] == pytest.approx(
                    float(alone[0]), abs=1e-12
                )


def test_ablation_refuses_what_a_request_cannot_give(setup):
    model, forward, ids, args, means, clean = setup
    ip = InfluencePatterns(forward, model)
    request = ip.request(ids[:1], None, None, args, output_position=4, n_steps=4)
    patterns, references = {"guided": [ROUTE]}, {"mean": means}
    batch_args = tuple(a.expand(2, *a.shape[1:]) for a in args)
    two = ip.request(ids[:2], None, None, batch_args, output_position=4, n_steps=4)
    with pytest.raises(ValueError, match="request: an ablation runs one unpadded"):
        ablation_record(model, forward, two, patterns=patterns, references=references)
    with pytest.raises(TypeError, match="references"):
        ablation_record(model, forward, request, patterns=patterns)
    with pytest.raises(TypeError, match="request: expected an AttributionRequest"):
        ablation_record(model, forward, ids[:1], patterns, references)
