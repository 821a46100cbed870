"""The optimality test: explained routes against random routes of the same source."""

from __future__ import annotations

import itertools
import json
import random
import unittest
from collections import Counter

from captum_influence_patterns.optimality import (
    optimality_test,
    random_nodes,
    random_positions,
)
from captum_influence_patterns.testing import MASK_ID, agreement_batch, attribution, masked_lm

STEPS = 8


class TestRandomRoutes(unittest.TestCase):
    def test_non_causal_routes_are_uniform_and_end_at_the_output(self) -> None:
        rng = random.Random(0)
        counts = Counter(
            tuple(random_positions(2, 4, 3, 3, False, rng)) for _ in range(9000)
        )
        # every (j_1, j_2) in 0..2 x 0..2, each about 1000 times
        self.assertEqual(
            set(counts),
            {(2, a, b, 4) for a, b in itertools.product(range(3), repeat=2)},
        )
        self.assertLess(max(abs(c - 1000) for c in counts.values()), 150)

    def test_causal_routes_never_move_backwards_and_are_uniform(self) -> None:
        rng = random.Random(1)
        counts = Counter(
            tuple(random_positions(1, 3, 6, 3, True, rng)) for _ in range(6000)
        )
        # the non-decreasing (j_1, j_2) in 1..3: (1,1) (1,2) (1,3) (2,2) (2,3) (3,3)
        expected = {
            (1, a, b, 3) for a, b in itertools.product(range(1, 4), repeat=2) if a <= b
        }
        self.assertEqual(set(counts), expected)
        self.assertLess(max(abs(c - 1000) for c in counts.values()), 150)
        # a pooled QoI: the last position is drawn too, up to the sequence's end
        pooled = {tuple(random_positions(3, None, 5, 2, True, rng)) for _ in range(500)}
        expected = {(3, a, b) for a in range(3, 5) for b in range(a, 5)}
        self.assertEqual(pooled, expected)

    def test_attention_nodes_take_the_skip_only_where_the_route_stays(self) -> None:
        rng = random.Random(2)
        kinds = Counter()
        for _ in range(400):
            nodes = random_nodes([0, 0, 2, 2], 4, True, rng)
            self.assertEqual([n.position for n in nodes], [0, 2, 2])
            self.assertEqual(nodes[1].kind, "head")  # moved from 0 to 2
            kinds.update((n.layer, n.kind) for n in nodes)
            self.assertTrue(all(n.ffn in ("mlp", "residual") for n in nodes))
        self.assertGreater(kinds[(1, "skip")], 40)  # 1 in 5
        self.assertGreater(kinds[(3, "skip")], 40)


class TestOptimality(unittest.TestCase):
    def _search(self, family, beam_width=1, sources=None):
        model = masked_lm(family, seed=0)
        ids, args = agreement_batch(batch=1)
        ip = attribution(model)
        kwargs = dict(baselines=MASK_ID, additional_forward_args=args)
        result = ip.attribute(
            ids,
            output_position=4,
            n_steps=STEPS,
            sources=sources,
            beam_width=beam_width,
            **kwargs,
        )
        return ip, ids, kwargs, result

    def test_the_optimum_beats_every_other_route(self) -> None:
        # a full-width beam returns the best of all 49 routes (tests/test_beam.py)
        ip, ids, kwargs, result = self._search("bert", beam_width=49)
        records = optimality_test(
            ip, ids, result, n_random=30, seed=3, return_routes=True, **kwargs
        )
        self.assertEqual(len(records), 6)
        for record, pattern in zip(records, result.patterns[0]):
            self.assertEqual(record["source"], pattern.source)
            self.assertAlmostEqual(
                record["guided"], pattern.embedding_influence, delta=1e-12
            )
            others = [
                r for r in record["random"] if r["positions"] != pattern.positions
            ]
            self.assertEqual(record["share_beaten"], len(others) / 30)
            self.assertGreaterEqual(record["gap"], 0.0)
            values = [pattern.sign * r["influence"] for r in record["random"]]
            self.assertAlmostEqual(
                record["gap"],
                pattern.sign * pattern.embedding_influence - max(values),
                delta=1e-12,
            )
            for route in record["random"]:  # the alternatives scored them already
                if route["positions"] != pattern.positions:
                    value = next(
                        a["embedding_influence"]
                        for a in pattern.alternatives
                        if a["positions"] == route["positions"]
                    )
                    self.assertAlmostEqual(route["influence"], value, delta=1e-12)
        json.dumps(records)
        # the worst route beats none
        for pattern in result.patterns[0]:
            worst = pattern.alternatives[-1]
            pattern.positions = worst["positions"]
        worst = optimality_test(ip, ids, result, n_random=30, seed=3, **kwargs)
        for record in worst:
            self.assertEqual(record["share_beaten"], 0.0)
            self.assertLessEqual(record["gap"], 0.0)

    def test_causal_model_at_the_attention_level(self) -> None:
        ip, ids, kwargs, result = self._search("gpt2", sources=[0, 1, 2, 3])
        records = optimality_test(
            ip,
            ids,
            result,
            n_random=12,
            level="attention",
            return_routes=True,
            **kwargs,
        )
        self.assertEqual([r["source"] for r in records], [0, 1, 2, 3])
        for record, pattern in zip(records, result.patterns[0]):
            self.assertAlmostEqual(record["guided"], pattern.influence, delta=1e-12)
            self.assertTrue(0.0 <= record["share_beaten"] <= 1.0)
            for route in record["random"]:
                positions = route["positions"]
                self.assertEqual(positions[0], pattern.source)
                self.assertEqual(positions[-1], 4)
                self.assertEqual(positions, sorted(positions))
                self.assertEqual(len(route["nodes"]), 3)
        # greedy routes of this model beat most random ones
        shares = [r["share_beaten"] for r in records]
        self.assertGreater(sum(shares) / len(shares), 0.5)

    def test_bad_arguments(self) -> None:
        ip, ids, kwargs, result = self._search("bert", sources=[0])
        for bad, message in (
            (dict(level="heads"), "level"),
            (dict(n_random=0), "n_random"),
            (dict(baselines=None), "baselines"),
        ):
            with self.subTest(**bad), self.assertRaisesRegex(ValueError, message):
                optimality_test(ip, ids, result, **{**kwargs, **bad})
        with self.assertRaisesRegex(ValueError, "inputs"):
            optimality_test(ip, ids.flip(1), result, **kwargs)


if __name__ == "__main__":
    unittest.main()
