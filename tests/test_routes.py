"""Reference routes: known answers on hand-built attention, orientation, capture,
validity, scores."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import pytest
import torch
from captum.attr import LayerConductance
from transformers import BertConfig, BertForMaskedLM

from captum_influence_patterns import (
    InfluencePatterns,
    analysis_mode,
    masked_lm_logit_difference,
)
from captum_influence_patterns.quadrature import IntegrationSettings
from captum_influence_patterns.routes.attention import (
    attention_matrices,
    attention_rollout,
    capture_attention,
)
from captum_influence_patterns.routes.compare import (
    DEFAULT_METHODS,
    ROUTES,
    RouteComparison,
    RouteSpec,
    compare,
    reference_routes,
    resolve_methods,
)
from captum_influence_patterns.routes.scoring import (
    route_nodes,
    route_pattern,
    score_patterns,
)
import captum_influence_patterns.influence as influence_module
import captum_influence_patterns.routes.conductance as conductance_module
from captum_influence_patterns.routes.conductance import (
    conductance_route,
    layer_conductance,
)
from captum_influence_patterns.routes.finders import (
    attention_flow,
    beam_route,
    best_route,
    flow_route,
    greedy_route,
    oriented,
    reachable,
    rollout_route,
)

from captum_influence_patterns.testing import FAMILIES, MORE_FAMILIES, masked_lm

SMALL = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=60,
)
MASK, CORRECT, WRONG = 3, 10, 11
OUTPUT = 4


# ------------------------------------------------------------------ hand-built routes
def _route_matrices() -> torch.Tensor:
    """L = 3, T = 3, source 0, output 2. Only the entries a route can use matter.

    Products j_1, j_2 (M1[j1, 0] * M2[j2, j1] * M3[2, j2]):
      (1, 0): 0.7 * 0.5 * 0.3 = 0.105   <- greedy (0.7 then 0.5 are the column maxima)
      (1, 2): 0.7 * 0.4 * 0.9 = 0.252   <- best
      (0, 2): 0.2 * 0.6 * 0.9 = 0.108
      (2, 2): 0.1 * 0.9 * 0.9 = 0.081
    """
    m1 = torch.tensor([[0.2, 0.0, 0.0], [0.7, 0.0, 0.0], [0.1, 0.0, 0.0]])
    m2 = torch.tensor([[0.01, 0.5, 0.01], [0.01, 0.1, 0.01], [0.6, 0.4, 0.9]])
    m3 = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.3, 0.01, 0.9]])
    return torch.stack([m1, m2, m3]).double()


def test_attention_matrices_by_hand():
    heads = torch.tensor([[[1.0, 0.0], [0.2, 0.8]], [[0.5, 0.5], [0.6, 0.4]]])[None]
    mean = attention_matrices(heads, "mean")
    assert torch.allclose(mean[0], torch.tensor([[0.75, 0.25], [0.4, 0.6]]))
    high = attention_matrices(heads, "max", normalize=True)
    assert torch.allclose(
        high[0], torch.tensor([[1 / 1.5, 0.5 / 1.5], [0.6 / 1.4, 0.8 / 1.4]])
    )
    mixed = attention_matrices(heads, "mean", residual=True)
    assert torch.allclose(mixed[0], torch.tensor([[0.875, 0.125], [0.2, 0.8]]))


def test_greedy_best_beam_by_hand():
    matrices = _route_matrices()
    greedy = greedy_route(matrices, 0, 2)
    assert greedy.positions == [0, 1, 0, 2]
    assert greedy.score == pytest.approx(0.105)
    best = best_route(matrices, 0, 2)
    assert best.positions == [0, 1, 2, 2]
    assert best.score == pytest.approx(0.252)
    assert beam_route(matrices, 0, 2, width=1).positions == greedy.positions
    # Width 2 keeps (0,1,0) 0.35 and (0,1,2) 0.28 after layer 2, then finds 0.252.
    beam = beam_route(matrices, 0, 2, width=2)
    assert beam.positions == [0, 1, 2, 2] and beam.score == pytest.approx(0.252)


def test_causal_routes_never_pass_the_output_position():
    # Lower-triangular (causal) matrices, T = 4, L = 3, source 0, output 1. From key 0
    # the largest weights point at position 3, which can never come back to 1.
    matrices = torch.zeros(3, 4, 4, dtype=torch.float64)
    for layer in range(3):
        matrices[layer] = torch.tril(torch.ones(4, 4))
        matrices[layer, 3, :] = 2.0
        matrices[layer, 1, 0], matrices[layer, 1, 1] = 0.5, 0.2
    reach = reachable(matrices, 1)
    assert reach.tolist() == [[True, True, False, False]] * 2 + [
        [False, True, False, False]
    ]
    # Greedy: from 0, reachable candidates 0 (1.0) and 1 (0.5) -> 0; then 0 again.
    assert greedy_route(matrices, 0, 1).positions == [0, 0, 0, 1]
    assert greedy_route(matrices, 0, 1).score == pytest.approx(0.5)
    assert beam_route(matrices, 0, 1, width=1).positions == [0, 0, 0, 1]
    assert best_route(matrices, 0, 1).score == pytest.approx(0.5)


def test_best_route_matches_enumeration():
    torch.manual_seed(1)
    matrices = torch.rand(4, 4, 4, dtype=torch.float64)
    products = {
        (0, *middle, 3): matrices[0, middle[0], 0]
        * matrices[1, middle[1], middle[0]]
        * matrices[2, middle[2], middle[1]]
        * matrices[3, 3, middle[2]]
        for middle in itertools.product(range(4), repeat=3)
    }
    expected = max(products, key=products.get)
    assert best_route(matrices, 0, 3).positions == list(expected)
    assert best_route(matrices, 0, 3).score == pytest.approx(float(products[expected]))
    exhaustive = beam_route(matrices, 0, 3, width=16)  # T^(L-2) partial routes
    assert exhaustive.positions == list(expected)


def _two_layer_attention() -> torch.Tensor:
    """L = 2, A = 2, T = 2. Layer 1's head mean is [[1, 0], [0.5, 0.5]]."""
    layer1 = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    layer2 = torch.tensor([[[0.5, 0.5], [0.0, 1.0]], [[0.5, 0.5], [0.0, 1.0]]])
    return torch.stack([layer1, layer2]).double()


