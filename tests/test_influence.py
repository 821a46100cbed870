"""The identities of docs/method.md, section 5, in float64, on tiny models of every
family."""

from __future__ import annotations


import torch
from captum.attr import LayerIntegratedGradients

from captum_influence_patterns import analysis_mode
from captum_influence_patterns.graph.gating import Gates
from captum_influence_patterns.influence import node_influence, token_influence
from captum_influence_patterns.testing import (
    FAMILIES,
    MASK_ID,
    agreement_batch,
    attribution,
    gated_outputs_equal,
    masked_lm,
    problem,
)

TOL = 1e-9


def _one_hot(positions, length):
    return torch.nn.functional.one_hot(torch.as_tensor(positions), length).double()


class TestTokenInfluence:
    def test_matches_captum_layer_integrated_gradients(self) -> None:
        model = masked_lm("bert")
        ids, args = agreement_batch()
        with analysis_mode(model):
            p = problem(model, ids, args, n_steps=20)
            g, _ = token_influence(p)
            lig = LayerIntegratedGradients(
                attribution(model).forward_func, model.bert.embeddings.word_embeddings
            )
            expected = lig.attribute(
                ids[:1],
                baselines=torch.full_like(ids[:1], MASK_ID),
                additional_forward_args=tuple(a[:1] for a in args),
                n_steps=20,
            ).sum(-1)[0]
        # Captum casts its quadrature weights to float32, hence a 1e-7 relative gap.
        torch.testing.assert_close(g, expected, atol=1e-10, rtol=1e-6)

    def test_completeness_improves_with_steps(self) -> None:
        model = masked_lm("bert")
        ids, args = agreement_batch()
        with analysis_mode(model):
            errors = []
            for steps in (4, 64):
                p = problem(model, ids, args, n_steps=steps)
                g, _ = token_influence(p)
                end, start = p.endpoint_qoi()
                errors.append(abs(float(g.sum()) - (end - start)))
        assert errors[1] < 1e-6
        assert errors[1] < errors[0]


class TestCutConservation:
    def test_every_layer_every_family(self, subtests) -> None:
        for family in FAMILIES:
            with subtests.test(family=family):
                model = masked_lm(family)
                ids, args = agreement_batch()
                with analysis_mode(model):
                    p = problem(model, ids, args, n_steps=8)
                    g, _ = token_influence(p)
                    sources = torch.tensor([0, 2, 6])
                    for layer in range(p.graph.num_layers + 1):
                        cut = node_influence(p, sources, layer, "embedding")
                        total = cut[("embedding", layer)].sum(-1)
                        torch.testing.assert_close(
                            total, g[sources], atol=TOL, rtol=1e-7
                        )
                    for layer in range(1, p.graph.num_layers + 1):
                        cut = node_influence(p, sources, layer, "attention")
                        total = cut[("heads", layer)].sum((1, 2)) + cut[
                            ("skip", layer)
                        ].sum(1)
                        torch.testing.assert_close(
                            total, g[sources], atol=TOL, rtol=1e-7
                        )

    def test_upstream_prefix_and_heads_plus_skip(self) -> None:
        """With upstream gated to a prefix, the cut sums to the prefix's influence, and
        inside a layer heads + skip = node, under the same gates."""
        model = masked_lm("bert")
        ids, args = agreement_batch()
        with analysis_mode(model):
            p = problem(model, ids, args, n_steps=8)
            length = p.num_positions
            sources = torch.tensor([1, 5])
            prefix = {1: [3, 2], 2: [3, 0]}  # j_1, j_2 per source
            for layer in (2, 3):
                gates = Gates(
                    embedding={k: _one_hot(prefix[k], length) for k in range(1, layer)}
                )
                below = Gates(
                    embedding={
                        k: _one_hot(prefix[k], length) for k in range(1, layer - 1)
                    }
                )
                at_layer = node_influence(p, sources, layer, "embedding", gates)
                at_prefix_end = node_influence(
                    p, sources, layer - 1, "embedding", below
                )
                prefix_value = at_prefix_end[("embedding", layer - 1)][
                    torch.arange(2), torch.tensor(prefix[layer - 1])
                ]
                torch.testing.assert_close(
                    at_layer[("embedding", layer)].sum(-1),
                    prefix_value,
                    atol=TOL,
                    rtol=1e-7,
                )
                inside = node_influence(p, sources, layer, "attention", gates)
                node_sum = inside[("heads", layer)].sum(-1) + inside[("skip", layer)]
                torch.testing.assert_close(
                    node_sum, at_layer[("embedding", layer)], atol=TOL, rtol=1e-7
                )

    def test_skip_counts_only_its_own_branch(self) -> None:
        """The skip's influence differs from reading d/dh^{l-1} (which adds attention
        paths),
        and moving position through the skip carries exactly nothing."""
        model = masked_lm("bert")
        ids, args = agreement_batch()
        with analysis_mode(model):
            p = problem(model, ids, args, n_steps=8)
            sources = torch.tensor([2])
            gates = Gates(embedding={1: _one_hot([2], p.num_positions)})
            inside = node_influence(p, sources, 2, "attention", gates)
            skip = inside[("skip", 2)][0]
            assert torch.all(skip[torch.arange(p.num_positions) != 2] == 0)
            below = node_influence(p, sources, 1, "embedding")[("embedding", 1)][0, 2]
            assert abs(float(below - skip[2])) > 1e-6


class TestGatesKeepForwardValues:
    def test_outputs_bit_identical(self, subtests) -> None:
        for family in FAMILIES:
            with subtests.test(family=family):
                assert gated_outputs_equal(masked_lm(family))

