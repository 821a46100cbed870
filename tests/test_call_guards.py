"""Guards around the call: no silent wrong answer from forward functions that run
the model twice, left-padded decoders, QoIs whose argmax moves, foreign hooks, other
threads, float16, and impossible arguments."""

from __future__ import annotations

import threading
import warnings
from dataclasses import replace

import numpy as np
import torch

from captum_influence_patterns import (
    InfluencePatterns,
    NodeController,
    analysis_mode,
    masked_lm_logit_difference,
    model_graph,
)
from captum_influence_patterns.graph.hooks import register
from captum_influence_patterns.quadrature import integration_rule
from captum_influence_patterns.routes.compare import compare
from captum_influence_patterns.testing import (
    MASK_ID,
    ModelState,
    agreement_batch,
    agreement_keywords,
    assert_no_hooks,
    assert_same_patterns,
    attribution,
    family_model,
    masked_lm,
)
import pytest
import re


class _Counted:
    """A forward function that counts its calls."""

    def __init__(self, forward_func):
        self.forward_func = forward_func
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.forward_func(*args, **kwargs)


class TestForwardRunningTheModelTwice:
    """Item 2: refused up front (the probe pass counts the model's runs), for every
    schedule and the BERT row-wise fast path, with the model left as it was."""

    def test_average_and_contrast_are_refused_before_any_work(self, subtests) -> None:
        for family in ("bert", "gpt2"):
            model = masked_lm(family)
            qoi = masked_lm_logit_difference(model)
            ids, args = agreement_batch(batch=1)
            reference = ids.flip(1)  # a fixed sentence to contrast against

            def average(input_ids, *rest):
                return (qoi(input_ids, *rest) + qoi(input_ids, *rest)) / 2

            def contrast(input_ids, *rest):
                fixed = reference.expand(input_ids.shape[0], -1)
                return qoi(input_ids, *rest) - qoi(fixed, *rest)

            for forward_func in (average, contrast):
                for schedule in ("fast", "reference"):
                    with subtests.test(
                        family=family, qoi=forward_func.__name__, schedule=schedule
                    ):
                        counted = _Counted(forward_func)
                        before = ModelState.of(model)
                        with pytest.raises(ValueError, match="forward_func: it ran the model 2 times") as caught:
                            InfluencePatterns(counted, model).attribute(
                                ids, **agreement_keywords(args, schedule=schedule)
                            )
                        assert "\n" not in str(caught.value)
                        assert counted.calls == 1  # the probe only
                        before.assert_unchanged(model)

    def test_a_second_run_in_a_later_pass_is_refused(self, subtests) -> None:
        # One run for the probe's single row, two for a pass's many rows: every
        # pass checks that the model runs once on all its rows.
        model = masked_lm("bert")
        qoi = masked_lm_logit_difference(model)
        ids, args = agreement_batch(batch=1)

        def halves(input_ids, positions, correct, wrong):
            rows = input_ids.shape[0]
            if rows == 1:
                return qoi(input_ids, positions, correct, wrong)
            half = rows // 2
            parts = [
                qoi(input_ids[s], positions[s], correct[s], wrong[s])
                for s in (slice(0, half), slice(half, rows))
            ]
            return torch.cat(parts)

        for schedule in ("fast", "reference"):
            with subtests.test(schedule=schedule):
                with pytest.raises(ValueError, match="split its input into batches"):
                    InfluencePatterns(halves, model).attribute(
                        ids, **agreement_keywords(args, schedule=schedule)
                    )
                assert_no_hooks(model)

    def test_the_fix_in_the_message_gives_the_plain_qois_influences(self) -> None:
        # A contrast against a fixed sentence computed beforehand is a constant:
        # it moves no influence (exact, g is a gradient).
        model = masked_lm("bert")
        qoi = masked_lm_logit_difference(model)
        ids, args = agreement_batch(batch=1)
        with torch.no_grad():
            constant = qoi(ids.flip(1), *args)

        def contrast(input_ids, positions, correct, wrong, fixed):
            return qoi(input_ids, positions, correct, wrong) - fixed

        plain = InfluencePatterns(qoi, model).attribute(ids, **agreement_keywords(args))
        fixed = InfluencePatterns(contrast, model).attribute(
            ids, **agreement_keywords((*args, constant))
        )
        assert torch.equal(plain.token_influence, fixed.token_influence)
        assert_same_patterns(plain, fixed)


