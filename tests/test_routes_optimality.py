"""The optimality test: explained routes against random routes of the same source."""

from __future__ import annotations

import gzip
import itertools
import json
import random
from collections import Counter
from pathlib import Path
from unittest import mock

import pytest
import torch

from captum_influence_patterns.routes.opponents import (
    all_routes,
    attention_positions,
    random_nodes,
    random_positions,
    route_count,
    stay_then_jump,
)
from captum_influence_patterns.routes.optimality import optimality_test
from captum_influence_patterns.routes.optimality_records import (
    OpponentRoute,
    OptimalityRow,
    RouteNode,
    ScoredRoute,
)
from captum_influence_patterns.results import Pattern, PatternNode
from captum_influence_patterns.routes.compare import compare
from captum_influence_patterns.testing import MASK_ID, agreement_batch, attribution, masked_lm
from captum_influence_patterns.testing.exactness import float64_internals
from captum_influence_patterns.testing.records import assert_json_close

STEPS = 8


def _request(ip, ids, kwargs, **more):
    """The request of a result's arguments, which optimality_test and compare take."""
    return ip.request(ids, output_position=4, n_steps=STEPS, **kwargs, **more)


class TestRandomRoutes:
    def test_non_causal_routes_are_uniform_and_end_at_the_output(self) -> None:
        rng = random.Random(0)
        counts = Counter(
            tuple(random_positions(2, 4, 3, 3, causal=False, rng=rng))
            for _ in range(9000)
        )
        # every (j_1, j_2) in 0..2 x 0..2, each about 1000 times
        assert set(counts) == \
            {(2, a, b, 4) for a, b in itertools.product(range(3), repeat=2)}
        assert max(abs(c - 1000) for c in counts.values()) < 150

    def test_causal_routes_never_move_backwards_and_are_uniform(self) -> None:
        rng = random.Random(1)
        counts = Counter(
            tuple(random_positions(1, 3, 6, 3, causal=True, rng=rng))
            for _ in range(6000)
        )
        # the non-decreasing (j_1, j_2) in 1..3: (1,1) (1,2) (1,3) (2,2) (2,3) (3,3)
        expected = {
            (1, a, b, 3) for a, b in itertools.product(range(1, 4), repeat=2) if a <= b
        }
        assert set(counts) == expected
        assert max(abs(c - 1000) for c in counts.values()) < 150
        # a pooled QoI: the last position is drawn too, up to the sequence's end
        pooled = {
            tuple(random_positions(3, None, 5, 2, causal=True, rng=rng))
            for _ in range(500)
        }
        expected = {(3, a, b) for a in range(3, 5) for b in range(a, 5)}
        assert pooled == expected
        with pytest.raises(TypeError):  # causal is named, never a bare flag
            random_positions(1, 3, 6, 3, True, rng)

    def test_attention_nodes_take_the_skip_only_where_the_route_stays(self) -> None:
        rng = random.Random(2)
        kinds = Counter()
        for _ in range(400):
            nodes = random_nodes([0, 0, 2, 2], 4, True, rng)
            assert [n.position for n in nodes] == [0, 2, 2]
            assert nodes[1].kind == "head"  # moved from 0 to 2
            kinds.update((n.layer, n.kind) for n in nodes)
            assert all(n.ffn in ("mlp", "residual") for n in nodes)
        assert kinds[(1, "skip")] > 40  # 1 in 5
        assert kinds[(3, "skip")] > 40