def test_rollout_by_hand():
    # (A + I) / 2: layer 1 [[1, 0], [0.25, 0.75]], layer 2 [[0.75, 0.25], [0, 1]].
    # R = Ab2 @ Ab1 = [[0.75 + 0.0625, 0.1875], [0.25, 0.75]].
    rollout = attention_rollout(_two_layer_attention())
    expected = torch.tensor([[0.8125, 0.1875], [0.25, 0.75]], dtype=torch.float64)
    assert torch.allclose(rollout, expected)
    # Source 1 reaches output 0 only through (1, 1): 0.75 * 0.25 = R[0, 1].
    route = rollout_route(_two_layer_attention(), 1, 0)
    assert route.positions == [1, 1, 0] and route.score == pytest.approx(0.1875)


def _flow_attention() -> torch.Tensor:
    """L = 2, A = 1, T = 3; source 0, output 2.

    Ab1 column 0 (capacities (0,0) -> (1,k)): [1, 0.3, 0.4].
    Ab2 row 2 (capacities (1,k) -> (2,2)): [0.1, 0.4, 0.5].
    Three disjoint paths: flow = min(1, .1) + min(.3, .4) + min(.4, .5) = 0.8, largest
    on k = 2; rollout = 0.1 + 0.12 + 0.2 = 0.42, largest share also on k = 2.
    """
    layer1 = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [0.8, 0.0, 0.2]])
    layer2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.8, 0.0]])
    return torch.stack([layer1, layer2])[:, None].double()


def test_flow_by_hand():
    attention = _flow_attention()
    value, flow = attention_flow(attention, 0, 2)
    assert value == pytest.approx(0.8)
    out = flow[(0, 0)]
    assert [out[(1, k)] for k in range(3)] == pytest.approx([0.1, 0.3, 0.4])
    route = flow_route(attention, 0, 2)
    assert route.positions == [0, 2, 2] and route.score == pytest.approx(0.8)
    assert float(attention_rollout(attention)[2, 0]) == pytest.approx(0.42)
    assert rollout_route(attention, 0, 2).positions == [0, 2, 2]


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