class TestLeftPaddedDecoders:
    """Item 3: refused up front, naming attention_mask, padding side and the fix."""

    def test_left_padding_is_refused_for_causal_models(self, subtests) -> None:
        for family in ("gpt2", "llama"):
            model = masked_lm(family)
            ids, args = agreement_batch(batch=2)
            mask = torch.ones_like(ids)
            mask[1, :2] = 0  # example 1 padded on the left
            counted = _Counted(masked_lm_logit_difference(model))
            ip = InfluencePatterns(counted, model)
            for call in ("attribute", "pattern_influence"):
                with subtests.test(family=family, call=call):
                    before = ModelState.of(model)
                    with pytest.raises(ValueError, match=r"^attention_mask: example 1 has padding before a token .*"
                        r"padding_side = 'right'") as caught:
                        if call == "attribute":
                            ip.attribute(ids, **agreement_keywords(args, attention_mask=mask))
                        else:
                            ip.pattern_influence(
                                ids,
                                [[], []],
                                baselines=MASK_ID,
                                additional_forward_args=args,
                                attention_mask=mask,
                            )
                    assert "\n" not in str(caught.value)
                    assert counted.calls == 0
                    before.assert_unchanged(model)

    def test_right_padding_gives_the_unpadded_runs_answer(self, subtests) -> None:
        # The fix the message names: padding after the output position changes
        # nothing a causal model computes there (known answer: the run without it).
        ids, args = agreement_batch(batch=1)
        mask = torch.ones_like(ids)
        mask[:, 5:] = 0
        for family in ("gpt2", "llama"):
            with subtests.test(family=family):
                ip = attribution(masked_lm(family))
                padded = ip.attribute(ids, **agreement_keywords(args, attention_mask=mask))
                alone = ip.attribute(ids[:, :5], **agreement_keywords(args))
                torch.testing.assert_close(
                    padded.token_influence[:, :5], alone.token_influence
                )
                assert float(padded.token_influence[0, 5:].abs().sum()) == 0
                for a, b in zip(padded.patterns[0], alone.patterns[0], strict=True):
                    assert a.positions == b.positions
                    assert [(n.kind, n.head) for n in a.nodes] == \
                        [(n.kind, n.head) for n in b.nodes]
                    torch.testing.assert_close(
                        [a.influence, a.embedding_influence, *a.position_influence],
                        [b.influence, b.embedding_influence, *b.position_influence],
                    )

    def test_left_padded_encoders_are_accepted(self) -> None:
        ids, args = agreement_batch(batch=2)
        left = torch.ones_like(ids)
        left[1, :2] = 0
        result = attribution(masked_lm("bert")).attribute(
            ids, **agreement_keywords(args, attention_mask=left, n_steps=2)
        )
        assert [p.source for p in result.patterns[1]] == [2, 3, 5, 6]


