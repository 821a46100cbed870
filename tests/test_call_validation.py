"""Calls that would give a silent wrong answer are refused or made safe before any
work: concurrency, impossible routes, NaN, model state, the decoder's output token,
and clear errors from the Python API."""

from __future__ import annotations

import json
import threading
import warnings

import numpy as np
import torch
from transformers import BertConfig, BertForMaskedLM

from captum_influence_patterns import InfluencePatterns, masked_lm_logit_difference
from captum_influence_patterns.quadrature import IntegrationSettings
from captum_influence_patterns.search import SearchState
from captum_influence_patterns.testing import (
    assert_no_hooks,
    assert_same_patterns,
    MASK_ID,
    SHAPE,
    agreement_batch,
    agreement_keywords,
    attribution,
    classifier,
    masked_lm,
)
import pytest

STEPS = 4


class TestConcurrentCalls:
    def test_two_threads_match_sequential_calls(self) -> None:
        models = [masked_lm("bert"), masked_lm("gpt2")]
        for model in models:
            model.set_attn_implementation("sdpa")  # each call switches it to eager
        ids, args = agreement_batch(batch=1)
        jobs = [(models[0], 1), (models[0], 2), (models[1], 3)]  # one model, and two

        def run(model, seed):
            ids, args = agreement_batch(seed=seed, batch=1)
            return attribution(model).attribute(ids, **agreement_keywords(args))

        expected = [run(model, seed) for model, seed in jobs]
        results, errors = {}, []

        def worker(k, model, seed):
            try:
                for repeat in range(3):
                    results[(k, repeat)] = run(model, seed)
            except Exception as error:  # reported below, with its message
                errors.append(repr(error))

        threads = [
            threading.Thread(target=worker, args=(k, *job))
            for k, job in enumerate(jobs)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        for (k, _), result in results.items():
            assert_same_patterns(result, expected[k])
            assert torch.equal(result.token_influence, expected[k].token_influence)
        for model in models:
            assert model.config._attn_implementation == "sdpa"
            assert_no_hooks(model)


class TestOutputPositionTheQoIDoesNotRead:
    def test_refused_naming_the_positions_read(self, subtests) -> None:
        for family in ("bert", "gpt2"):
            model = masked_lm(family)
            ids, (_, correct, wrong) = agreement_batch(batch=1)
            reads_two = (torch.tensor([2]), correct, wrong)
            for schedule in ("fast", "reference"):
                with subtests.test(family=family, schedule=schedule):
                    with pytest.raises(ValueError, match=r"output_position: the QoI does not read position 4 .*"
                        r"reads position\(s\) \[2\]"):
                        attribution(model).attribute(
                            ids, **agreement_keywords(reads_two, schedule=schedule)
                        )
                    assert_no_hooks(model)


class TestRoutesArePossible:
    def _assert_skips_stay(self, result):
        for row in result.patterns:
            for p in row:
                for node in p.nodes:
                    if p.positions[node.layer] != p.positions[node.layer - 1]:
                        assert node.kind == "head", (p.positions, node)

    def test_zero_influence_source_moves_only_through_a_head(self, subtests) -> None:
        model = masked_lm("bert")
        ids, args = agreement_batch(batch=2)
        mask = torch.ones_like(ids)
        mask[:, 5:] = 0  # padding at 5 and 6: no influence on position 4
        for schedule in ("fast", "reference"):
            with subtests.test(schedule=schedule):
                result = attribution(model).attribute(
                    ids,
                    **agreement_keywords(
                        args, attention_mask=mask, sources=[6, 0], schedule=schedule
                    ),
                )
                pad = result.patterns[0][0]
                assert pad.token_influence == 0.0
                assert pad.positions[1] != 6  # all zero: position 0 ...
                assert pad.nodes[0].kind == "head"  # ... through a head
                assert pad.nodes[0].head == 0  # the deterministic choice
                self._assert_skips_stay(result)

    def test_skip_is_no_candidate_when_the_position_moves(self) -> None:
        state = SearchState(
            sign=torch.ones(2, dtype=torch.float64),
            positions=torch.tensor([[1, 2], [1, 1]]),
            position_candidates=torch.zeros(2, 1, 3, dtype=torch.float64),
            is_head=torch.zeros(2, 1, dtype=torch.bool),
            head=torch.zeros(2, 1, dtype=torch.long),
            node_candidates=torch.zeros(2, 1, 3, dtype=torch.float64),
            is_mlp=torch.zeros(2, 1, dtype=torch.bool),
            ffn_candidates=torch.zeros(2, 1, 2, dtype=torch.float64),
        )
        heads = torch.tensor([[-1.0, -0.5], [-1.0, -0.5]], dtype=torch.float64)
        skip = torch.tensor([3.0, 3.0], dtype=torch.float64)
        is_head, head = state.record_nodes(torch.arange(2), 1, heads, skip)
        assert is_head.tolist() == [True, False]  # moved: head; stayed: skip
        assert head[0].item() == 1

    def test_padding_is_no_default_source_and_the_mask_is_passed_on(self) -> None:
        model = masked_lm("bert")
        ids, args = agreement_batch(batch=2)
        mask = torch.ones_like(ids)
        mask[0, 5:] = 0
        mask[1, 6:] = 0
        ip = attribution(model)
        keyword = ip.attribute(ids, **agreement_keywords(args, attention_mask=mask))
        assert [p.source for p in keyword.patterns[0]] == [0, 1, 2, 3]
        assert [p.source for p in keyword.patterns[1]] == [0, 1, 2, 3, 5]
        # the same mask given to forward_func by hand gives the same numbers
        by_hand = ip.attribute(
            ids, **agreement_keywords((*args, mask), sources=[[0, 1, 2, 3], [0, 1, 2, 3, 5]])
        )
        assert_same_patterns(keyword, by_hand)
        torch.testing.assert_close(keyword.token_influence, by_hand.token_influence)
        assert float(keyword.token_influence[0, 5:].abs().sum()) == 0.0

    def test_causal_routes_never_pass_the_output_position(self) -> None:
        state = SearchState.empty(_causal_problem(), torch.tensor([1]))
        influence = torch.tensor(
            [[-5.0, -2.0, -1.0, -3.0, -4.0, 0.0, 0.0]], dtype=torch.float64
        )
        state.sign[:] = 1.0
        state.record_positions(torch.arange(1), 2, influence, output_position=4)
        assert int(state.positions[0, 2]) == 2  # not 5 or 6 (zero, later)


def _causal_problem():
    model = masked_lm("gpt2")
    ids, args = agreement_batch(batch=1)
    ip = attribution(model)
    return ip.example_problem(ids, None, None, args, 0, IntegrationSettings(2))


class TestNonFinite:
    @classmethod
    def setup_class(cls) -> None:
        cls.model = masked_lm("bert")
        cls.ids, cls.args = agreement_batch(batch=1)
        cls.inner = staticmethod(masked_lm_logit_difference(cls.model))

    def _refused(self, forward, pattern, **overrides):
        with pytest.raises(ValueError, match=pattern):
            InfluencePatterns(forward, self.model).attribute(
                self.ids, **agreement_keywords(self.args, **overrides)
            )
        assert_no_hooks(self.model)

    def test_nan_qoi_at_the_input(self) -> None:
        self._refused(
            lambda *a: self.inner(*a) * float("nan"),
            r"forward_func: the QoI is NaN or infinite at the input of example\(s\) "
            r"\[0\]",
        )

    def test_infinite_qoi_at_the_baseline(self) -> None:
        model = masked_lm("bert")
        with torch.no_grad():  # token 2 is never in the inputs, only the baseline
            model.bert.embeddings.word_embeddings.weight[2] = float("inf")
        with pytest.raises(ValueError, match="QoI of example 0 is .* at the baseline"):
            attribution(model).attribute(self.ids, **agreement_keywords(self.args, baselines=2))

    def test_nan_influence_with_finite_qoi(self, subtests) -> None:
        def forward(*a):  # finite value everywhere, NaN derivative everywhere
            value = self.inner(*a)
            return value + 0.0 * torch.sqrt(value - value.detach())

        for schedule in ("fast", "reference"):
            with subtests.test(schedule=schedule):
                self._refused(forward, "NaN or infinite", schedule=schedule)


class TestModelState:
    def test_every_submodule_flag_comes_back(self) -> None:
        model = masked_lm("bert")
        model.train()
        model.bert.embeddings.eval()
        model.bert.encoder.layer[1].attention.requires_grad_(False)
        flags = {name: m.training for name, m in model.named_modules()}
        grads = {name: p.requires_grad for name, p in model.named_parameters()}
        ids, args = agreement_batch(batch=1)
        inner = masked_lm_logit_difference(model)

        def failing(*a):
            if torch.is_grad_enabled() and a[0].shape[0] > 1:  # inside the search
                raise RuntimeError("boom")
            return inner(*a)

        attribution(model).attribute(ids, **agreement_keywords(args))
        with pytest.raises(RuntimeError, match="boom"):
            InfluencePatterns(failing, model).attribute(ids, **agreement_keywords(args))
        assert {n: m.training for n, m in model.named_modules()} == flags
        assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
        assert_no_hooks(model)


class TestEveryPositionCounts:
    def test_decoder_completeness_and_output_token_as_source(self, subtests) -> None:
        for family in ("gpt2", "llama"):
            with subtests.test(family=family):
                model = masked_lm(family)
                ids, args = agreement_batch(batch=2)
                ids[:, 4] = 7  # a real last token, unlike the baseline
                ip = attribution(model)
                # g is reported at every position whatever the sources
                result = ip.attribute(
                    ids,
                    **agreement_keywords(
                        args, sources=[4], n_steps=128, return_convergence_delta=True
                    ),
                )
                with torch.no_grad():
                    change = ip.forward_func(ids, *args) - ip.forward_func(
                        torch.full_like(ids, MASK_ID), *args
                    )
                total = result.token_influence.sum(1)
                torch.testing.assert_close(total, change, atol=1e-5, rtol=1e-5)
                # the delta is computed from the reported attributions (Llama's
                # float32 RMSNorm: its QoIs through hooks agree to ~1e-7)
                torch.testing.assert_close(
                    result.convergence_delta, total - change, atol=1e-6, rtol=0
                )
                assert bool((result.token_influence[:, 5:] == 0).all())
                assert bool((result.token_influence[:, :5] != 0).all())
                searched = ip.attribute(ids, **agreement_keywords(args))
                for row in searched.patterns:
                    assert [p.source for p in row] == [0, 1, 2, 3, 4]
                    last = row[-1]
                    assert last.positions == [4] * 4  # stays at the output
                    assert last.influence != 0.0
                    for p in row:
                        assert all(j <= 4 for j in p.positions)

    def test_masked_output_is_no_default_source(self) -> None:
        model = masked_lm("bert")
        ids, args = agreement_batch(batch=1)  # [MASK] at 4, [MASK] baseline
        result = attribution(model).attribute(ids, **agreement_keywords(args))
        assert [p.source for p in result.patterns[0]] == [0, 1, 2, 3, 5, 6]
        assert float(result.token_influence[0, 4]) == 0.0

    def test_cls_is_a_source_searched_like_the_others(self) -> None:
        model = classifier()
        ids, _ = agreement_batch(batch=1)
        from captum_influence_patterns import classifier_logit_difference

        ip = InfluencePatterns(classifier_logit_difference(model), model)
        kwargs = dict(
            baselines=MASK_ID, additional_forward_args=(2, 0), output_position=0
        )
        result = ip.attribute(ids, n_steps=8, **kwargs)
        assert result.patterns[0][0].source == 0
        del kwargs["output_position"]
        brute = ip.pattern_influence(ids, result.patterns, n_steps=8, **kwargs)[0]
        reported = torch.tensor(
            [p.influence for p in result.patterns[0]], dtype=torch.float64
        )
        torch.testing.assert_close(brute, reported, atol=1e-12, rtol=1e-9)


class TestClearErrors:
    @classmethod
    def setup_class(cls) -> None:
        cls.model = masked_lm("bert")
        cls.ids, cls.args = agreement_batch(batch=2)
        cls.inner = staticmethod(masked_lm_logit_difference(cls.model))

    def _attribute(self, forward, ids=None, **overrides):
        return InfluencePatterns(forward, self.model).attribute(
            self.ids if ids is None else ids, **agreement_keywords(self.args, **overrides)
        )

    def test_forward_errors_pass_through(self) -> None:
        def broken(*a):
            raise RuntimeError("user bug")

        with pytest.raises(RuntimeError) as caught:
            self._attribute(broken)
        assert str(caught.value) == "user bug"  # unchanged, the note aside
        assert "raised by forward_func" in " ".join(caught.value.__notes__)
        too_long = torch.full((1, 45), 9)  # longer than the position table (40)
        with pytest.raises(Exception) as caught:
            self._attribute(self.inner, ids=too_long, additional_forward_args=(4, 5, 6))
        assert "target" not in str(caught.value)
        assert_no_hooks(self.model)

    def test_one_line_errors_naming_argument_and_fix(self, subtests) -> None:
        inner = self.inner
        cases = [
            (
                "forward_func: it never ran the model's word embeddings",
                lambda ids, *a: torch.zeros(ids.shape[0], requires_grad=True),
                {},
            ),
            (
                "forward_func: the QoI does not depend differentiably",
                lambda *a: inner(*a).detach(),
                {},
            ),
            (
                "forward_func: the QoI has dtype torch.int64",
                lambda *a: inner(*a).long(),
                {},
            ),
            (
                "n_steps: method 'riemann_trapezoid' needs n_steps >= 2",
                inner,
                dict(n_steps=1, method="riemann_trapezoid"),
            ),
            (
                "n_steps: method 'riemann_left' needs n_steps >= 2",
                inner,
                dict(n_steps=1, method="riemann_left"),
            ),
        ]
        for pattern, forward, overrides in cases:
            with subtests.test(pattern=pattern):
                with pytest.raises(ValueError, match=pattern) as caught:
                    self._attribute(forward, **overrides)
                assert "\n" not in str(caught.value)
                assert_no_hooks(self.model)

    def test_inference_mode(self) -> None:
        with torch.inference_mode():
            with pytest.raises(RuntimeError, match="torch.inference_mode"):
                self._attribute(self.inner)

    def test_meta_device_model(self) -> None:
        with torch.device("meta"):
            model = BertForMaskedLM(BertConfig(**SHAPE))
        ip = attribution(model)
        with pytest.raises(ValueError, match="model: its weights are on the meta"):
            ip.attribute(self.ids, **agreement_keywords(self.args))

    def test_causal_output_at_zero_without_a_source(self) -> None:
        model = masked_lm("gpt2")
        ids, args = agreement_batch(batch=1)
        ids[:, 0] = MASK_ID
        with pytest.raises(ValueError, match="sources: example 0 has no default"):
            attribution(model).attribute(ids, **agreement_keywords(args, output_position=0))

    def test_numpy_integers(self) -> None:
        ip = attribution(self.model)
        plain = ip.attribute(
            self.ids, **agreement_keywords(self.args, sources=[0, 2], internal_batch_size=8)
        )
        numpy = ip.attribute(
            self.ids,
            baselines=np.int64(MASK_ID),
            additional_forward_args=self.args,
            output_position=np.int64(4),
            sources=np.array([0, 2]),
            n_steps=np.int32(STEPS),
            internal_batch_size=np.int64(8),
        )
        assert_same_patterns(plain, numpy)
        assert json.dumps(numpy.to_dict()) == json.dumps(plain.to_dict())
        per_example = ip.attribute(
            self.ids,
            **agreement_keywords(
                self.args,
                output_position=np.array([4, 4]),
                sources=[[np.int64(0), np.int64(2)]] * 2,
            ),
        )
        assert_same_patterns(plain, per_example)
        model = self.model
        logits = InfluencePatterns(lambda ids: model(ids).logits[:, 4], model)
        runs = [
            logits.attribute(
                self.ids, baselines=MASK_ID, target=target, output_position=4, n_steps=2
            )
            for target in (7, np.int64(7), [np.int64(7)] * 2, np.array([7, 7]))
        ]
        for run in runs[1:]:
            assert_same_patterns(runs[0], run)


class TestReducedPrecision:
    def test_warns_once_per_call(self) -> None:
        model = masked_lm("bert").to(torch.bfloat16)
        ids, args = agreement_batch(batch=2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            attribution(model).attribute(ids, **agreement_keywords(args, n_steps=2))
        messages = [str(w.message) for w in caught if "computes in float32" in str(w.message)]
        assert len(messages) == 1, messages
        assert "bfloat16" in messages[0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            attribution(masked_lm("bert")).attribute(ids, **agreement_keywords(args, n_steps=2))
        assert not any("float32" in str(w.message) for w in caught)

