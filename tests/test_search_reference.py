"""Guided pattern refinement: fast schedule == reference schedule == brute force."""

from __future__ import annotations

import json

import torch

from captum_influence_patterns import (
    InfluencePatterns,
    InfluencePatternsResult,
    classifier_logit_difference,
)
from captum_influence_patterns.testing import (
    FAMILIES,
    MASK_ID,
    agreement_batch,
    agreement_keywords,
    assert_brute_force_influences,
    assert_same_patterns,
    attribution,
    classifier,
    masked_lm,
    mean_pooled_qoi,
    run_search,
)

TOL = dict(atol=1e-12, rtol=1e-9)
STEPS = 12


def _f64(values):
    return torch.tensor(values, dtype=torch.float64)


def _run(model, ids, args, **kwargs):
    return run_search(model, ids, args, STEPS, **kwargs)


class TestSchedulesAgree:
    def test_fast_equals_reference_equals_brute_force_every_family(self, subtests) -> None:
        for family in FAMILIES:
            with subtests.test(family=family):
                model = masked_lm(family)
                ids, args = agreement_batch()
                fast = _run(model, ids, args)
                reference = _run(model, ids, args, schedule="reference")
                assert_same_patterns(fast, reference)
                assert_brute_force_influences(
                    attribution(model), ids, fast, baselines=MASK_ID,
                    additional_forward_args=args, n_steps=STEPS,
                )

    def test_choices_follow_the_rules(self) -> None:
        model = masked_lm("bert", seed=3)
        ids, args = agreement_batch(seed=5)
        result = _run(model, ids, args)
        signs = set()
        for row, t in zip(result.patterns, result.output_positions):
            for p in row:
                signs.add(p.sign)
                candidates = _f64(p.position_candidates)
                L = len(p.nodes)
                assert p.positions[0] == p.source
                assert p.positions[L] == t
                # sign rule: the sign of g, read as the sum of layer-1 influences
                assert abs(float(candidates[0].sum()) - p.token_influence) <= 1e-12
                assert p.sign == (-1 if candidates[0].sum() < 0 else 1)
                for layer in range(1, L):
                    assert p.positions[layer] == \
                        int((p.sign * candidates[layer - 1]).argmax())
                for node, options in zip(p.nodes, p.node_candidates):
                    heads, skip = _f64(options[:-1]), options[-1]
                    best = int((p.sign * heads).argmax())
                    if node.kind == "head":
                        assert node.head == best
                        assert p.sign * heads[best] > p.sign * skip
                    else:
                        assert p.sign * skip >= p.sign * heads[best]
                    if p.positions[node.layer] != p.positions[node.layer - 1]:
                        assert skip == 0.0
                        assert node.kind == "head"
                # the route's value at the last layer is the pattern's influence
                assert p.influence == p.nodes[-1].influence
                assert p.embedding_influence == p.position_influence[-1]
        assert signs == {-1, 1}, "the fixture should exercise both signs"


class TestPooledQoI:
    def test_last_layer_is_searched_when_every_position_is_read(self) -> None:
        model = masked_lm("bert", seed=2)
        ids, _ = agreement_batch(batch=1)
        ip = InfluencePatterns(mean_pooled_qoi(model), model)
        kwargs = dict(baselines=MASK_ID, output_position=None, n_steps=8)
        fast = ip.attribute(ids, **kwargs)
        reference = ip.attribute(ids, schedule="reference", **kwargs)
        assert_same_patterns(fast, reference)
        assert [p.source for p in fast.patterns[0]] == list(range(7))
        brute = ip.pattern_influence(ids, fast.patterns, baselines=MASK_ID, n_steps=8)
        reported = _f64([p.influence for p in fast.patterns[0]])
        torch.testing.assert_close(brute[0], reported, **TOL)
        ends = set()
        for p in fast.patterns[0]:
            last = _f64(p.position_candidates[-1])
            ends.add(p.positions[-1])
            assert p.positions[-1] == int((p.sign * last).argmax())
        assert len(ends) > 1, "routes should end at searched positions"
        assert "pooled QoI" in str(fast)