class TestOptimality:
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
        # a full-width beam returns the best of all 49 routes (tests/test_search_beam.py)
        ip, ids, kwargs, result = self._search("bert", beam_width=49)
        records = optimality_test(
            ip, _request(ip, ids, kwargs), result, n_random=30, seed=3,
            return_routes=True,
        )
        assert len(records) == 6
        for record, pattern in zip(records, result.patterns[0]):
            assert record.source == pattern.source
            assert abs(record.guided - pattern.embedding_influence) <= 1e-12
            others = [
                r for r in record.random if r.positions != pattern.positions
            ]
            assert record.share_beaten == len(others) / 30
            assert record.gap >= 0.0
            values = [pattern.sign * r.influence for r in record.random]
            assert abs(record.gap - (pattern.sign * pattern.embedding_influence - max(values))) <= \
                1e-12
            for route in record.random:  # the alternatives scored them already
                if route.positions != pattern.positions:
                    value = next(
                        a["embedding_influence"]
                        for a in pattern.alternatives
                        if a["positions"] == route.positions
                    )
                    assert abs(route.influence - value) <= 1e-12
        json.dumps([r.to_dict() for r in records])
        # the worst route beats none
        for pattern in result.patterns[0]:
            worst = pattern.alternatives[-1]
            pattern.positions = worst["positions"]
            pattern.embedding_influence = worst["embedding_influence"]
        worst = optimality_test(
            ip, _request(ip, ids, kwargs), result, n_random=30, seed=3, opponents=()
        )
        for record in worst:
            assert record.share_beaten == 0.0
            assert record.gap <= 0.0

    def test_causal_model_at_the_attention_level(self) -> None:
        ip, ids, kwargs, result = self._search("gpt2", sources=[0, 1, 2, 3])
        records = optimality_test(
            ip,
            _request(ip, ids, kwargs),
            result,
            n_random=12,
            level="attention",
            return_routes=True,
        )
        assert [r.source for r in records] == [0, 1, 2, 3]
        for record, pattern in zip(records, result.patterns[0]):
            assert abs(record.guided - pattern.influence) <= 1e-12
            assert 0.0 <= record.share_beaten <= 1.0
            for route in record.random:
                positions = route.positions
                assert positions[0] == pattern.source
                assert positions[-1] == 4
                assert positions == sorted(positions)
                assert len(route.nodes) == 3
        # greedy routes of this model beat most random ones
        shares = [r.share_beaten for r in records]
        assert sum(shares) / len(shares) > 0.5

    def test_bad_arguments(self, subtests) -> None:
        ip, ids, kwargs, result = self._search("bert", sources=[0])
        positions, correct, wrong = kwargs["additional_forward_args"]
        request = _request(ip, ids, kwargs)
        for bad, message in (
            (dict(level="heads"), "level"),
            (dict(n_random=0), "n_random"),
            (dict(opponents=("oracle",)), "opponents"),
            (dict(opponents="optimum"), "opponents"),
            (dict(beam_width=0), "beam_width"),
            (dict(exhaustive_limit=-1), "exhaustive_limit"),
            (dict(orientation="up"), "orientation"),
        ):
            with subtests.test(**bad), pytest.raises(ValueError, match=message):
                optimality_test(ip, request, result, **bad)
        # a request of other arguments than the result's
        for bad, message in (
            (dict(baselines=None), "baselines"),
            (dict(attention_mask=torch.ones(1, 3)), "attention_mask"),
            (dict(additional_forward_args=(positions, wrong, correct)), "re-scores"),
        ):
            with subtests.test(**bad), pytest.raises(ValueError, match=message):
                optimality_test(ip, _request(ip, ids, {**kwargs, **bad}), result)
        with pytest.raises(ValueError, match="inputs"):
            optimality_test(ip, _request(ip, ids.flip(1), kwargs), result)


def _pattern(positions, nodes=()):
    return Pattern(
        source=positions[0], sign=1, token_influence=0.0, positions=list(positions),
        position_influence=[], embedding_influence=0.0, nodes=list(nodes),
        influence=0.0,
    )


class TestPaddedBatch:
    """Issue 19 item 1: the optimality test re-scores with the result's mask."""

    def test_rescored_routes_equal_the_result_on_a_padded_batch(self) -> None:
        model = masked_lm("bert", seed=0)
        ids, args = agreement_batch(batch=2)
        mask = torch.ones_like(ids)
        mask[0, 5:] = 0
        mask[1, 6:] = 0
        ip = attribution(model)
        kwargs = dict(baselines=MASK_ID, additional_forward_args=args)
        result = ip.attribute(
            ids, output_position=4, n_steps=STEPS, attention_mask=mask, **kwargs
        )
        for level, field in (("embedding", "embedding_influence"),
                             ("attention", "influence")):
            records = optimality_test(
                ip, _request(ip, ids, kwargs, attention_mask=mask), result,
                n_random=6, level=level, return_routes=True,
            )
            patterns = [p for row in result.patterns for p in row]
            assert len(records) == len(patterns)
            for record, pattern in zip(records, patterns):
                assert abs(record.guided - getattr(pattern, field)) <= 1e-12
                real = mask[record.example].nonzero()[:, 0].tolist()
                for route in record.random + record.attention_random:
                    assert set(route.positions) <= set(real), route
        # the unmasked re-score differs from the result: refused, not returned
        with pytest.raises(ValueError, match="attention_mask"):
            optimality_test(ip, _request(ip, ids, kwargs), result, n_random=2)