class TestMovingArgmax:
    """Item 5: a QoI reading h^L where its argmax moves along the path warns, naming
    the positions; the argmaxes are found here by plain forwards on inputs_embeds."""

    def _argmaxes(self, model, ids, token, n_steps):
        embed = model.bert.embeddings.word_embeddings
        alphas, _ = integration_rule("gausslegendre", n_steps)
        with torch.no_grad():
            x, base = embed(ids), embed(torch.full_like(ids, MASK_ID))
            logits = [model(inputs_embeds=base + a * (x - base)).logits for a in alphas]
        return {int(row[0, :, token].argmax()) for row in logits}

    def test_warns_naming_the_positions_exactly_when_the_argmax_moves(self, subtests) -> None:
        n_steps = 8
        for seed in (0, 5):
            model = masked_lm("bert", seed=seed)
            ids, args = agreement_batch(seed=seed, batch=1)
            token = int(args[1][0])

            def max_logit(input_ids):
                return model(input_ids).logits[:, :, token].max(1).values

            moved = self._argmaxes(model, ids, token, n_steps)
            with torch.no_grad():
                at_input = int(model(ids).logits[0, :, token].argmax())
            for schedule in ("fast", "reference"):
                with subtests.test(seed=seed, schedule=schedule):
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        InfluencePatterns(max_logit, model).attribute(
                            ids,
                            baselines=MASK_ID,
                            output_position=at_input,
                            n_steps=n_steps,
                            schedule=schedule,
                        )
                    messages = [
                        str(w.message) for w in caught if "reads h^L" in str(w.message)
                    ]
                    assert len(messages) == int(len(moved) > 1), moved
                    for position in moved if len(moved) > 1 else ():
                        assert f"[{position}]" in messages[0]
            assert (len(moved) > 1) == (seed == 0)  # both cases were tried

    def test_no_warning_for_a_fixed_position(self) -> None:
        ids, args = agreement_batch(batch=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            attribution(masked_lm("bert")).attribute(ids, **agreement_keywords(args))
        assert not [w for w in caught if "reads h^L" in str(w.message)]


class TestForeignHooks:
    """Item 6: hooks the library did not add stay, also when an exception escapes."""

    def test_hooks_registered_by_forward_func_stay(self, subtests) -> None:
        model = masked_lm("bert")
        qoi = masked_lm_logit_difference(model)
        ids, args = agreement_batch(batch=1)
        for fails in (False, True):
            with subtests.test(exception_escapes=fails):
                handles, seen = [], []

                def forward_func(input_ids, *rest):
                    if not handles:
                        handles.append(
                            model.bert.encoder.register_forward_hook(
                                lambda module, inputs, output: seen.append(1)
                            )
                        )
                    elif fails:
                        raise KeyError("user error")
                    return qoi(input_ids, *rest)

                try:
                    InfluencePatterns(forward_func, model).attribute(
                        ids, **agreement_keywords(args)
                    )
                except KeyError:
                    assert fails
                hooks = model.bert.encoder._forward_hooks
                assert list(hooks) == [handles[0].id]
                count = len(seen)
                with torch.no_grad():
                    model(ids)
                assert len(seen) == count + 1  # still live
                handles[0].remove()
                assert_no_hooks(model)


    def test_hooks_left_by_an_interrupted_pass_go_and_the_users_stay(self) -> None:
        model = masked_lm("bert")
        seen = []
        with analysis_mode(model):
            user = model.bert.encoder.register_forward_hook(
                lambda module, inputs, output: seen.append(1)
            )
            register(model_graph(model).hooks(NodeController()))  # never removed
        assert list(model.bert.encoder._forward_hooks) == [user.id]
        user.remove()
        assert_no_hooks(model)


class TestOtherThreads:
    """Item 7: a plain call of the model from another thread during ``attribute`` is
    refused in that thread with a clear error; the analysis is unaffected."""

    def test_plain_inference_in_another_thread_is_refused_there(self) -> None:
        model = masked_lm("bert")
        qoi = masked_lm_logit_difference(model)
        ids, args = agreement_batch(batch=1)
        expected = InfluencePatterns(qoi, model).attribute(ids, **agreement_keywords(args))
        with torch.no_grad():
            logits = model(ids).logits
        inside, answered = threading.Event(), threading.Event()
        outcome = {}

        def forward_func(input_ids, *rest):
            if input_ids.shape[0] > 2 and not inside.is_set():  # a gated pass
                inside.set()
                answered.wait(timeout=60)
            return qoi(input_ids, *rest)

        def plain_inference():
            inside.wait(timeout=60)
            try:
                with torch.no_grad():
                    outcome["logits"] = model(ids).logits
            except Exception as error:  # the outcome is checked below
                outcome["error"] = error
            answered.set()

        other = threading.Thread(target=plain_inference)
        other.start()
        result = InfluencePatterns(forward_func, model).attribute(
            ids, **agreement_keywords(args)
        )
        other.join()
        assert "logits" not in outcome
        assert isinstance(outcome["error"], RuntimeError)
        assert re.search(r"^model: .* called from another thread .*deepcopy", str(outcome["error"]))
        assert torch.equal(result.token_influence, expected.token_influence)
        assert_same_patterns(result, expected)
        with torch.no_grad():  # afterwards the model answers as before
            assert torch.equal(model(ids).logits, logits)
        assert_no_hooks(model)


class TestFloat16:
    """Item 8: float16 models work, computed in float32 (the float32 model's exact
    influences), and come back bit for bit in float16."""

    def test_float16_gives_the_float32_models_influences(self, subtests) -> None:
        for family, scale in (("bert", 1.0), ("bert", 15.0), ("gpt2", 1.0)):
            with subtests.test(family=family, weight_scale=scale):
                model = family_model(family, weight_scale=scale, dtype=torch.float16)
                upcast = family_model(family, weight_scale=scale, dtype=torch.float16)
                upcast.float()
                ids, args = agreement_batch(batch=1)
                before = ModelState.of(model)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    half = attribution(model).attribute(
                        ids, **agreement_keywords(args), return_convergence_delta=True
                    )
                assert any("float32" in str(w.message) for w in caught)
                single = attribution(upcast).attribute(
                    ids, **agreement_keywords(args), return_convergence_delta=True
                )
                assert torch.isfinite(half.token_influence).all()
                assert torch.equal(half.token_influence, single.token_influence)
                assert_same_patterns(half, single)
                before.assert_unchanged(model)
                assert _dtypes(model) == {torch.float16}

    def test_float16_routes_are_the_float32_models_routes(self) -> None:
        """compare computes every part in float32 alike: the conductance and
        attention routes as well as the search and the scores (conductance in
        float16 chose other positions than the float32 model's)."""
        model = family_model("bert", weight_scale=1.0, dtype=torch.float16)
        upcast = family_model("bert", weight_scale=1.0, dtype=torch.float16).float()
        ids, args = agreement_batch(batch=1)
        before = ModelState.of(model)
        results = []
        for each in (model, upcast):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ip = attribution(each)
                request = ip.request(
                    ids, MASK_ID, None, args, output_position=4, n_steps=4
                )
                results.append(
                    compare(ip, request, methods=["greedy", "rollout", "conductance"])
                )
        half, single = results
        assert half.methods == single.methods == ["greedy", "rollout", "conductance"]
        for name in ("guided", *half.methods):
            routes = [
                [(p.positions, p.influence) for p in example[name]]
                for example in (half.patterns[0], single.patterns[0])
            ]
            assert len(routes[0]) == len(routes[1]) == ids.shape[1] - 1
            assert routes[0] == routes[1], name
        before.assert_unchanged(model)
        assert _dtypes(model) == {torch.float16}

    def test_float16_comes_back_when_an_exception_escapes(self) -> None:
        model = family_model("bert", weight_scale=1.0, dtype=torch.float16)
        parameters = list(model.parameters())
        qoi = masked_lm_logit_difference(model)
        ids, args = agreement_batch(batch=1)
        calls = []

        def forward_func(input_ids, *rest):
            calls.append(1)
            if len(calls) > 2:
                raise KeyError("user error")
            return qoi(input_ids, *rest)

        before = ModelState.of(model)
        with pytest.raises(KeyError), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            InfluencePatterns(forward_func, model).attribute(ids, **agreement_keywords(args))
        before.assert_unchanged(model)
        assert _dtypes(model) == {torch.float16}
        assert all(a is b for a, b in zip(parameters, model.parameters()))


def _dtypes(model):
    """The floating dtypes of every parameter and buffer."""
    tensors = [*model.parameters(), *model.buffers()]
    return {tensor.dtype for tensor in tensors if tensor.is_floating_point()}


class TestImpossibleArguments:
    """Item 10: refused (or, for numpy integers, accepted) before any work."""

    def setup_method(self) -> None:
        self.model = masked_lm("bert")
        self.counted = _Counted(masked_lm_logit_difference(self.model))
        self.ip = InfluencePatterns(self.counted, self.model)
        self.ids, self.args = agreement_batch(batch=1)

    def test_bool_baselines_are_refused(self, subtests) -> None:
        for baselines in (True, False, torch.tensor(True)):
            with subtests.test(baselines=baselines):
                with pytest.raises(TypeError, match="^baselines: got a bool"):
                    self.ip.attribute(
                        self.ids, **agreement_keywords(self.args, baselines=baselines)
                    )
                assert self.counted.calls == 0

    def test_numpy_beam_width(self) -> None:
        numpy = self.ip.attribute(
            self.ids, **agreement_keywords(self.args, beam_width=np.int64(2))
        )
        plain = self.ip.attribute(self.ids, **agreement_keywords(self.args, beam_width=2))
        assert type(numpy.metadata["beam_width"]) is int
        assert_same_patterns(numpy, plain)

    def test_impossible_patterns_are_refused(self, subtests) -> None:
        pattern = self.ip.attribute(self.ids, **agreement_keywords(self.args)).patterns[0][0]
        moves = next(
            layer
            for layer in range(1, len(pattern.positions))
            if pattern.positions[layer] != pattern.positions[layer - 1]
        )

        def changed(layer, **fields):
            nodes = list(pattern.nodes)
            nodes[layer - 1] = replace(nodes[layer - 1], **fields)
            return replace(pattern, nodes=nodes)

        with pytest.raises(TypeError, match=r"^patterns: .*\[\[pattern\]\]"):
            self.ip.pattern_influence(self.ids, [pattern], baselines=MASK_ID)
        cases = [
            (changed(1, kind="head", head=99), "head 99 does not exist; heads are"),
            (changed(moves, kind="skip", head=None), "a skip where the route moves"),
            (changed(2, position=pattern.positions[2] + 1), "is not on the route"),
        ]
        calls = self.counted.calls
        for bad, message in cases:
            with subtests.test(message=message):
                with pytest.raises(ValueError, match="^patterns: .*" + message):
                    self.ip.pattern_influence(
                        self.ids,
                        [[bad]],
                        baselines=MASK_ID,
                        additional_forward_args=self.args,
                    )
                assert self.counted.calls == calls
        good = self.ip.pattern_influence(
            self.ids,
            [[pattern]],
            baselines=MASK_ID,
            additional_forward_args=self.args,
            n_steps=4,
        )
        assert abs(float(good[0][0]) - pattern.influence) <= 1e-9

