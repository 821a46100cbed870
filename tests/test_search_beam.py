"""Beam routes: width 1 is the greedy search, full width is the exhaustive search, and
the row-wise beam keeps exactly the forward-mode beam's prefixes (issue 20, item 3)."""

from __future__ import annotations

import itertools
import json
from unittest import mock

import pytest
import torch

from captum_influence_patterns import (
    InfluencePatterns,
    InfluencePatternsResult,
    analysis_mode,
)
from captum_influence_patterns.search.beam import (
    beam_schedule,
    beam_search,
    forward_mode_beam,
    rowwise_beam,
)
from captum_influence_patterns.influence import pattern_influence
from captum_influence_patterns.routes.opponents import make_route
from captum_influence_patterns.search.rowwise.linearisation import RowwiseMismatch
from captum_influence_patterns.testing import (
    MASK_ID,
    agreement_batch,
    agreement_keywords,
    assert_brute_force_influences,
    assert_same_patterns,
    attribution,
    masked_lm,
    mean_pooled_qoi,
    problem,
)
from captum_influence_patterns.testing.exactness import (
    CASES,
    assert_same_search_state,
    case_model,
    float64_internals,
    padded_problem,
    per_row_output_batch,
)

TOL = dict(atol=1e-12, rtol=1e-9)
STEPS = 8
SOURCES = [0, 1, 2, 3, 5, 6]  # every position of agreement_batch() but the mask (4)


def _f64(values):
    return torch.tensor(values, dtype=torch.float64)


def _beam_patterns(model, ids, args, width, example=0, split_mlp=False):
    """The beam's patterns of one example, run directly on its ExampleProblem."""
    built = problem(model, ids, args, example=example, n_steps=STEPS)
    built.graph.split_mlp = split_mlp
    sources = torch.tensor(SOURCES)
    with analysis_mode(model):
        state, g = beam_search(width)(built, sources, 4)
    return state.patterns(g)


def _every_route(source, num_positions, num_layers, output_position):
    """Every bare embedding-level route, for brute-force scoring."""
    middles = itertools.product(range(num_positions), repeat=num_layers - 1)
    return [
        make_route(source, [source, *m, output_position], [], "exhaustive")
        for m in middles
    ]


def _brute_force(ip, ids, args, routes, example=0):
    """I(pi^e) of each route: a gated integrated gradient, reverse mode only."""
    batch = [[] for _ in range(ids.shape[0])]
    batch[example] = routes
    return ip.pattern_influence(
        ids,
        batch,
        baselines=MASK_ID,
        additional_forward_args=args,
        level="embedding",
        n_steps=STEPS,
    )[example]


class TestWidthOne:
    def test_width_one_is_the_greedy_search(self, subtests) -> None:
        for family, split_mlp in (("bert", False), ("bert", True), ("gpt2", False)):
            with subtests.test(family=family, split_mlp=split_mlp):
                model = masked_lm(family, seed=3)
                ids, args = agreement_batch(seed=5)
                ip = InfluencePatterns(
                    attribution(model).forward_func, model, split_mlp
                )
                for schedule in ("fast", "reference"):
                    greedy = ip.attribute(
                        ids,
                        baselines=MASK_ID,
                        additional_forward_args=args,
                        output_position=4,
                        sources=SOURCES[:4],  # causal models: before the output
                        n_steps=STEPS,
                        schedule=schedule,
                    )
                    for b in range(ids.shape[0]):
                        built = problem(model, ids, args, example=b, n_steps=STEPS)
                        built.graph.split_mlp = split_mlp
                        with analysis_mode(model):
                            state, g = beam_search(1)(
                                built, torch.tensor(SOURCES[:4]), 4
                            )
                        for a, p in zip(greedy.patterns[b], state.patterns(g)):
                            assert a.positions == p.positions
                            assert a.sign == p.sign
                            assert [(n.kind, n.head, n.ffn) for n in a.nodes] == \
                                [(n.kind, n.head, n.ffn) for n in p.nodes]
                            torch.testing.assert_close(
                                _f64(a.position_candidates),
                                _f64(p.position_candidates),
                                **TOL,
                            )
                            torch.testing.assert_close(
                                _f64(a.node_candidates), _f64(p.node_candidates), **TOL
                            )
                            torch.testing.assert_close(
                                _f64([a.influence, a.embedding_influence]),
                                _f64([p.influence, p.embedding_influence]),
                                **TOL,
                            )
                            assert p.alternatives == []