class TestOpponents:
    def setup_method(self) -> None:
        self.model = masked_lm("bert", seed=0)
        self.ids, args = agreement_batch(batch=1)
        self.ip = attribution(self.model)
        self.kwargs = dict(baselines=MASK_ID, additional_forward_args=args)
        self.result = self.ip.attribute(
            self.ids, output_position=4, n_steps=STEPS, **self.kwargs
        )
        self.request = _request(self.ip, self.ids, self.kwargs)

    def _brute(self, routes, level="embedding"):
        """Each route's influence, one dense gated pass each (the reference)."""
        return self.ip.pattern_influence(
            self.ids, [routes], level=level, n_steps=STEPS, **self.kwargs
        )[0].tolist()

    def test_the_exhaustive_optimum_is_the_full_width_beam(self) -> None:
        # the full-width beam searches every route by its own forward-mode sweep
        beam = self.ip.attribute(
            self.ids, output_position=4, n_steps=STEPS, beam_width=49, **self.kwargs
        )
        records = optimality_test(self.ip, self.request, self.result, n_random=5)
        for record, best, guided in zip(
            records, beam.patterns[0], self.result.patterns[0]
        ):
            optimum = record.opponents["optimum"]
            assert optimum.search == "exhaustive"
            assert optimum.routes == 49
            assert abs(optimum.influence - best.embedding_influence) <= 1e-12
            sign = guided.sign
            adjusted = [sign * o.influence for o in record.opponents.values()]
            assert abs(sign * record.best_found - max(adjusted + [sign * record.guided])) <= \
                0
            assert sign * optimum.influence >= max(adjusted) - 1e-12
            best_value = record.best_found
            shortfall = sign * (best_value - record.guided) / abs(best_value)
            assert abs(record.shortfall - shortfall) <= 1e-15
            assert record.shortfall >= 0.0
            assert record.within_5pct == (shortfall <= 0.05)
            assert (record.best_found_by == "guided") == (record.shortfall == 0.0)
        json.dumps([r.to_dict() for r in records])

    def test_the_beam_where_there_are_too_many_routes(self) -> None:
        beam = self.ip.attribute(
            self.ids, output_position=4, n_steps=STEPS, beam_width=8, **self.kwargs
        )
        for level, field in (("embedding", "embedding_influence"),
                             ("attention", "influence")):
            records = optimality_test(
                self.ip, self.request, self.result, n_random=3, level=level,
                exhaustive_limit=10, opponents=("optimum",),
            )
            for record, best in zip(records, beam.patterns[0]):
                optimum = record.opponents["optimum"]
                assert (optimum.search, optimum.width) == ("beam", 8)
                assert optimum.positions == best.positions
                assert abs(optimum.influence - getattr(best, field)) <= 1e-12

    def test_stay_then_jump_and_attention_routes_score_like_brute_force(self) -> None:
        records = optimality_test(
            self.ip, self.request, self.result, n_random=4, level="attention",
            opponents=("stay_then_jump", "attention_route"),
        )
        comparison = compare(
            self.ip, self.request,
            guided=self.result,
            methods=("greedy", "greedy_residual", "best", "beam", "rollout", "flow"),
        )
        for record, row in zip(records, comparison.records):
            i = record.source
            stay = record.opponents["stay_then_jump"]
            assert stay.positions == [i, i, i, 4]
            assert [n.kind for n in stay.nodes][:2] == ["skip", "skip"]
            # the best of the four heads at the jump, scored one by one
            jumps = [
                _pattern([i, i, i, 4], [
                    PatternNode(1, i, "skip", None, 0.0),
                    PatternNode(2, i, "skip", None, 0.0),
                    PatternNode(3, 4, "head", head, 0.0),
                ])
                for head in range(4)
            ]
            sign = record.sign
            assert abs(stay.influence - max(self._brute(jumps, "attention"), key=lambda v: sign * v)) <= \
                1e-12
            routes = {name: row[name]["influence"] for name in
                      ("greedy", "greedy_residual", "best", "beam", "rollout", "flow")}
            best = max(routes, key=lambda name: sign * routes[name])
            attention = record.opponents["attention_route"]
            assert abs(attention.influence - routes[best]) <= 1e-12
            assert row[attention.route]["positions"] == \
                             attention.positions

    def test_contribution_route_is_the_best_contribution_route(self) -> None:
        records = optimality_test(
            self.ip, self.request, self.result, n_random=2, level="attention",
            opponents=("contribution_route",),
        )
        names = ("alti", "alti_logit", "attention_norm", "information_flow")
        comparison = compare(
            self.ip, self.request, guided=self.result, methods=names
        )
        for record, row in zip(records, comparison.records):
            routes = {name: row[name]["influence"] for name in names}
            best = max(routes, key=lambda name: record.sign * routes[name])
            found = record.opponents["contribution_route"]
            assert abs(found.influence - routes[best]) <= 1e-12
            assert row[found.route]["positions"] == found.positions

    def test_attention_draws_are_valid_non_trivial_and_follow_attention(self) -> None:
        records = optimality_test(
            self.ip, self.request, self.result, n_random=20,
            opponents=("attention_random",), return_routes=True,
        )
        for record in records:
            i = record.source
            draws = record.attention_random
            assert len(draws) == 20
            values = self._brute([_pattern(d.positions) for d in draws])
            for draw, value in zip(draws, values):
                assert draw.positions[0] == i
                assert draw.positions[-1] == 4
                assert draw.positions != [i, i, i, 4]
                assert abs(draw.influence - value) <= 1e-12
        # draws follow the matrix: a column with weights 3:1 on positions 1 and 2
        matrices = torch.zeros(2, 3, 3, dtype=torch.float64)
        matrices[0, 1, 0], matrices[0, 2, 0] = 3.0, 1.0
        matrices[1, 0, 1] = matrices[1, 0, 2] = 1.0
        rng = random.Random(0)
        counts = Counter(
            tuple(attention_positions(matrices, 0, 0, rng)) for _ in range(4000)
        )
        assert set(counts) == {(0, 1, 0), (0, 2, 0)}
        assert abs(counts[(0, 1, 0)] / 4000 - 0.75) <= 0.03

    def test_route_counts(self) -> None:
        # source 0, output 2, 3 positions, 2 layers, 2 heads: j_1 in 0..2;
        # [0,0,2]: 3 x 2 nodes, [0,1,2]: 2 x 2, [0,2,2]: 2 x 3 -> 16
        args = (0, 2, [0, 1, 2], 2, 2)
        for causal in (False, True):
            assert route_count(*args, causal, False, "embedding", 99) == 3
            assert route_count(*args, causal, False, "attention", 99) == 16
            assert route_count(*args, causal, True, "attention", 99) == 64
            assert route_count(*args, causal, False, "attention", 15) == 16
            routes = all_routes(*args, causal, True, "attention")
            assert len(routes) == 64
            keys = {(tuple(r.positions), tuple((n.head, n.ffn) for n in r.nodes))
                    for r in routes}
            assert len(keys) == 64
        assert route_count(1, 2, [0, 1, 2], 3, 2, True, False,
                                     "embedding", 99) == 3  # [1,1,1] [1,1,2] [1,2,2]
        assert len(stay_then_jump(0, 2, 2, 4, True, "attention")) == 8
        assert len(stay_then_jump(2, 2, 2, 4, False, "attention")) == 5

    def test_causal_routes_are_the_non_decreasing_ones(self) -> None:
        """A causal model's routes are the product's non-decreasing tuples, listed
        without walking the product (30 layers: 7^29 tuples)."""
        for source, output, valid, layers in [
            (0, 3, [0, 1, 2, 3], 3), (1, 3, [0, 1, 2, 3], 4), (2, None, [0, 1, 2, 3], 2),
            (1, 4, [0, 1, 3, 4], 3), (3, 3, [0, 1, 2, 3], 4),
        ]:
            free = layers - 1 if output is not None else layers
            last = output if output is not None else max(valid)
            expected = [
                [source, *middle, *([] if output is None else [output])]
                for middle in itertools.product(valid, repeat=free)
                if list(middle) == sorted(middle) and all(source <= j <= last for j in middle)
            ]
            routes = all_routes(source, output, valid, layers, 2, True, False, "embedding")
            assert [r.positions for r in routes] == expected
        # SmolLM2's depth: the last source has one route, the one before it 30
        valid = list(range(7))
        for source, count in ((6, 1), (5, 30)):
            routes = all_routes(source, 6, valid, 30, 9, True, False, "embedding")
            assert len(routes) == count
            assert route_count(source, 6, valid, 30, 9, True, False, "embedding", 99) == count


