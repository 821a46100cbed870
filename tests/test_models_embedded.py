"""Tests of the embedded MiniLM model and its fitted linear agreement readouts."""

from __future__ import annotations

import json

import pytest
import torch

from captum_influence_patterns.paper.agreement_tasks import (
    TASKS,
    batch_inputs,
    generate,
    mask_hidden_states,
    readout_sign,
)

try:
    from captum_influence_patterns.models.embedded import (
        READOUT_PATH,
        LinearReadout,
        load_embedded_model,
        load_readouts,
        readout_forward,
        readout_metadata,
    )

    MODEL, TOKENIZER = load_embedded_model()
except Exception:  # pragma: no cover - the packaged model is a test dependency
    MODEL = TOKENIZER = None

pytestmark = pytest.mark.skipif(MODEL is None, reason="embedded model missing")

# Held-out accuracy floors on fresh test-noun sentences (seed 7, 96 per task, 24 per
# form). Measured with the shipped readout: sva_obj_rc 0.854, sva_subj_rc 0.844,
# sva_sent_comp 0.781, sva_pp 0.865, reflexive_rc 0.875, reflexive_gender 0.771 (chance
# is 0.5). The floors are those minus 0.10, about two binomial standard deviations at
# n = 96, so a regenerated readout or a small vocabulary change still passes while a
# broken readout (sign flipped, wrong position, wrong kind) does not.
ACCURACY_FLOORS = {
    "sva_obj_rc": 0.75,
    "sva_subj_rc": 0.74,
    "sva_sent_comp": 0.68,
    "sva_pp": 0.76,
    "reflexive_rc": 0.77,
    "reflexive_gender": 0.67,
}


class TestModel:
    def test_architecture(self) -> None:
        config = MODEL.config
        assert config.num_hidden_layers == 6
        assert config.num_attention_heads == 12
        assert config.hidden_size == 384
        assert not MODEL.training
        assert TOKENIZER.mask_token == "[MASK]"


class TestReadout:
    def test_load(self) -> None:
        readouts = load_readouts()
        assert set(readouts) == {"number", "gender"}
        for kind, r in readouts.items():
            assert r.kind == kind
            assert tuple(r.weight.shape) == (384,)
            assert torch.isfinite(r.weight).all()
            assert isinstance(r.bias, float)
        assert LinearReadout.load("gender").classes == ("male", "female")
        meta = readout_metadata()
        assert set(meta["heldout_accuracy"]) == set(TASKS)
        with open(READOUT_PATH, encoding="utf-8") as fh:
            assert "readouts" in json.load(fh)

    def test_readout_sign(self) -> None:
        for task, spec in TASKS.items():
            for e in generate(task, 4, TOKENIZER, seed=0):
                kind, sign = readout_sign(e)
                assert kind == spec.feature
                assert sign == (1.0 if e.correct == spec.words[0] else -1.0)

    def test_forward_shape_and_sign(self) -> None:
        examples = generate("sva_obj_rc", 8, TOKENIZER, seed=1)
        batch = batch_inputs(examples)
        f = readout_forward(MODEL, "number")
        with torch.no_grad():
            values = f(
                batch["input_ids"],
                batch["output_position"],
                batch["sign"],
                attention_mask=batch["attention_mask"],
            )
            flipped = f(batch["input_ids"], batch["output_position"], -batch["sign"])
            plain = f(batch["input_ids"], examples[0].output_position, 1.0)
        assert tuple(values.shape) == (8,)
        torch.testing.assert_close(flipped, -values)
        torch.testing.assert_close(plain * batch["sign"], values)
        readout = LinearReadout.load("number")
        hidden = mask_hidden_states(MODEL, examples)
        torch.testing.assert_close(plain, readout.logits(hidden))

    def test_float64(self) -> None:
        examples = generate("reflexive_gender", 4, TOKENIZER, seed=2)
        batch = batch_inputs(examples)
        f32 = readout_forward(MODEL, LinearReadout.load("gender"))
        model64, _ = load_embedded_model(dtype=torch.float64)
        f64 = readout_forward(model64, LinearReadout.load("gender"))
        with torch.no_grad():
            v32 = f32(batch["input_ids"], batch["output_position"], batch["sign"])
            v64 = f64(batch["input_ids"], batch["output_position"], batch["sign"])
        assert v64.dtype == torch.float64
        assert tuple(v64.shape) == (4,)
        torch.testing.assert_close(v64.float(), v32, atol=1e-3, rtol=1e-3)

    def test_gradient_equals_finite_differences(self) -> None:
        # The gradient's value, not only its presence: central differences in float64
        # never run a backward pass, so they check the autograd path independently.
        examples = generate("sva_pp", 1, TOKENIZER, seed=0)
        batch = batch_inputs(examples)
        model64, _ = load_embedded_model(dtype=torch.float64)
        f = readout_forward(model64, "number")
        args = (batch["input_ids"], batch["output_position"], batch["sign"])
        weight = model64.get_input_embeddings().weight
        f(*args).sum().backward()
        grad = weight.grad.clone()
        token = int(batch["input_ids"][0, 2])
        assert grad[token].abs().max() > 1e-6
        eps = 1e-6
        with torch.no_grad():
            for dim in (0, 17, 200):
                saved = weight[token, dim].item()
                weight[token, dim] = saved + eps
                up = f(*args).sum().item()
                weight[token, dim] = saved - eps
                down = f(*args).sum().item()
                weight[token, dim] = saved
                numeric = (up - down) / (2 * eps)
                assert grad[token, dim].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)

    @pytest.mark.slow
    def test_heldout_accuracy(self) -> None:
        readouts = load_readouts()
        for task, spec in TASKS.items():
            examples = generate(task, 96, TOKENIZER, seed=7, noun_split="test")
            hidden = mask_hidden_states(MODEL, examples)
            labels = torch.tensor([e.label for e in examples])
            pred = (readouts[spec.feature].logits(hidden) > 0).long()
            accuracy = (pred == labels).float().mean().item()
            assert accuracy >= ACCURACY_FLOORS[task], task
            # The QoI agrees: positive exactly when the probe prefers the correct word.
            batch = batch_inputs(examples)
            with torch.no_grad():
                qoi = readout_forward(MODEL, readouts[spec.feature])(
                    batch["input_ids"], batch["output_position"], batch["sign"]
                )
            assert round(abs((qoi > 0).float().mean().item() - accuracy), 5) == 0