class TestBatching:
    def test_batch_and_internal_batch_size_do_not_change_results(self, subtests) -> None:
        model = masked_lm("bert")
        ids, args = agreement_batch(batch=3)
        whole = _run(model, ids, args, return_convergence_delta=True)
        settings = [("fast", size) for size in (5, STEPS, 3 * STEPS + 1)]
        settings += [("reference", None), ("reference", 7)]
        for schedule, size in settings:
            with subtests.test(schedule=schedule, internal_batch_size=size):
                chunked = _run(
                    model,
                    ids,
                    args,
                    schedule=schedule,
                    internal_batch_size=size,
                    return_convergence_delta=True,
                )
                assert_same_patterns(whole, chunked)
                torch.testing.assert_close(
                    chunked.convergence_delta, whole.convergence_delta, **TOL
                )
        one = _run(model, ids[1:2], tuple(a[1:2] for a in args))
        assert_same_patterns(one,
            InfluencePatternsResult(
                whole.token_influence[1:2], whole.patterns[1:2], [4], [ids[1].tolist()]
            ),
        )
        torch.testing.assert_close(
            one.token_influence, whole.token_influence[1:2], **TOL
        )


class TestResultObject:
    def test_fields_convergence_and_json_round_trip(self) -> None:
        model = masked_lm("bert")
        ids, args = agreement_batch()
        ip = attribution(model)
        result = _run(
            model, ids, args, sources=[0, 2, 5], return_convergence_delta=True
        )
        assert result.token_influence.shape == ids.shape
        assert [p.source for p in result.patterns[0]] == [0, 2, 5]
        # g at every position whatever the sources, so that it sums to the QoI change;
        # completeness over all positions: Captum's own convergence delta agrees
        full = _run(model, ids, args, return_convergence_delta=True)
        torch.testing.assert_close(result.token_influence, full.token_influence, **TOL)
        assert bool((result.token_influence[:, [1, 3, 6]] != 0).all())
        for row, g in zip(result.patterns, result.token_influence):
            assert [p.token_influence for p in row] == g[[0, 2, 5]].tolist()
        captum_delta = ip.compute_convergence_delta(
            full.token_influence,
            torch.full_like(ids, MASK_ID),
            ids,
            additional_forward_args=args,
        )
        torch.testing.assert_close(
            full.convergence_delta, captum_delta.double(), atol=1e-6, rtol=0
        )
        precise = attribution(model).attribute(
            ids,
            **agreement_keywords(
                args, n_steps=64, sources=[0], return_convergence_delta=True
            ),
        )
        assert float(precise.convergence_delta.abs().max()) < 1e-5
        torch.testing.assert_close(
            result.convergence_delta, full.convergence_delta, **TOL
        )
        text = json.dumps(result.to_dict())
        back = InfluencePatternsResult.from_dict(json.loads(text))
        assert back.to_dict() == result.to_dict()
        assert "route" in str(result)


class TestHeadsAndMethods:
    def test_classifier_at_cls(self) -> None:
        model = classifier()
        ids, _ = agreement_batch()
        ip = InfluencePatterns(classifier_logit_difference(model), model)
        kwargs = dict(additional_forward_args=(2, 0), output_position=0, n_steps=8)
        fast = ip.attribute(ids, **kwargs)
        reference = ip.attribute(ids, schedule="reference", **kwargs)
        assert_same_patterns(fast, reference)
        assert all(p.positions[-1] == 0 for p in fast.patterns[0])

    def test_every_captum_method_and_zero_baseline(self, subtests) -> None:
        from captum.attr._utils.approximation_methods import SUPPORTED_METHODS

        model = masked_lm("bert")
        ids, args = agreement_batch(batch=1)
        ip = attribution(model)
        for method in SUPPORTED_METHODS:
            with subtests.test(method=method):
                result = ip.attribute(
                    ids,
                    additional_forward_args=args,
                    output_position=4,
                    n_steps=6,
                    method=method,
                    return_convergence_delta=True,
                )
                brute = ip.pattern_influence(
                    ids,
                    result.patterns,
                    additional_forward_args=args,
                    n_steps=6,
                    method=method,
                )[0]
                reported = torch.tensor(
                    [p.influence for p in result.patterns[0]], dtype=torch.float64
                )
                torch.testing.assert_close(brute, reported, **TOL)

