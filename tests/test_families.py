"""The shared exactness suite on DistilBERT, ALBERT, GPT-2 and Llama (grouped-query
attention), whose residual adds are inline code rather than a submodule's arguments."""

from __future__ import annotations

import unittest

import torch

from captum_influence_patterns import (
    InfluencePatterns,
    analysis_mode,
    masked_lm_logit_difference,
)
from captum_influence_patterns.influence import node_influence, token_influence
from tests.test_attribution_api import _all_hooks_removed, _snapshot
from tests.test_search import _assert_same_patterns
from tests.tiny_models import (
    MASK_ID,
    MORE_FAMILIES,
    agreement_batch,
    attribution,
    gated_outputs_equal,
    masked_lm,
    problem,
)

# Llama's RMSNorm and rotary tables compute in float32 even in a float64 model, so its
# forward-mode and reverse derivatives agree to float32 precision only.
TOLERANCE = {"llama": dict(atol=1e-6, rtol=1e-5)}
EXACT = dict(atol=1e-12, rtol=1e-9)


def _run(model, ids, args, **kwargs):
    return attribution(model).attribute(
        ids,
        baselines=MASK_ID,
        additional_forward_args=args,
        output_position=4,
        n_steps=8,
        **kwargs,
    )


class TestMoreFamilies(unittest.TestCase):
    def test_cut_conservation(self) -> None:
        for family in MORE_FAMILIES:
            with self.subTest(family=family):
                tol = TOLERANCE.get(family, EXACT)
                model = masked_lm(family)
                ids, args = agreement_batch()
                with analysis_mode(model):
                    p = problem(model, ids, args, n_steps=6)
                    g, _ = token_influence(p)
                    sources = torch.tensor([0, 3])
                    for layer in range(p.graph.num_layers + 1):
                        cut = node_influence(p, sources, layer, "embedding")
                        torch.testing.assert_close(
                            cut[("embedding", layer)].sum(-1), g[sources], **tol
                        )
                    for layer in range(1, p.graph.num_layers + 1):
                        cut = node_influence(p, sources, layer, "attention")
                        total = cut[("heads", layer)].sum((1, 2)) + cut[
                            ("skip", layer)
                        ].sum(1)
                        torch.testing.assert_close(total, g[sources], **tol)

    def test_fast_equals_reference_equals_brute_force(self) -> None:
        for family in MORE_FAMILIES:
            with self.subTest(family=family):
                tol = TOLERANCE.get(family, EXACT)
                model = masked_lm(family)
                before = _snapshot(model)
                ids, args = agreement_batch()
                fast = _run(model, ids, args)
                reference = _run(model, ids, args, schedule="reference")
                if family == "llama":
                    for a, b in zip(fast.patterns[0], reference.patterns[0]):
                        self.assertEqual(a.positions, b.positions)
                        self.assertAlmostEqual(a.influence, b.influence, delta=1e-5)
                else:
                    _assert_same_patterns(self, fast, reference)
                brute = attribution(model).pattern_influence(
                    ids,
                    fast.patterns,
                    baselines=MASK_ID,
                    additional_forward_args=args,
                    n_steps=8,
                )
                for row, values in zip(fast.patterns, brute):
                    reported = torch.tensor(
                        [p.influence for p in row], dtype=torch.float64
                    )
                    torch.testing.assert_close(values, reported, **tol)
                after = _snapshot(model)
                self.assertEqual(before[:3], after[:3])
                _all_hooks_removed(self, model)
                if attribution(model).graph.is_causal:
                    for row in fast.patterns:
                        for p in row:
                            self.assertLess(p.source, 4)
                            self.assertEqual(p.positions, sorted(p.positions))

    def test_gates_keep_forward_values(self) -> None:
        for family in ("bert",) + MORE_FAMILIES:
            for split_mlp in (False, True):
                with self.subTest(family=family, split_mlp=split_mlp):
                    model = masked_lm(family)
                    self.assertTrue(gated_outputs_equal(model, split_mlp))

    def test_mlp_split_exactness_every_family(self) -> None:
        """With the MLP split off: MLP + residual = node at every layer, and the
        finer route agrees across fast, reference and brute force."""
        for family in ("bert",) + MORE_FAMILIES:
            with self.subTest(family=family):
                tol = TOLERANCE.get(family, EXACT)
                model = masked_lm(family)
                ids, args = agreement_batch()
                ip = InfluencePatterns(
                    masked_lm_logit_difference(model), model, split_mlp=True
                )
                kwargs = dict(
                    baselines=MASK_ID,
                    additional_forward_args=args,
                    output_position=4,
                    n_steps=6,
                )
                fast = ip.attribute(ids, **kwargs)
                reference = ip.attribute(ids, schedule="reference", **kwargs)
                for a, b in zip(fast.patterns[0], reference.patterns[0]):
                    self.assertEqual(
                        [(n.kind, n.head, n.ffn) for n in a.nodes],
                        [(n.kind, n.head, n.ffn) for n in b.nodes],
                    )
                    self.assertAlmostEqual(a.influence, b.influence, delta=1e-6)
                    for node, (mlp, residual) in zip(a.nodes, a.ffn_candidates):
                        sign = a.sign
                        self.assertEqual(
                            node.ffn,
                            "mlp" if sign * mlp > sign * residual else "residual",
                        )
                    self.assertEqual(a.influence, a.nodes[-1].ffn_influence)
                brute = ip.pattern_influence(
                    ids,
                    fast.patterns,
                    baselines=MASK_ID,
                    additional_forward_args=args,
                    n_steps=6,
                )[0]
                reported = torch.tensor(
                    [p.influence for p in fast.patterns[0]], dtype=torch.float64
                )
                torch.testing.assert_close(brute, reported, **tol)
                with analysis_mode(model):
                    p = problem(model, ids, args, n_steps=6)
                    p.graph.split_mlp = True
                    sources = torch.tensor([0, 2])
                    for layer in range(1, p.graph.num_layers + 1):
                        ffn = node_influence(p, sources, layer, "feedforward")
                        node = node_influence(p, sources, layer, "embedding")
                        torch.testing.assert_close(
                            ffn[("mlp", layer)] + ffn[("residual", layer)],
                            node[("embedding", layer)],
                            **tol,
                        )
                with self.assertRaisesRegex(ValueError, "split_mlp=True"):
                    attribution(model).pattern_influence(
                        ids,
                        fast.patterns,
                        baselines=MASK_ID,
                        additional_forward_args=args,
                        n_steps=6,
                    )
                _all_hooks_removed(self, model)

    def test_causal_sources_after_the_output_are_refused(self) -> None:
        model = masked_lm("gpt2")
        ids, args = agreement_batch()
        with self.assertRaisesRegex(
            ValueError, "sources: .* after the output position"
        ):
            _run(model, ids, args, sources=[1, 5])


if __name__ == "__main__":
    unittest.main()
