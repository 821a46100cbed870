"""routes/finders.py: the reference route finders' known answers on hand-built
attention (greedy, best, beam, rollout, flow), checked against enumeration, in both
orientations."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from captum_influence_patterns.routes.attention import (
    attention_matrices,
    attention_rollout,
)
from captum_influence_patterns.routes.compare import (
    RouteSpec,
    reference_routes,
    resolve_methods,
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
        "attention_beam", residual=True, normalize=True, width=25, orientation="attends"
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