class TestFullWidth:
    def test_full_width_finds_the_brute_force_optimum(self) -> None:
        model = masked_lm("bert", seed=0)
        ids, args = agreement_batch(batch=1)
        ip = attribution(model)
        T, L = ids.shape[1], 3
        patterns = _beam_patterns(model, ids, args, width=T ** (L - 1))
        for pattern in patterns:
            routes = _every_route(pattern.source, T, L, 4)
            values = _brute_force(ip, ids, args, routes)
            best = int((pattern.sign * values).argmax())
            # the beam's route is the optimum, with the optimum's value
            assert pattern.positions == routes[best].positions
            assert abs(pattern.embedding_influence - float(values[best])) <= 1e-12
            # every other route is an alternative, best first, with its value
            assert len(pattern.alternatives) == len(routes) - 1
            by_route = {tuple(r.positions): float(v) for r, v in zip(routes, values)}
            adjusted = [
                pattern.sign * a["embedding_influence"] for a in pattern.alternatives
            ]
            assert adjusted == sorted(adjusted, reverse=True)
            for alternative in pattern.alternatives:
                assert abs(alternative["embedding_influence"] - by_route[tuple(alternative["positions"])]) <= \
                    1e-12

    def test_greedy_is_not_always_optimal(self) -> None:
        """On small random BERTs greedy misses the best embedding-level route of some
        sources; the full-width beam never does (checked above, here by value)."""
        misses = 0
        for seed in range(3):
            model = masked_lm("bert", seed=seed)
            ids, args = agreement_batch(batch=1, seed=seed + 1)
            greedy = _beam_patterns(model, ids, args, width=1)
            full = _beam_patterns(model, ids, args, width=49)
            for a, b in zip(greedy, full):
                assert a.sign == b.sign
                gap = b.sign * (b.embedding_influence - a.embedding_influence)
                assert gap >= -1e-12
                misses += gap > 1e-9
        assert misses > 0


class TestAttribute:
    def test_beam_width_through_attribute(self) -> None:
        model = masked_lm("bert", seed=0)
        ids, args = agreement_batch()
        ip = attribution(model)
        kwargs = agreement_keywords(args, n_steps=STEPS)
        result = ip.attribute(ids, beam_width=3, **kwargs)
        assert result.metadata["beam_width"] == 3
        assert result.metadata["schedule"] == "beam"
        for b, row in enumerate(result.patterns):
            direct = _beam_patterns(model, ids, args, width=3, example=b)
            for p, q in zip(row, direct):
                assert p.positions == q.positions
                assert len(p.alternatives) == 2
                assert p.alternatives == q.alternatives
                for alternative in p.alternatives:
                    assert alternative["positions"][-1] == 4
                    assert p.sign * p.embedding_influence >= \
                        p.sign * alternative["embedding_influence"]
        # the reported influences are the brute-force ones of the returned routes
        assert_brute_force_influences(
            ip, ids, result, baselines=MASK_ID, additional_forward_args=args,
            n_steps=STEPS,
        )
        back = InfluencePatternsResult.from_dict(
            json.loads(json.dumps(result.to_dict()))
        )
        assert back.patterns[0][0].alternatives == result.patterns[0][0].alternatives

    def test_chunks_do_not_change_the_beam(self, subtests) -> None:
        model = masked_lm("bert", seed=2)
        ids, args = agreement_batch()
        kwargs = agreement_keywords(args, n_steps=STEPS, beam_width=3)
        whole = attribution(model).attribute(ids, **kwargs)
        for size in (5, 3 * STEPS, 7 * STEPS + 1):
            with subtests.test(internal_batch_size=size):
                chunked = attribution(model).attribute(
                    ids, internal_batch_size=size, **kwargs
                )
                for row_a, row_b in zip(whole.patterns, chunked.patterns):
                    for a, b in zip(row_a, row_b):
                        assert a.positions == b.positions
                        assert [(a.sign, n.kind, n.head) for n in a.nodes] == \
                            [(b.sign, n.kind, n.head) for n in b.nodes]
                        assert abs(a.influence - b.influence) <= 1e-12
                        assert [x["positions"] for x in a.alternatives] == \
                            [x["positions"] for x in b.alternatives]

    def test_pooled_qoi(self) -> None:
        model = masked_lm("bert", seed=2)
        ids, _ = agreement_batch(batch=1)
        mean_pooled = mean_pooled_qoi(model)  # a QoI reading every position
        ip = InfluencePatterns(mean_pooled, model)
        kwargs = dict(baselines=MASK_ID, output_position=None, n_steps=STEPS)
        greedy = ip.attribute(ids, **kwargs)
        built = problem(model, ids, (), n_steps=STEPS)
        built.forward_func = mean_pooled
        with analysis_mode(model):
            state, g = beam_search(1)(built, torch.arange(7), None)
        for a, b in zip(greedy.patterns[0], state.patterns(g)):
            assert a.positions == b.positions
            assert abs(a.embedding_influence - b.embedding_influence) <= 1e-12
        beam = ip.attribute(ids, beam_width=4, **kwargs)
        ends = set()
        for p in beam.patterns[0]:
            assert len(p.alternatives) == 3
            ends.update(x["positions"][-1] for x in p.alternatives)
            for x in p.alternatives:
                assert p.sign * p.embedding_influence >= \
                    p.sign * x["embedding_influence"]
        assert len(ends) > 1, "the last position is searched"

    def test_bad_beam_width(self, subtests) -> None:
        model = masked_lm("bert")
        ids, args = agreement_batch(batch=1)
        for width in (0, -1, 2.0, True, "3"):
            with subtests.test(width=width), pytest.raises(ValueError, match="beam_width"):
                attribution(model).attribute(
                    ids,
                    additional_forward_args=args,
                    output_position=4,
                    beam_width=width,
                )



