"""Contribution-based routes (docs/method.md, section 8.3): ALTI on a model small
enough to compute by hand, information flow routes against LLM-TT's graph, and the
decompositions on every family."""

from __future__ import annotations

import math
from typing import List

import networkx as nx
import pytest
import torch
from transformers import BertForMaskedLM

from captum_influence_patterns import analysis_mode
from captum_influence_patterns.routes.compare import (
    CONTRIBUTION_ROUTES,
    ROUTES,
    RouteSpec,
    compare,
    reference_routes,
)
from captum_influence_patterns.routes.contributions import (
    Contributions,
    example_contributions,
    flow_matrices,
)
from captum_influence_patterns.testing import (
    FAMILIES,
    MORE_FAMILIES,
    agreement_batch,
    agreement_keywords,
    family_model,
    attribution,
    masked_lm,
    problem,
)


# ------------------------------------------------------------- ALTI by hand, 2 tokens
def _two_token_bert() -> BertForMaskedLM:
    # one layer, one head, hidden size 4, no dropout (seed 4), then every parameter
    # drawn from N(0, 1)
    model = family_model(
        "bert", 4, weight_scale=1.0, config=dict(type_vocab_size=1), vocab_size=10,
        hidden_size=4, num_hidden_layers=1, num_attention_heads=1, intermediate_size=6,
        max_position_embeddings=2, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()  # biases and LayerNorm weights too
    return model


def _layer_norm(z: List[float], gamma: List[float], beta: List[float], eps: float):
    mean = sum(z) / len(z)
    var = sum((v - mean) ** 2 for v in z) / len(z)
    scale = math.sqrt(var + eps)
    return [g * (v - mean) / scale + b for v, g, b in zip(z, gamma, beta)]


def _matvec(weight: torch.Tensor, x: List[float], bias=None) -> List[float]:
    rows = weight.tolist()
    out = [sum(w * v for w, v in zip(row, x)) for row in rows]
    if bias is not None:
        out = [o + b for o, b in zip(out, bias.tolist())]
    return out


def _hand_alti(model: BertForMaskedLM, ids: List[int]) -> List[List[float]]:
    """ALTI's C^1 of a 1-layer, 1-head BERT, in plain Python from the weights
    (Ferrando et al. 2022, eq. 4-7): no hook, no tensor op of the code under test."""
    emb, layer = model.bert.embeddings, model.bert.encoder.layer[0]
    eps = emb.LayerNorm.eps
    x = [
        _layer_norm(
            [
                w + p + s
                for w, p, s in zip(
                    emb.word_embeddings.weight[token].tolist(),
                    emb.position_embeddings.weight[j].tolist(),
                    emb.token_type_embeddings.weight[0].tolist(),
                )
            ],
            emb.LayerNorm.weight.tolist(),
            emb.LayerNorm.bias.tolist(),
            eps,
        )
        for j, token in enumerate(ids)
    ]
    attention = layer.attention.self
    q = [_matvec(attention.query.weight, xj, attention.query.bias) for xj in x]
    k = [_matvec(attention.key.weight, xj, attention.key.bias) for xj in x]
    v = [_matvec(attention.value.weight, xj, attention.value.bias) for xj in x]
    dense = layer.attention.output.dense
    f = [_matvec(dense.weight, vj) for vj in v]  # W_O v_j, no output bias
    out_norm = layer.attention.output.LayerNorm
    gamma, beta = out_norm.weight.tolist(), out_norm.bias.tolist()
    matrix = []
    for i in range(2):
        scores = [sum(a * b for a, b in zip(q[i], k[j])) / 2.0 for j in range(2)]
        top = max(scores)
        exps = [math.exp(s - top) for s in scores]
        alpha = [e / sum(exps) for e in exps]
        summed = [
            alpha[0] * f[0][d] + alpha[1] * f[1][d] + dense.bias[d].item() + x[i][d]
            for d in range(4)
        ]
        y = _layer_norm(summed, gamma, beta, out_norm.eps)
        mean = sum(summed) / 4
        sigma = math.sqrt(sum((s - mean) ** 2 for s in summed) / 4 + out_norm.eps)
        row = []
        for j in range(2):
            part = [alpha[j] * f[j][d] + (x[i][d] if i == j else 0.0) for d in range(4)]
            centre = sum(part) / 4
            transformed = [g * (p - centre) / sigma for p, g in zip(part, gamma)]
            y_norm = sum(abs(value) for value in y)
            distance = sum(abs(a - b) for a, b in zip(y, transformed))
            row.append(max(0.0, y_norm - distance))
        matrix.append([value / sum(row) for value in row])
    return matrix


def test_alti_two_tokens_one_head_by_hand():
    model = _two_token_bert()
    ids = [5, 7]
    with analysis_mode(model):
        p = problem(model, torch.tensor([ids]), (torch.tensor([1]),) * 3, n_steps=2)
        found = example_contributions(p, 1)
    expected = torch.tensor(_hand_alti(model, ids), dtype=torch.float64)
    assert torch.allclose(found.alti[0], expected, atol=1e-12, rtol=1e-10)
    assert not torch.allclose(expected, torch.eye(2, dtype=torch.float64))


# ------------------------------------------------- information flow against LLM-TT
def _llm_tt_tree(
    heads: torch.Tensor,
    residual: torch.Tensor,
    ffn: torch.Tensor,
    output: int,
    tau: float,
) -> nx.DiGraph:
    """LLM-TT's ``build_full_graph`` (renormalising threshold tau) and
    ``build_paths_to_predictions`` (edges above tau, reached from the output), as
    that code writes them: nodes X0_j, A{l}_i, M{l}_i, I{l}_i; an edge from a token
    to itself sums the heads' part and the residual's."""
    layers, tokens = residual.shape
    graph = nx.DiGraph()

    def add(u: str, v: str, w: float) -> None:
        if graph.has_edge(u, v):
            graph[u][v]["weight"] += w
        else:
            graph.add_edge(u, v, weight=w)

    for layer in range(layers):
        c_attn, c_res = heads[layer].clone(), residual[layer].clone()
        c_attn, c_res = c_attn * (c_attn > tau), c_res * (c_res > tau)
        denom = c_attn.sum((-1, -2)) + c_res
        c_attn, c_res = c_attn / denom[:, None, None], c_res / denom
        below = (lambda j: f"I{layer - 1}_{j}") if layer else (lambda j: f"X0_{j}")
        for i in range(tokens):
            for j in range(tokens):
                add(below(j), f"A{layer}_{i}", float(c_attn[i, j].sum()))
            add(below(i), f"A{layer}_{i}", float(c_res[i]))
        c_ffn = ffn[layer] * (ffn[layer] > tau)
        c_ffn = c_ffn / c_ffn.sum(-1, keepdim=True)
        for i in range(tokens):
            add(f"A{layer}_{i}", f"M{layer}_{i}", float(c_ffn[i, 0]))
            add(f"M{layer}_{i}", f"I{layer}_{i}", float(c_ffn[i, 0]))
            add(f"A{layer}_{i}", f"I{layer}_{i}", float(c_ffn[i, 1]))
    reverse = graph.reverse()
    kept = nx.subgraph_view(
        reverse, filter_edge=lambda u, v: reverse[u][v]["weight"] > tau
    )
    edges = nx.edge_dfs(kept, source=f"I{layers - 1}_{output}")
    return kept.edge_subgraph(edges).reverse()


def _hand_contributions() -> Contributions:
    """Two layers, three tokens, one head; the output is token 2. Every row of
    (head parts, residual) sums to 1, as the proximity normalises it."""
    heads = torch.tensor(
        [
            # layer 1: token i's parts from tokens j (rows i, columns j)
            [[0.00, 0.02, 0.00], [0.70, 0.00, 0.00], [0.03, 0.50, 0.00]],
            # layer 2
            [[0.00, 0.00, 0.00], [0.00, 0.00, 0.00], [0.45, 0.35, 0.00]],
        ],
        dtype=torch.float64,
    )[..., None]
    residual = 1 - heads.sum((-1, -2))
    ffn = torch.tensor(
        [[[0.3, 0.7], [0.9, 0.1], [0.5, 0.5]], [[0.2, 0.8], [0.2, 0.8], [0.03, 0.97]]],
        dtype=torch.float64,
    )
    zeros = torch.zeros(2, 3, 3, dtype=torch.float64)
    return Contributions(
        alti=zeros,
        heads=heads,
        residual=residual,
        ffn=ffn,
        norms=zeros + 1,
        head_norms=heads,
        residual_norms=residual,
        logit=torch.zeros(2, 3, 1, dtype=torch.float64),
        output_position=2,
        input_gradient=torch.zeros(3, 1, dtype=torch.float64),
        split_mlp=True,
    )


def test_information_flow_agrees_with_llm_tt_by_hand():
    found, tau = _hand_contributions(), 0.04
    routes = reference_routes(
        ROUTES["information_flow"],
        torch.zeros(2, 1, 3, 3),
        [0, 1, 2],
        2,
        contributions=found,
    )
    # By hand. Layer 1 after the threshold: token 0 keeps only its residual (0.02
    # dropped): 1.0; token 1 = 0.70 from 0, 0.30 own; token 2 = 0.50 / 0.97 from 1,
    # 0.47 / 0.97 own (0.03 from 0 dropped). FFN: token 0 keeps 0.7 (residual),
    # token 1 0.9 (MLP), token 2 0.5. Layer 2, token 2: 0.45 from 0, 0.35 from 1,
    # 0.20 own; FFN residual 0.97 -> 1.0 after dropping 0.03.
    # Source 0: 0 -> 0 (1.0 * 0.7) -> 2 (0.45 * 1.0) = 0.315;
    #           0 -> 1 (0.70 * 0.9) -> 2 (0.35) = 0.2205; 0 -> 2 dropped.
    # Source 1: 1 -> 1 (0.30 * 0.9) -> 2 (0.35) = 0.0945;
    #           1 -> 2 (0.50 / 0.97 * 0.5) -> 2 (0.20) = 0.0515...
    # Source 2: 2 -> 2 (0.47 / 0.97 * 0.5) -> 2 (0.20) = 0.047 / 0.97.
    expected = {
        0: ([0, 0, 2], 0.315),
        1: ([1, 1, 2], 0.0945),
        2: ([2, 2, 2], 0.047 / 0.97),
    }
    tree = _llm_tt_tree(found.heads, found.residual, found.ffn, 2, tau)
    for source, route in zip([0, 1, 2], routes):
        positions, score = expected[source]
        assert route.positions == positions
        assert route.score == pytest.approx(score, rel=1e-12)
        # every step is an edge of LLM-TT's tree of the prediction
        for layer in range(1, 3):
            below = (
                f"I{layer - 2}_{positions[layer - 1]}"
                if layer > 1
                else f"X0_{positions[0]}"
            )
            assert tree.has_edge(below, f"A{layer - 1}_{positions[layer]}")
    # the 0.03 edge is in neither
    assert not tree.has_edge("X0_0", "A0_2")
    assert float(flow_matrices(found, tau)[0, 2, 0]) == 0.0
    # heads and skips the edges give: source 0 stays (residual 1.0 > head 0.0) and
    # then moves through the head; the FFN node is the larger kept edge
    assert routes[0].nodes == [(None, "residual"), (0, "residual")]
    assert routes[1].nodes[0] == (None, "mlp")


def test_information_flow_unconnected_source_scores_zero():
    found = _hand_contributions()
    spec = RouteSpec("information_flow", threshold=0.6)
    (route,) = reference_routes(
        spec, torch.zeros(2, 1, 3, 3), [0], 2, contributions=found
    )
    assert route.score == 0.0
    assert route.positions[0] == 0 and route.positions[-1] == 2


def test_route_spec_threshold_and_contributions_required():
    with pytest.raises(ValueError, match="threshold"):
        RouteSpec("information_flow", threshold=1.0)
    with pytest.raises(ValueError, match="contributions are required"):
        reference_routes(ROUTES["alti"], torch.zeros(2, 1, 3, 3), [0], 2)


# ------------------------------------------------------------------ every family
@pytest.mark.parametrize("family", FAMILIES + MORE_FAMILIES)
def test_decompositions_every_family(family):
    model = masked_lm(family)
    ids, args = agreement_batch(batch=1)
    with analysis_mode(model):
        found = example_contributions(problem(model, ids, args, n_steps=2), 4)
    ones = torch.ones(3, 7, dtype=torch.float64)
    assert torch.allclose(found.alti.sum(-1), ones)
    assert torch.allclose(found.heads.sum((-1, -2)) + found.residual, ones)
    assert torch.allclose(found.ffn.sum(-1), ones)
    assert bool((found.alti >= 0).all())
    if family in ("gpt2", "llama"):  # causal: nothing from later tokens
        assert bool((found.alti.triu(1) == 0).all())
        assert bool((found.norms.triu(1) == 0).all())
    # the terms of ALTI-Logit are read at the output position from R^{l-1}
    terms = found.alti_logit()
    assert torch.allclose(terms[0], torch.diag(found.logit[0].sum(-1)))


@pytest.mark.parametrize("split_mlp", [False, True])
def test_compare_contribution_routes_every_family(split_mlp):
    for family in FAMILIES + MORE_FAMILIES:
        model = masked_lm(family)
        ids, args = agreement_batch(batch=1)
        ip = attribution(model, split_mlp)
        result = compare(
            ip,
            ip.request(ids, **agreement_keywords(args, n_steps=3)),
            methods=list(CONTRIBUTION_ROUTES),
        )
        causal = family in ("gpt2", "llama")
        for name in CONTRIBUTION_ROUTES:
            for pattern in result.patterns[0][name]:
                positions = pattern.positions
                assert positions[-1] == 4 and positions[0] == pattern.source
                if causal:
                    assert positions == sorted(positions), (family, name)
                for node in pattern.nodes:
                    assert (node.ffn is not None) == split_mlp
                assert math.isfinite(pattern.influence)