class TestFastScoring:
    def test_fast_route_scores_equal_the_dense_ones(self, subtests) -> None:
        """Issue 20 item 3: the scorer of every route (score_routes, schedule
        "fast") equals the gated reverse passes in float64, row-wise (BERT, with
        and without the MLP split off) and on the fallback (GPT-2)."""
        rng = random.Random(5)
        for family, split in (("bert", False), ("bert", True), ("gpt2", False)):
            model = masked_lm(family, seed=1)
            ids, args = agreement_batch(batch=2)
            ip = attribution(model, split_mlp=split)
            causal = ip.graph.is_causal
            routes = [
                [
                    _pattern(positions, random_nodes(positions, 4, split, rng))
                    for positions in (
                        random_positions(s, 4, 7, 3, causal=causal, rng=rng)
                        for s in (0, 1, 2, 3) * 3
                    )
                ]
                for _ in range(2)
            ]
            for level in ("embedding", "attention"):
                with subtests.test(family=family, split=split, level=level):
                    values = [
                        ip.pattern_influence(
                            ids, routes, MASK_ID, None, args, level=level,
                            n_steps=STEPS, schedule=schedule,
                        )
                        for schedule in ("fast", "reference")
                    ]
                    for fast, dense in zip(*values):
                        assert fast.shape == (12,)
                        assert float(dense.abs().max()) > 1e-5
                        torch.testing.assert_close(fast, dense, rtol=0, atol=1e-12)