def test_conductance_route_by_hand():
    conductance = torch.tensor([[0.1, -0.5, 0.3], [-0.2, 0.4, -0.6]])
    assert conductance_route(conductance, 0, 2).positions == [0, 2, 1, 2]
    negative = conductance_route(conductance, 0, 2, sign=-1)
    assert negative.positions == [0, 1, 2, 2] and negative.score == pytest.approx(-0.6)


def test_conductance_route_never_moves_backwards_under_causal_attention():
    # 3 layers, 3 positions, causal attention (each position attends to itself and
    # earlier ones); the conductance peaks at position 0 after the route reached 1,
    # which a causal route cannot go back to: it must stay at 1 or move on to 2
    causal = torch.tril(torch.ones(3, 3)) / torch.arange(1, 4)[:, None]
    attention = causal.expand(3, 2, 3, 3)
    conductance = torch.tensor([[0.0, 0.9, 0.1], [0.9, 0.2, 0.1]])
    assert conductance_route(conductance, 0, 2).positions == [0, 1, 0, 2]
    route = conductance_route(conductance, 0, 2, attention=attention)
    assert route.positions == [0, 1, 1, 2]
    # full attention allows every position: the same route as without attention
    full = torch.full((3, 2, 3, 3), 1 / 3)
    assert conductance_route(conductance, 0, 2, attention=full).positions == [0, 1, 0, 2]


# ------------------------------------------------------------------------ orientation
def _authors_greedy(weights, source, target):
    """The authors' released greedy rule, written out independently: layer 1 (index 0)
    is skipped, then each token moves to what it attends to most, and the last step
    goes to the target; the score is the product of the weights used."""
    path, score, current = [source], 1.0, source
    for layer in range(1, len(weights) - 1):
        row = weights[layer][current]
        nxt = max(range(len(row)), key=lambda j: (row[j], -j))
        score *= row[nxt]
        path.append(nxt)
        current = nxt
    score *= weights[-1][current][target]
    return path + [target], score


def _random_attention(layers=4, heads=3, length=5, seed=3):
    torch.manual_seed(seed)
    return torch.softmax(
        torch.randn(layers, heads, length, length, dtype=torch.float64) * 2, -1
    )


def test_oriented_transposes_and_rejects_unknown():
    matrices = torch.arange(8.0).reshape(2, 2, 2)
    assert torch.equal(oriented(matrices, "flow"), matrices)
    assert torch.equal(oriented(matrices, "attends")[1], matrices[1].T)
    with pytest.raises(ValueError, match="orientation must be one of flow, attends"):
        oriented(matrices, "backwards")
    with pytest.raises(ValueError, match="RouteSpec.orientation"):
        RouteSpec("greedy", orientation="backwards")
    with pytest.raises(ValueError, match="orientation must be one of"):
        resolve_methods(["greedy"], "sideways")


def test_attends_greedy_matches_the_authors_rule():
    attention = _random_attention()
    weights = attention.amax(1)  # heads="max", as the authors' default
    spec = RouteSpec("greedy", heads="max", orientation="attends")
    for source in range(5):
        (route,) = reference_routes(spec, attention, [source], 2)
        path, score = _authors_greedy(weights.tolist(), source, 2)
        # Our route lists j_0 .. j_L: j_1 repeats the source (layer 1 unsearched).
        assert route.positions == [source] + path
        assert route.score == pytest.approx(score)
    flow = reference_routes(RouteSpec("greedy", heads="max"), attention, [0], 2)[0]
    assert flow.positions == greedy_route(weights, 0, 2).positions


def test_attends_greedy_by_hand():
    # L = 3, T = 3, source 0, output 2. Layer 2: token 0 attends most to 1 (0.5).
    m = torch.full((3, 3, 3), 0.1, dtype=torch.float64)
    m[1, 0] = torch.tensor([0.2, 0.5, 0.3])
    m[1, :, 0] = torch.tensor([0.2, 0.1, 0.7])  # what reads token 0 most: 2
    m[2, 1, 2] = 0.4
    route = greedy_route(oriented(m, "attends"), 0, 2, first_layer=2)
    assert route.positions == [0, 0, 1, 2]
    assert route.score == pytest.approx(0.5 * 0.4)  # layer 1 adds nothing
    # Flow: layer 1 ties (lowest position), layer 2 follows the reader of token 0.
    assert greedy_route(m, 0, 2).positions == [0, 0, 2, 2]


