"""The two implementations of the fast schedule agree, and the generic one chunks.

The row-wise schedule (post-LN encoders) and the forward-mode schedule (any family)
compute the same influences by different means: explicit single-position
linearisations of each layer versus forward-mode autodiff through the whole model
under gates. Both are checked against the reference schedule and brute force in
tests/test_search.py and tests/test_families.py; here they are checked against each
other on every recorded candidate, including padding masks, the MLP split and pooled
QoIs, and the dispatch and chunking rules are pinned down.
"""

from __future__ import annotations

import unittest
from unittest import mock

import pytest
import torch

from captum_influence_patterns import analysis_mode
from captum_influence_patterns.fast_search import (
    fast_search,
    forward_mode_search,
    route_influence,
    rowwise_search,
    rowwise_supported,
)
from captum_influence_patterns.influence import gated_influence, route_gates
from captum_influence_patterns.testing import (
    FAMILIES,
    MORE_FAMILIES,
    agreement_batch,
    masked_lm,
    problem,
)

TOL = dict(atol=1e-12, rtol=1e-9)
FIELDS = (
    "sign",
    "positions",
    "position_candidates",
    "is_head",
    "head",
    "node_candidates",
    "is_mlp",
    "ffn_candidates",
)


def _both(model, ids, args, sources, output_position, split_mlp=False, **kwargs):
    example = problem(model, ids, args, **kwargs)
    example.graph.split_mlp = split_mlp
    with analysis_mode(model):
        assert rowwise_supported(example)
        rowwise = rowwise_search(example, sources, output_position)
        generic = forward_mode_search(example, sources, output_position)
    return rowwise, generic


class RowwiseEqualsForwardMode(unittest.TestCase):
    def assert_same(self, rowwise, generic) -> None:
        (first, g_first), (second, g_second) = rowwise, generic
        torch.testing.assert_close(g_first, g_second, **TOL)
        for field in FIELDS:
            a, b = getattr(first, field), getattr(second, field)
            if a.is_floating_point():
                torch.testing.assert_close(a, b, **TOL, msg=field)
            else:
                self.assertTrue(torch.equal(a, b), field)

    def test_every_encoder_family_with_and_without_the_mlp_split(self) -> None:
        ids, args = agreement_batch()
        sources = torch.tensor([0, 1, 2, 3, 5, 6])
        for family in FAMILIES:
            for split_mlp in (False, True):
                with self.subTest(family=family, split_mlp=split_mlp):
                    model = masked_lm(family)
                    self.assert_same(
                        *_both(model, ids, args, sources, 4, split_mlp, n_steps=6)
                    )

    def test_padding_mask_and_chunks_of_one_source(self) -> None:
        ids, args = agreement_batch(length=9)
        mask = torch.ones_like(ids)
        mask[:, 7:] = 0  # two padded positions: zero attention weight as keys
        sources = torch.tensor([0, 2, 3, 6, 8])
        model = masked_lm("bert")
        self.assert_same(
            *_both(
                model,
                ids,
                (*args, mask),
                sources,
                4,
                n_steps=5,
                internal_batch_size=5,
            )
        )

    def test_attention_weights_recomputed_when_the_module_does_not_return_them(
        self,
    ) -> None:
        # transformers < 5 returns eager attention weights only with
        # output_attentions; a hook dropping them stands in for such a version.
        ids, args = agreement_batch(length=8)
        mask = torch.ones_like(ids)
        mask[:, 6:] = 0
        model = masked_lm("bert")
        handles = [
            layer.attention.self.register_forward_hook(
                lambda module, inputs, output: (output[0], None)
            )
            for layer in model.bert.encoder.layer
        ]
        try:
            self.assert_same(
                *_both(model, ids, (*args, mask), torch.tensor([0, 2, 7]), 4)
            )
        finally:
            for handle in handles:
                handle.remove()

    def test_pooled_qoi_searches_the_last_layer(self) -> None:
        ids, args = agreement_batch()
        sources = torch.arange(7)
        rowwise, generic = _both(masked_lm("electra"), ids, args, sources, None)
        self.assert_same(rowwise, generic)
        # Nothing forced j_L: it is the argmax of the last layer's candidates.
        state = rowwise[0]
        chosen = (state.sign[:, None] * state.position_candidates[:, -1]).argmax(-1)
        self.assertTrue(torch.equal(state.positions[:, -1], chosen))