class TestRowwiseOptimality:
    """Issue 20 item 3: the optimality test on the row-wise schedule (the row-wise
    beam; route scores sharing prefixes, suffixes and primal values) equals the
    test on the old path (the forward-mode beam; one dense gated pass per route), in
    float64, on a padded batch."""

    @pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
    def test_rowwise_equals_the_forward_mode_and_dense_path(self, family) -> None:
        model = masked_lm(family, seed=0)
        ids, args = agreement_batch(batch=2)
        mask = torch.ones_like(ids)
        mask[0, 6:] = 0
        ip = attribution(model, split_mlp=True)
        kwargs = dict(baselines=MASK_ID, additional_forward_args=args)
        old_path = "captum_influence_patterns.search.fast.rowwise_blocks"
        with float64_internals():
            result = ip.attribute(
                ids, output_position=4, n_steps=STEPS, attention_mask=mask,
                sources=[0, 1, 2, 3], **kwargs,
            )
            for level in ("embedding", "attention"):
                test = dict(
                    n_random=4, level=level, exhaustive_limit=10, return_routes=True
                )
                request = _request(ip, ids, kwargs, attention_mask=mask)
                rowwise = optimality_test(ip, request, result, **test)
                with mock.patch(old_path, return_value=None):
                    old = optimality_test(ip, request, result, **test)
                assert "beam" in {r.opponents["optimum"].search for r in old}
                assert_json_close([r.to_dict() for r in rowwise],
                                  [r.to_dict() for r in old])