def test_attends_beam_and_best_against_enumeration():
    attention = _random_attention(seed=5)
    weights = attention_matrices(attention, "mean", True, True).transpose(-1, -2)
    source, target, length = 1, 3, 5

    def product(route, first):
        out = 1.0
        for layer in range(first, len(route)):
            out *= float(weights[layer - 1, route[layer], route[layer - 1]])
        return out

    skipped = {
        (source, source, a, b, target): product((source, source, a, b, target), 2)
        for a, b in itertools.product(range(length), repeat=2)
    }
    every = {
        (source, a, b, c, target): product((source, a, b, c, target), 1)
        for a, b, c in itertools.product(range(length), repeat=3)
    }
    beam = RouteSpec(
        "beam", residual=True, normalize=True, width=25, orientation="attends"
    )
    (route,) = reference_routes(beam, attention, [source], target)
    assert tuple(route.positions) == max(skipped, key=skipped.get)
    assert route.score == pytest.approx(max(skipped.values()))
    narrow = reference_routes(replace(beam, width=1), attention, [source], target)[0]
    greedy = RouteSpec("greedy", residual=True, normalize=True, orientation="attends")
    assert (
        narrow.positions
        == reference_routes(greedy, attention, [source], target)[0].positions
    )
    # The authors' DP searches every layer, in the attends reading.
    best = RouteSpec("best", residual=True, normalize=True, orientation="attends")
    (route,) = reference_routes(best, attention, [source], target)
    assert tuple(route.positions) == max(every, key=every.get)
    assert route.score == pytest.approx(max(every.values()))


def test_route_nodes_attends_reads_the_transposed_edge():
    attention = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    attention[0, :, 1, 0] = torch.tensor([0.9, 0.1])  # query 1 reads key 0: head 0
    attention[0, :, 0, 1] = torch.tensor([0.2, 0.6])  # token 0 attends to 1: head 1
    assert route_nodes(attention, [0, 1])[0].head == 0
    assert route_nodes(attention, [0, 1], orientation="attends")[0].head == 1


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


# ----------------------------------------------------------------- capture on models
@pytest.mark.parametrize("family", FAMILIES + MORE_FAMILIES)
def test_capture_attention_families(family):
    model = masked_lm(family).train()
    before = model.config._attn_implementation
    ids = torch.randint(5, 40, (2, 6))
    forward = masked_lm_logit_difference(model)
    attention = capture_attention(model, forward, ids, (OUTPUT, CORRECT, WRONG))
    assert attention.shape == (2, 3, 4, 6, 6)
    assert torch.allclose(
        attention.sum(-1), torch.ones(2, 3, 4, 6, dtype=torch.float64)
    )
    assert model.config._attn_implementation == before and model.training
    assert all(not (m._forward_hooks or m._forward_pre_hooks) for m in model.modules())
    model.eval().set_attn_implementation("eager")
    with torch.no_grad():
        expected = torch.stack(model(ids, output_attentions=True).attentions, dim=1)
    assert torch.allclose(attention, expected)


def test_capture_attention_restores_after_error():
    model = masked_lm("bert").train()
    before = model.config._attn_implementation

    def failing(input_ids):
        model(input_ids=input_ids)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        capture_attention(model, failing, torch.randint(5, 40, (1, 4)))
    assert model.config._attn_implementation == before and model.training
    assert all(not m._forward_hooks for m in model.modules())


# ------------------------------------------------------------- comparison on a model
@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**SMALL)).double()
    ids = torch.randint(5, 60, (2, 6))
    ids[:, OUTPUT] = MASK
    args = (
        torch.tensor([OUTPUT, OUTPUT]),
        torch.tensor([CORRECT, 12]),
        torch.tensor([WRONG, 13]),
    )
    ip = InfluencePatterns(masked_lm_logit_difference(model), model)
    result = compare(
        ip,
        ip.request(ids, MASK, None, args, output_position=OUTPUT, n_steps=8),
        methods=list(ROUTES),
    )
    return model, ip, ids, args, result