class Dispatch(unittest.TestCase):
    def test_row_wise_only_for_post_ln_encoders_in_analysis_mode(self) -> None:
        ids, args = agreement_batch()
        for family in FAMILIES:
            model = masked_lm(family)
            example = problem(model, ids, args)
            with analysis_mode(model):
                self.assertTrue(rowwise_supported(example), family)
            model.train()
            self.assertFalse(rowwise_supported(example), family)
        for family in MORE_FAMILIES:
            model = masked_lm(family)
            example = problem(model, ids, args)
            with analysis_mode(model):
                self.assertFalse(rowwise_supported(example), family)
                with self.assertRaisesRegex(ValueError, "^problem: .*post-LN"):
                    rowwise_search(example, torch.tensor([0]), 4)

    def test_fast_search_takes_the_row_wise_schedule_for_bert(self) -> None:
        ids, args = agreement_batch()
        model = masked_lm("bert")
        example = problem(model, ids, args)
        target = "captum_influence_patterns.fast_search.forward_mode_search"
        with analysis_mode(model), mock.patch(target) as generic:
            fast_search(example, torch.tensor([0, 1]), 4)
        generic.assert_not_called()


class GenericChunking(unittest.TestCase):
    def forward_mode_passes(self, n_steps: int, internal_batch_size=None) -> int:
        """Forward-mode passes of stage A and B for four sources on 7 tokens (the QoI
        reads position 4)."""
        ids, args = agreement_batch()
        model = masked_lm("gpt2")
        example = problem(
            model, ids, args, n_steps=n_steps, internal_batch_size=internal_batch_size
        )
        runs = []
        original = example.run

        def counting(controller, rows):
            runs.append(type(controller).__name__)
            return original(controller, rows)

        example.run = counting
        with analysis_mode(model):
            forward_mode_search(example, torch.arange(4), 4)
        return sum(name.startswith("_Stage") and "Sweep" in name for name in runs)

    def test_default_is_one_source_per_pass_for_long_problems(self) -> None:
        # 7 tokens x 200 steps = 1400 tokens per source: over the budget of one pass.
        self.assertEqual(self.forward_mode_passes(200), 2 * 4)

    def test_default_batches_sources_of_small_problems(self) -> None:
        # 7 tokens x 10 steps = 70 tokens per source: all four fit in one pass.
        self.assertEqual(self.forward_mode_passes(10), 2)

    def test_internal_batch_size_caps_the_rows(self) -> None:
        # 3 sources of 10 steps per pass: two passes for four sources.
        self.assertEqual(self.forward_mode_passes(10, internal_batch_size=35), 2 * 2)


def _random_routes(count, layers, length, heads, output_position, seed=3):
    """Routes with random positions (ending at ``output_position``), random heads or
    skips (-1) and random MLP-or-residual choices."""
    generator = torch.Generator().manual_seed(seed)
    positions = torch.randint(0, length, (count, layers + 1), generator=generator)
    positions[:, -1] = output_position
    positions[0, 1:] = positions[0, 0]  # a route that never moves (all skips kept)
    chosen = torch.randint(-1, heads, (count, layers), generator=generator)
    mlp = torch.randint(0, 2, (count, layers), generator=generator).bool()
    return positions, chosen, mlp


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("split_mlp", [False, True])
def test_route_influence_equals_the_gated_integrated_gradient(family, split_mlp):
    """Both levels, on a padded batch row: row by row for BERT, by the explicit
    fallback (gated reverse passes) for GPT-2 until its row-wise layer lands."""
    ids, args = agreement_batch(length=8)
    mask = torch.ones_like(ids)
    mask[:, 7:] = 0
    model = masked_lm(family)
    example = problem(model, ids, (*args, mask), n_steps=5, split_mlp=split_mlp)
    positions, heads, mlp = _random_routes(7, 3, 8, 4, 4)
    mlp = mlp if split_mlp else None
    with analysis_mode(model):
        assert rowwise_supported(example) is (family == "bert")
        sources = positions[:, 0]
        for choices in ((None, None), (heads, mlp)):
            gates = route_gates(positions, 8, 4, *choices)
            expected = gated_influence(example, sources, gates)
            assert expected.abs().max() > 1e-3  # not trivially zero
            torch.testing.assert_close(
                route_influence(example, positions, *choices), expected, **TOL
            )


def test_route_influence_refuses_malformed_routes():
    ids, args = agreement_batch()
    model = masked_lm("bert")
    example = problem(model, ids, args, n_steps=2)
    positions, heads, mlp = _random_routes(2, 3, 7, 4, 4)
    with pytest.raises(ValueError, match="^positions: expected"):
        route_influence(example, positions[:, 1:])
    with pytest.raises(ValueError, match="^heads: expected"):
        route_influence(example, positions, heads[:, 1:])
    with pytest.raises(ValueError, match="^mlp: .*split_mlp"):
        route_influence(example, positions, heads, mlp)


if __name__ == "__main__":
    unittest.main()