class TestNewcomerErrors:
    """Mistakes a new user makes with the embedded model fail at once, saying what to
    use instead (issue 13, items 2 and 7)."""

    def test_unknown_readout_kind(self) -> None:
        with pytest.raises(ValueError, match=r"'numbr'.*\['gender', 'number'\]"):
            readout_forward(MODEL, "numbr")
        with pytest.raises(ValueError, match="unknown kind"):
            LinearReadout.load("numbr")

    def test_token_logit_qoi_needs_an_lm_head(self) -> None:
        from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

        from captum_influence_patterns import (
            masked_lm_logit_difference,
            next_token_logit_difference,
        )

        with pytest.raises(ValueError) as caught:
            masked_lm_logit_difference(MODEL)
        message = str(caught.value)
        for part in ("BertModel", "no language-model head", "AutoModelForMaskedLM",
                     "readout_forward(model, 'number')", "prepare_explanation"):
            assert part in message
        config = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=11, n_positions=8)
        with pytest.raises(ValueError, match="AutoModelForCausalLM"):
            next_token_logit_difference(GPT2Model(config))
        # With a head the QoI is built and reads the logits.
        lm = GPT2LMHeadModel(config).eval()
        ids = torch.tensor([[1, 2, 3]])
        with torch.no_grad():
            value = next_token_logit_difference(lm)(ids, 2, 4, 5)
            logits = lm(input_ids=ids).logits[0, 2]
        torch.testing.assert_close(value, (logits[4] - logits[5]).reshape(1))

    def test_top_level_helpers(self) -> None:
        import captum_influence_patterns as cip
        from captum_influence_patterns.models import embedded, explanation, loading

        assert cip.load_model is loading.load_model
        assert cip.prepare_explanation is explanation.prepare_explanation
        assert cip.explain is explanation.explain
        assert cip.readout_forward is embedded.readout_forward


class TestNoSentenceTransformersAtRunTime:
    """The weights load with transformers alone: the embedded model's package depends on
    sentence-transformers (and so scikit-learn), but loading never imports them."""

    def test_loading_imports_neither(self) -> None:
        import os
        import subprocess
        import sys
        from pathlib import Path

        code = (
            "import sys\n"
            "from captum_influence_patterns import load_model\n"
            "load_model()\n"
            "print(sorted(m for m in ('sentence_transformers', 'sklearn') "
            "if m in sys.modules))\n"
        )
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        env["PYTHONPATH"] = os.pathsep.join(
            [root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "[]"