def _assert_same_alternatives(first, second) -> None:
    """The same other routes, in the same order, with values equal to 1e-12."""
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert [x["positions"] for x in a] == [x["positions"] for x in b]
        torch.testing.assert_close(
            _f64([x["embedding_influence"] for x in a]),
            _f64([x["embedding_influence"] for x in b]),
            **TOL,
        )


class TestRowwiseBeam:
    """The row-wise beam (shared primal pass, one-position tangents) against the
    forward-mode beam and brute force, in float64."""

    @pytest.mark.parametrize("split_mlp", [False, True], ids=["paper", "split_mlp"])
    @pytest.mark.parametrize("case", CASES)
    def test_rowwise_beam_equals_forward_mode_beam(self, case, split_mlp) -> None:
        """Every family (ALBERT with layer groups, GQA decoders), on a padded row:
        the same prefixes, signs, nodes and alternatives, every candidate to 1e-12,
        and the chosen routes' influences equal the gated integrated gradient."""
        model = case_model(case)
        example = padded_problem(model, split_mlp)
        sources = torch.arange(8)
        with float64_internals(), analysis_mode(model):
            rowwise, g = rowwise_beam(example, sources, 4, beam_width=5)
            generic, g_generic = forward_mode_beam(example, sources, 4, beam_width=5)
            patterns = rowwise.patterns(g)
            brute = {
                level: pattern_influence(example, patterns, level)
                for level in ("embedding", "attention")
            }
        assert max(len(a) for a in rowwise.alternatives) == 4  # the beam is full
        torch.testing.assert_close(g, g_generic, **TOL)
        assert_same_search_state(rowwise, generic, TOL)
        _assert_same_alternatives(rowwise.alternatives, generic.alternatives)
        for level, name in (("embedding", "embedding_influence"),
                            ("attention", "influence")):
            reported = _f64([getattr(p, name) for p in patterns])
            torch.testing.assert_close(reported, brute[level], **TOL)
        assert brute["attention"].abs().max() > 1e-4  # not trivially zero

    @pytest.mark.parametrize("family", ["bert", "albert", "gpt2", "llama"])
    def test_batch_with_an_output_position_per_row(self, family) -> None:
        """``attribute(beam_width=3)`` on two padded rows whose QoIs read positions 4
        and 5: the row-wise beam equals the forward-mode beam."""
        ids, kwargs = per_row_output_batch()
        kwargs.update(n_steps=4, beam_width=3)
        explainer = attribution(case_model(family), split_mlp=True)
        no_rowwise = "captum_influence_patterns.search.fast.rowwise_blocks"
        with float64_internals():
            with mock.patch(
                "captum_influence_patterns.search.beam.forward_mode_beam"
            ) as generic:
                rowwise = explainer.attribute(ids, **kwargs)
            generic.assert_not_called()
            with mock.patch(no_rowwise, return_value=None):
                fallback = explainer.attribute(ids, **kwargs)
        assert_same_patterns(rowwise, fallback, atol=1e-12, rtol=1e-9)
        for row_a, row_b in zip(rowwise.patterns, fallback.patterns):
            _assert_same_alternatives(
                [p.alternatives for p in row_a], [p.alternatives for p in row_b]
            )

    def test_unreadable_attention_falls_back_with_a_warning(self) -> None:
        ids, args = agreement_batch()
        model = masked_lm("gpt2")
        example = problem(model, ids, args, n_steps=2)
        sources = torch.tensor([0, 1, 2])
        mismatch = RowwiseMismatch("model: contexts != weights @ values")
        target = (
            "captum_influence_patterns.search.rowwise.linearisation.LinearisedBlock.finish"
        )
        with analysis_mode(model):
            with mock.patch(target, side_effect=mismatch):
                with pytest.warns(RuntimeWarning, match="falling back"):
                    state, _ = beam_schedule(example, sources, 4, beam_width=3)
            expected, _ = forward_mode_beam(example, sources, 4, beam_width=3)
        assert_same_search_state(state, expected, TOL)
        _assert_same_alternatives(state.alternatives, expected.alternatives)

    def test_rowwise_beam_refuses_what_it_does_not_cover(self) -> None:
        ids, args = agreement_batch()
        model = masked_lm("bert")
        example = problem(model, ids, args, n_steps=2)
        model.train()
        with pytest.raises(ValueError, match="^problem: the row-wise schedule"):
            rowwise_beam(example, torch.tensor([0]), 4, beam_width=2)
        model.eval()
