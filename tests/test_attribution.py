"""InfluencePatterns as a Captum attribution: bad input, model state, hooks."""

from __future__ import annotations


import torch
from captum.attr import Attribution
from transformers import OPTConfig, OPTForCausalLM

from captum_influence_patterns import InfluencePatterns, UnsupportedModelError
from captum_influence_patterns.testing import (
    MASK_ID,
    ModelState,
    agreement_batch,
    agreement_keywords,
    assert_no_hooks,
    attribution,
    masked_lm,
)
import pytest


class TestAttributionInterface:
    def test_captum_shape(self) -> None:
        ip = attribution(masked_lm())
        assert isinstance(ip, Attribution)
        assert ip.has_convergence_delta()
        assert ip.multiplies_by_inputs
        assert ip.get_name() == "Influence Patterns"
        assert hasattr(InfluencePatterns.attribute, "__wrapped__")

    def test_unsupported_architecture_lists_families(self) -> None:
        config = OPTConfig(hidden_size=8, num_hidden_layers=1, ffn_dim=16,
                           num_attention_heads=2, vocab_size=20, word_embed_proj_dim=8)
        model = OPTForCausalLM(config)
        with pytest.raises(UnsupportedModelError, match="'opt'.*albert, bert, "):
            InfluencePatterns(lambda ids: model(ids).logits[:, -1, 0], model)


class TestModelLeftAsItWas:
    def _model_in_user_state(self):
        model = masked_lm()
        model.set_attn_implementation("sdpa")
        model.train()
        model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
        return model

    def test_after_success_both_schedules(self) -> None:
        model = self._model_in_user_state()
        before = ModelState.of(model)
        ids, args = agreement_batch(batch=1)
        ip = attribution(model)
        for schedule in ("fast", "reference"):
            ip.attribute(ids, schedule=schedule, **agreement_keywords(args, n_steps=4))
            before.assert_unchanged(model)
        ip.pattern_influence(ids, [[]], baselines=MASK_ID, additional_forward_args=args)
        before.assert_unchanged(model)

    def test_after_an_exception_mid_run(self) -> None:
        model = self._model_in_user_state()
        before = ModelState.of(model)
        ids, args = agreement_batch(batch=1)
        calls = {"n": 0}
        inner = attribution(model).forward_func

        def flaky(input_ids, *rest):
            calls["n"] += 1
            if calls["n"] == 3:  # after validation, in the search's forward-mode pass
                raise RuntimeError("boom")
            return inner(input_ids, *rest)

        ip = InfluencePatterns(flaky, model)
        with pytest.raises(RuntimeError, match="boom"):
            ip.attribute(ids, **agreement_keywords(args, n_steps=4))
        assert calls["n"] == 3
        before.assert_unchanged(model)

    def test_train_mode_gives_eval_results(self) -> None:
        model = masked_lm()
        ids, args = agreement_batch(batch=1)
        kwargs = agreement_keywords(args, n_steps=4)
        evaluated = attribution(model).attribute(ids, **kwargs)
        model.train()
        trained = attribution(model).attribute(ids, **kwargs)
        torch.testing.assert_close(trained.token_influence, evaluated.token_influence)


class TestBadInput:
    @classmethod
    def setup_class(cls) -> None:
        cls.model = masked_lm()
        cls.ip = attribution(cls.model)
        cls.ids, cls.args = agreement_batch(batch=2)

    def _check(self, pattern, exception=ValueError, inputs=None, **kwargs):
        settings = dict(
            baselines=MASK_ID,
            additional_forward_args=self.args,
            output_position=4,
            n_steps=4,
        )
        settings.update(kwargs)
        calls = {"n": 0}
        forward = self.ip.forward_func

        def counting(*a):
            calls["n"] += 1
            return forward(*a)

        ip = InfluencePatterns(counting, self.model)
        with pytest.raises(exception, match=pattern):
            ip.attribute(self.ids if inputs is None else inputs, **settings)
        assert_no_hooks(self.model)
        return calls["n"]

    def test_errors_name_the_argument_before_any_work(self, subtests) -> None:
        cases = [
            ("inputs: expected \\(B, T\\)", ValueError, dict(inputs=self.ids[0])),
            ("inputs: expected integer", TypeError, dict(inputs=self.ids.double())),
            ("inputs: token ids must lie", ValueError, dict(inputs=self.ids + 1000)),
            ("baselines: shape", ValueError, dict(baselines=torch.zeros(3, 7).long())),
            ("baselines: expected integer", TypeError, dict(baselines=torch.zeros(7))),
            ("baselines: token ids", ValueError, dict(baselines=10_000)),
            ("output_position: 9", ValueError, dict(output_position=9)),
            ("output_position: expected", ValueError, dict(output_position=[4, 4, 4])),
            ("sources: 7", ValueError, dict(sources=[0, 7])),
            ("sources: .* twice", ValueError, dict(sources=[1, 1])),
            ("sources: expected one list", ValueError, dict(sources=[[0], [1], [2]])),
            ("n_steps: expected", ValueError, dict(n_steps=0)),
            ("method: unknown", ValueError, dict(method="simpson")),
            ("internal_batch_size", ValueError, dict(internal_batch_size=0)),
            ("schedule", ValueError, dict(schedule="slow")),
        ]
        for pattern, exception, kwargs in cases:
            with subtests.test(pattern=pattern):
                inputs = kwargs.pop("inputs", None)
                calls = self._check(pattern, exception, inputs=inputs, **kwargs)
                assert calls == 0, "validation must come before any forward pass"

    def test_forward_func_must_give_one_scalar_per_example(self) -> None:
        model = self.model
        logits = InfluencePatterns(lambda ids: model(input_ids=ids).logits, model)
        with pytest.raises(ValueError, match="forward_func/target: expected one scalar"):
            logits.attribute(self.ids, output_position=4, target=3)
        with pytest.raises(ValueError, match="target"):
            logits.attribute(self.ids, output_position=4, target=[1, 2, 3])
        assert_no_hooks(model)