def test_compare_routes_are_valid(setting):
    model, _, ids, _, result = setting
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


def test_compare_with_attends_orientation(setting):
    model, ip, ids, args, result = setting
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


def test_compare_records_are_json_safe(setting):
    *_, result = setting
    assert len(result.records) == 2 * 5
    record = result.records[0]
    for name in ["guided"] + result.methods:
        entry = record[name]
        ratio = entry["influence"] / record["token_influence"]
        assert entry["sufficiency"] == pytest.approx(ratio)
    assert record["rollout"]["score"] is not None and record["guided"]["score"] is None
    json.dumps(result.to_dict(), allow_nan=False)
    assert set(result.summary()) == {"guided", *result.methods}


def test_guided_choice_dominates_where_routes_split(setting):
    """The one ordering that holds by construction.

    At the first layer where a reference route leaves the guided positions, the guided
    stage-A choice has at least the route's sign-adjusted influence, given the prefix.
    """
    *_, result = setting
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


def test_scoring_reproduces_guided_influence(setting):
    _, ip, ids, args, result = setting
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


def test_layer_conductance_completeness(setting):
    """Conductance through each layer sums to the QoI change of its interpolation.

    Captum's LayerConductance differences the layer between consecutive points: it
    converges like a Riemann sum (about 1% off at 32 trapezoid steps on this model).
    """
    model, ip, ids, args, _ = setting
    with analysis_mode(model):
        problem = ip.example_problem(
            ids, ids.new_full(ids.shape, MASK), None, args, 0, IntegrationSettings(32)
        )
        full = layer_conductance(problem, method="riemann_trapezoid")
        end, start = problem.endpoint_qoi()
        per_source = layer_conductance(problem, [1], method="riemann_trapezoid")
        change = _qoi(ip, ids[:1], args) - _qoi(ip, _swap(ids[:1], 1), args)
    assert full.shape == (1, 2, 6)
    expected = torch.full((1, 2), end - start, dtype=full.dtype)
    assert torch.allclose(full.sum(-1), expected, rtol=2e-2, atol=1e-6)
    assert torch.allclose(per_source.sum(-1), change.expand(1, 2), rtol=2e-2, atol=1e-6)


def _swap(ids, position):
    swapped = ids.clone()
    swapped[:, position] = MASK
    return swapped


def _qoi(ip, ids, args):
    with torch.no_grad():
        return ip.forward_func(ids, *[a[:1] for a in args])


@pytest.mark.parametrize("sources", [None, [1, 3]])
@pytest.mark.parametrize("internal_batch_size", [None, 7])
def test_layer_conductance_equals_captum_layer_by_layer(
    setting, sources, internal_batch_size
):
    """One pass over every layer equals Captum's LayerConductance run layer by layer
    on a forward function written here from the model's own ``inputs_embeds`` (no
    library hook), in float64, with and without Captum's internal batching."""
    model, ip, ids, args, _ = setting
    with analysis_mode(model):
        problem = ip.example_problem(
            ids, ids.new_full(ids.shape, MASK), None, args, 0, IntegrationSettings(8)
        )
        problem.internal_batch_size = internal_batch_size
        fast = layer_conductance(problem, sources)

    arguments = _source_interpolation(model, ids, sources, args)
    rows = len(arguments[0])
    expected = _captum_layer_by_layer(model, arguments, internal_batch_size)
    assert fast.dtype == torch.float64
    assert fast.shape == expected.shape == (rows, 2, ids.shape[1])
    assert torch.allclose(fast, expected, rtol=1e-10, atol=1e-12)


