"""method="authors": the integration rule of the authors' released code."""

from __future__ import annotations

import math

import torch

from captum_influence_patterns.quadrature import METHODS, integration_rule
from captum_influence_patterns.testing import (
    MASK_ID,
    agreement_batch,
    agreement_keywords,
    attribution,
    masked_lm,
    problem,
)
import pytest

STEPS = 6
TOL = dict(atol=1e-12, rtol=1e-9)


def _authors_ig(model, ids, args, n_steps):
    """Token influence g (B, T) with the authors' rule, written out by hand: the model
    run on ``inputs_embeds`` (no hooks of the library) at alpha = k / (n - 1), each
    point weighted 1 / n."""
    return torch.stack(
        [
            _authors_ig_one(model, ids[b], [int(a[b]) for a in args], n_steps)
            for b in range(ids.shape[0])
        ]
    )


def _authors_ig_one(model, ids, args, n_steps):
    position, correct, wrong = args
    words = model.get_input_embeddings()
    x, baseline = words(ids), words(torch.full_like(ids, MASK_ID))
    g = torch.zeros(ids.shape[0], dtype=torch.float64)
    for k in range(n_steps):
        point = (baseline + (k / (n_steps - 1)) * (x - baseline)).detach()
        point.requires_grad_()
        logits = model(inputs_embeds=point[None]).logits[0, position]
        (grad,) = torch.autograd.grad(logits[correct] - logits[wrong], point)
        g += (grad * (x - baseline)).sum(-1).detach() / n_steps
    return g


class TestRule:
    def test_points_and_weights(self) -> None:
        alphas, weights = integration_rule("authors", 5)
        assert alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
        assert weights == [0.2] * 5
        # the README's 51 points: 0, 0.02, ..., 1, each weighted 1/51
        alphas, weights = integration_rule("authors", 51)
        for k in range(51):
            assert abs(alphas[k] - 0.02 * k) <= 1e-15
            assert abs(weights[k] - 1 / 51) <= 1e-17

    def test_captum_rules_pass_through(self) -> None:
        # three-point Gauss-Legendre on [0, 1]: (1 -+ sqrt(3/5)) / 2 and 1/2
        alphas, weights = integration_rule("gausslegendre", 3)
        root = math.sqrt(3 / 5) / 2
        for got, want in zip(sorted(alphas), [0.5 - root, 0.5, 0.5 + root]):
            assert abs(got - want) <= 1e-12
        for got, want in zip(sorted(weights), [5 / 18, 5 / 18, 8 / 18]):
            assert abs(got - want) <= 1e-12
        assert integration_rule("riemann_left", 4)[0] == [0, 0.25, 0.5, 0.75]
        assert "authors" in METHODS

    def test_bad_settings(self, subtests) -> None:
        with pytest.raises(ValueError, match="n_steps.*authors.*>= 2"):
            integration_rule("authors", 1)
        with pytest.raises(ValueError, match="method.*authors"):
            integration_rule("simpson", 4)
        model = masked_lm("bert")
        ids, args = agreement_batch(batch=1)
        ip = attribution(model)
        for kwargs, message in (
            (dict(n_steps=1, method="authors"), "n_steps"),
            (dict(n_steps=4, method="Authors"), "method.*authors"),
        ):
            with subtests.test(**kwargs), pytest.raises(ValueError, match=message):
                ip.attribute(
                    ids, additional_forward_args=args, output_position=4, **kwargs
                )

    def test_example_problem_uses_the_rule(self) -> None:
        model = masked_lm("bert")
        ids, args = agreement_batch(batch=1)
        built = problem(model, ids, args, n_steps=5, method="authors")
        torch.testing.assert_close(
            built.alphas, torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64)
        )
        torch.testing.assert_close(
            built.weights, torch.full((5,), 0.2, dtype=torch.float64)
        )


class TestEndToEnd:
    def test_tiny_bert_fast_reference_and_by_hand_agree(self) -> None:
        model = masked_lm("bert")
        ids, args = agreement_batch()
        ip = attribution(model)
        kwargs = agreement_keywords(
            args, n_steps=STEPS, method="authors", return_convergence_delta=True
        )
        fast = ip.attribute(ids, **kwargs)
        reference = ip.attribute(ids, schedule="reference", **kwargs)
        assert fast.metadata["method"] == "authors"
        brute = ip.pattern_influence(
            ids,
            fast.patterns,
            baselines=MASK_ID,
            additional_forward_args=args,
            n_steps=STEPS,
            method="authors",
        )
        for row_fast, row_reference, values in zip(
            fast.patterns, reference.patterns, brute
        ):
            for a, b in zip(row_fast, row_reference):
                assert a.positions == b.positions
                assert [(n.kind, n.head) for n in a.nodes] == \
                    [(n.kind, n.head) for n in b.nodes]
                assert abs(a.influence - b.influence) <= 1e-12
            reported = torch.tensor(
                [p.influence for p in row_fast], dtype=torch.float64
            )
            torch.testing.assert_close(values, reported, **TOL)
        # g against the rule written out by hand (sources: every position but 4)
        by_hand = _authors_ig(model, ids, args, STEPS)
        sources = [0, 1, 2, 3, 5, 6]
        torch.testing.assert_close(
            fast.token_influence[:, sources], by_hand[:, sources], **TOL
        )
        # a different rule from Gauss-Legendre: g moves
        gauss = ip.attribute(ids, **{**kwargs, "method": "gausslegendre"})
        assert float((gauss.token_influence - fast.token_influence).abs().max()) > 1e-4