class TestRows:
    """The typed rows: their JSON is what the records have always held, key for key
    and byte for byte, and any record's row reads back."""

    ROW = dict(example=0, source=1, level="attention", sign=-1, n_random=2,
               guided=-0.5, random_best=-0.25, random_mean=0.125, share_beaten=1.0,
               gap=0.25, gap_relative=0.5)

    def test_a_row_writes_the_records_keys_in_their_order(self) -> None:
        nodes = [RouteNode("skip", None, None), RouteNode("head", 3, None)]
        row = OptimalityRow(
            **self.ROW,
            opponents={
                "optimum": OpponentRoute(-1.0, [1, 1, 4], nodes, search="exhaustive",
                                         routes=49),
                "attention_route": OpponentRoute(-0.75, [1, 2, 4], nodes,
                                                 route="flow"),
                "random": OpponentRoute(-0.25, [1, 0, 4], nodes, n=2, mean=0.125),
            },
            best_found=-1.0, best_found_by="optimum", shortfall=0.5,
            within_1pct=False, within_5pct=False,
            random=[ScoredRoute([1, 0, 4], nodes, -0.25)],
        )
        text = json.dumps(row.to_dict())
        node = '{"kind": "skip", "head": null, "ffn": null}, ' \
            '{"kind": "head", "head": 3, "ffn": null}'
        assert text == (
            '{"example": 0, "source": 1, "level": "attention", "sign": -1, '
            '"n_random": 2, "guided": -0.5, "random_best": -0.25, '
            '"random_mean": 0.125, "share_beaten": 1.0, "gap": 0.25, '
            '"gap_relative": 0.5, "random": [{"positions": [1, 0, 4], "nodes": ['
            + node + '], "influence": -0.25}], "opponents": {"optimum": '
            '{"influence": -1.0, "positions": [1, 1, 4], "nodes": [' + node
            + '], "search": "exhaustive", "routes": 49}, "attention_route": '
            '{"influence": -0.75, "positions": [1, 2, 4], "nodes": [' + node
            + '], "route": "flow"}, "random": {"influence": -0.25, "positions": '
            '[1, 0, 4], "nodes": [' + node + '], "n": 2, "mean": 0.125}}, '
            '"best_found": -1.0, "best_found_by": "optimum", "shortfall": 0.5, '
            '"within_1pct": false, "within_5pct": false}'
        )
        assert OptimalityRow.from_dict(json.loads(text)) == row

    def test_a_row_written_before_the_opponents_reads_back_the_same(self) -> None:
        # 0.2.0's rows stop at gap_relative: no opponents, no comparison
        row = OptimalityRow.from_dict(dict(self.ROW, gap_relative=None))
        assert row.opponents is None and row.shortfall is None
        assert row.to_dict() == dict(self.ROW, gap_relative=None)

    def test_the_committed_records_rows_read_back_byte_for_byte(self) -> None:
        # the optimality subset (every opponent) and 0.2.0's run (no opponents)
        folder = Path(__file__).resolve().parents[1] / "results" / "agreement_minilm"
        rows = 0
        for name, lines in (("optimality_subset", None), ("agreement", 50)):
            with gzip.open(folder / f"{name}.jsonl.gz", "rt", encoding="utf-8") as f:
                for line in itertools.islice(f, lines):
                    record = json.loads(line)
                    typed = [OptimalityRow.from_dict(e) for e in record["optimality"]]
                    again = dict(record, optimality=[row.to_dict() for row in typed])
                    assert json.dumps(again, allow_nan=True) == line.rstrip("\n")
                    rows += len(typed)
        assert rows > 600

    def test_the_test_returns_rows_that_read_back(self) -> None:
        model = masked_lm("bert", seed=0)
        ids, args = agreement_batch(batch=1)
        ip = attribution(model)
        kwargs = dict(baselines=MASK_ID, additional_forward_args=args)
        result = ip.attribute(ids, output_position=4, n_steps=STEPS, sources=[1, 2],
                              **kwargs)
        rows = optimality_test(ip, _request(ip, ids, kwargs), result, n_random=3,
                               level="attention", return_routes=True)
        assert all(isinstance(row, OptimalityRow) for row in rows)
        for row in rows:
            assert list(row.opponents)[-1] == "random"
            assert row.opponents["random"].n == len(row.random) == 3
            data = json.loads(json.dumps(row.to_dict()))
            assert OptimalityRow.from_dict(data) == row