def test_layer_conductance_bounds_its_passes(setting, monkeypatch):
    """Without internal_batch_size a problem too large for one pass is split into
    passes of a few steps (Captum's batching, one step shared between passes), and
    the values are those of one unbatched pass of Captum's LayerConductance."""
    model, ip, ids, args, _ = setting
    calls = []
    original = conductance_module._LayersConductance._attribute

    def counted(self, *a, **k):
        calls.append(k.get("n_steps"))
        return original(self, *a, **k)

    monkeypatch.setattr(influence_module, "PASS_ELEMENTS", 1)
    monkeypatch.setattr(conductance_module._LayersConductance, "_attribute", counted)
    with analysis_mode(model):
        problem = ip.example_problem(
            ids, ids.new_full(ids.shape, MASK), None, args, 0, IntegrationSettings(8)
        )
        bounded = layer_conductance(problem, [1, 3])
    assert len(calls) == 8  # two points (one difference) per pass
    expected = _captum_layer_by_layer(
        model, _source_interpolation(model, ids, [1, 3], args), None
    )
    assert torch.allclose(bounded, expected, rtol=1e-10, atol=1e-12)


def _inputs_embeds_qoi(model):
    """The logit difference from word embeddings, through the model's own
    ``inputs_embeds`` (no library hook)."""

    def logit_difference(word_embeds, position, correct, wrong):
        logits = model(inputs_embeds=word_embeds).logits
        rows = torch.arange(len(logits))
        return logits[rows, position, correct] - logits[rows, position, wrong]

    return logit_difference


def _source_interpolation(model, ids, sources, args):
    """Example 0's word embeddings, baselines and QoI arguments: every token
    interpolated from [MASK] (``sources=None``) or one row per source."""
    embed = model.bert.embeddings.word_embeddings
    with torch.no_grad():
        inputs = embed(ids[:1])
        masked = embed(ids.new_full(ids[:1].shape, MASK))
    if sources is None:
        baselines = masked
    else:
        inputs = inputs.expand(len(sources), -1, -1)
        baselines = inputs.clone()
        baselines[range(len(sources)), sources] = masked[0, sources]
    return inputs, baselines, tuple(arg[:1].expand(len(inputs)) for arg in args)


def _captum_layer_by_layer(
    model, arguments, internal_batch_size, n_steps=8, method="gausslegendre"
):
    """Captum's ``LayerConductance`` of each layer below the last in turn, summed over
    hidden units, through :func:`_inputs_embeds_qoi`, with the model in eval mode
    (the fixture's model is built in train mode) and its mode restored after."""
    inputs, baselines, forward_args = arguments
    forward = _inputs_embeds_qoi(model)
    training = model.training
    model.eval()
    try:
        return torch.stack(
            [
                LayerConductance(forward, layer)
                .attribute(
                    inputs,
                    baselines=baselines,
                    additional_forward_args=forward_args,
                    n_steps=n_steps,
                    method=method,
                    internal_batch_size=internal_batch_size,
                )
                .sum(-1)
                for layer in model.bert.encoder.layer[:-1]
            ],
            dim=1,
        ).detach()
    finally:
        model.train(training)


def test_conductance_under_the_authors_rule(setting):
    """``method="authors"`` (which Captum does not know) takes the authors' points,
    linspace(0, 1, n): compare runs the conductance routes, and the conductance is
    Captum's with the trapezoid rule's points, which are those points."""
    model, ip, ids, args, _ = setting
    request = ip.request(
        ids, MASK, None, args, output_position=OUTPUT, n_steps=9, method="authors"
    )
    result = compare(ip, request, methods=["conductance"])
    assert [p.source for p in result.patterns[0]["conductance"]] == [0, 1, 2, 3, 5]
    with analysis_mode(model):
        problem = ip.example_problem(
            ids, ids.new_full(ids.shape, MASK), None, args, 0,
            IntegrationSettings(9, "authors"),
        )
        authors = layer_conductance(problem, [1], method="authors")
    expected = _captum_layer_by_layer(
        model,
        _source_interpolation(model, ids, [1], args),
        None,
        n_steps=9,
        method="riemann_trapezoid",
    )
    assert torch.allclose(authors, expected, rtol=1e-10, atol=1e-12)


def test_gated_route_scores_bound_their_passes(setting, monkeypatch):
    """The gated reverse passes that score routes (the reference schedule, and the
    fast one's fallback) split their rows to stay under PASS_ELEMENTS without
    internal_batch_size; the influences do not change."""
    _, ip, ids, args, result = setting
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
