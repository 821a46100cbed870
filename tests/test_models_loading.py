"""Offline model loading and explanation set-up on tiny checkpoints saved here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import List
from unittest import mock

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    T5Config,
)

from captum_influence_patterns.paper.agreement_tasks import (
    TASKS,
    generate,
    readout_sign,
)
from captum_influence_patterns.models.embedded import load_embedded_tokenizer
from captum_influence_patterns.graph import UnsupportedModelError
from captum_influence_patterns.models.explanation import (
    explain,
    max_length,
    prepare_explanation,
)
from captum_influence_patterns.models.loading import (
    LoadedModel,
    ModelLoadingError,
    load_model,
)
from captum_influence_patterns.models.qoi_kinds import ExplanationError, readout_pair
from captum_influence_patterns.testing import (
    CHECKPOINT_SHAPE as SHAPE,
    MLM_TEXT,
    WORDS,
    broken_checkpoints,
    masked_lm,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def save_config_only(directory: str, config) -> str:
    """A checkpoint directory holding only config.json (no weights)."""
    config.save_pretrained(directory)
    return directory


@pytest.mark.usefixtures("class_checkpoints")
class TestLoadModel:
    def test_masked_lm_directory(self) -> None:
        loaded = load_model(self.paths["mlm"])
        assert loaded.kind == "masked_lm"
        assert not loaded.model.training
        assert isinstance(loaded.model, BertForMaskedLM)
        assert loaded.tokenizer.mask_token == "[MASK]"
        assert loaded.name == self.paths["mlm"]

    def test_classifier_directory_and_dtype(self) -> None:
        loaded = load_model(self.paths["classifier"], dtype="float64")
        assert loaded.kind == "classifier"
        assert not loaded.model.training
        assert next(loaded.model.parameters()).dtype == torch.float64

    def test_bad_dtype(self) -> None:
        with pytest.raises(ValueError):
            load_model(self.paths["mlm"], dtype="int64")

    def test_unsupported_architecture_is_refused_before_weights(self) -> None:
        # Only a config: reading weights would raise ModelLoadingError instead.
        path = save_config_only(
            os.path.join(self.root, "t5"),
            T5Config(
                num_layers=1, d_model=8, num_heads=2, d_kv=4, d_ff=8, vocab_size=20,
                architectures=["T5ForConditionalGeneration"],
            ),
        )
        with pytest.raises(UnsupportedModelError, match="unsupported architecture 't5'.*bert"):
            load_model(path)

    def test_unsupported_heads(self, subtests) -> None:
        for arch in ("BertModel", "BertForTokenClassification", None):
            path = os.path.join(self.root, f"head-{arch}")
            config = BertConfig(
                **SHAPE, architectures=[arch] if arch else None
            )
            save_config_only(path, config)
            with subtests.test(arch=arch):
                with pytest.raises(UnsupportedModelError, match="ForMaskedLM"):
                    load_model(path)

    def test_directory_without_config(self) -> None:
        path = os.path.join(self.root, "empty")
        os.makedirs(path, exist_ok=True)
        with pytest.raises(ModelLoadingError, match="no config.json"):
            load_model(path)

    def test_missing_tokenizer(self) -> None:
        path = os.path.join(self.root, "no-tokenizer")
        shutil.copytree(self.paths["mlm"], path)
        for name in os.listdir(path):
            if "token" in name or name == "vocab.txt":
                os.remove(os.path.join(path, name))
        with pytest.raises(ModelLoadingError, match="tokenizer"):
            load_model(path)

    def test_missing_local_path(self) -> None:
        with pytest.raises(ModelLoadingError, match="does not exist"):
            load_model(os.path.join(self.root, "not", "there"))

    def test_unknown_hub_name_fails_fast_without_network(self) -> None:
        def no_network(*args, **kwargs):
            raise AssertionError("load_model tried to open a network connection")

        with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}), mock.patch(
            "socket.socket.connect", no_network
        ), mock.patch("socket.create_connection", no_network):
            start = time.perf_counter()
            with pytest.raises(ModelLoadingError) as caught:
                load_model("no-such-org/no-such-model-xyz")
            elapsed = time.perf_counter() - start
        message = str(caught.value)
        assert "huggingface-cli download no-such-org/no-such-model-xyz" in message
        assert "save_pretrained" in message
        assert "HF_HOME" in message
        assert "\n" not in message
        assert elapsed < 10.0

    def test_unreadable_directories(self, subtests) -> None:
        for name, (path, expected) in broken_checkpoints(self.root, self.paths).items():
            with subtests.test(name):
                with pytest.raises(ModelLoadingError) as caught:
                    load_model(path)
                message = str(caught.value)
                assert expected in message
                assert "\n" not in message
                assert "\x1b" not in message

    def test_cached_hub_name_loads_offline(self) -> None:
        # A hub-style cache (HF_HOME/hub/models--org--name/snapshots/REV) in a fresh
        # interpreter, since huggingface_hub reads HF_HOME at import.
        home = os.path.join(self.root, "hf-home")
        repo = os.path.join(home, "hub", "models--tiny-org--tiny-bert")
        revision = "0" * 40
        shutil.copytree(self.paths["mlm"], os.path.join(repo, "snapshots", revision))
        os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
        with open(os.path.join(repo, "refs", "main"), "w") as handle:
            handle.write(revision)
        env = dict(os.environ, HF_HOME=home, HF_HUB_OFFLINE="1", PYTHONPATH=REPO)
        env.pop("HF_HUB_CACHE", None)
        code = (
            "from captum_influence_patterns.models.loading import load_model\n"
            "loaded = load_model('tiny-org/tiny-bert')\n"
            "print(loaded.kind, loaded.model.training)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split() == ["masked_lm", "False"]


@pytest.fixture(scope="class")
def loaded_checkpoints(request, class_checkpoints) -> None:
    request.cls.mlm = load_model(request.cls.paths["mlm"])
    request.cls.classifier = load_model(request.cls.paths["classifier"])


@pytest.mark.usefixtures("loaded_checkpoints")
class TestPrepareExplanation:
    def test_masked_lm(self) -> None:
        tokenizer = self.mlm.tokenizer
        ex = prepare_explanation(self.mlm, MLM_TEXT, target="is", contrast="are")
        assert tuple(ex.input_ids.shape) == (1, 11)
        assert ex.output_position == 7
        assert ex.tokens[7] == "[MASK]"
        assert ex.baselines == tokenizer.mask_token_id
        position, target, contrast = ex.additional_forward_args
        assert int(target) == tokenizer.convert_tokens_to_ids("is")
        assert int(contrast) == tokenizer.convert_tokens_to_ids("are")
        with torch.no_grad():
            logits = self.mlm.model(input_ids=ex.input_ids).logits[0, 7]
        assert round(abs(ex.qoi_value() - float(logits[int(target)] - logits[int(contrast)])), 5) == 0
        assert "logit('is') - logit('are')" in ex.qoi

    def test_baselines(self) -> None:
        tokenizer = self.mlm.tokenizer
        for name, expected in (
            ("mask", tokenizer.mask_token_id), ("pad", tokenizer.pad_token_id),
            ("zero", None),
        ):
            ex = prepare_explanation(
                self.mlm, MLM_TEXT, target="is", contrast="are", baseline=name
            )
            assert ex.baselines == expected
            assert ex.describe()["baseline"] == name
        with pytest.raises(ExplanationError, match="baseline"):
            prepare_explanation(
                self.mlm, MLM_TEXT, target="is", contrast="are", baseline="unk"
            )

    def test_masked_lm_errors(self, subtests) -> None:
        cases = {
            "no mask token": dict(text="the cat is old .", target="is", contrast="are"),
            "2 mask tokens": dict(
                text="the [MASK] is [MASK] .", target="is", contrast="are"
            ),
            "2 word pieces": dict(text=MLM_TEXT, target="farmers", contrast="is"),
            "not in the vocabulary": dict(text=MLM_TEXT, target="zebra", contrast="is"),
            "same word piece": dict(text=MLM_TEXT, target="is", contrast="is"),
            "target and a contrast word are required": dict(
                text=MLM_TEXT, target="is"
            ),
            "classes apply to sequence classifiers": dict(
                text=MLM_TEXT, target="is", contrast="are", target_class=1
            ),
            "empty": dict(text="   ", target="is", contrast="are"),
            "at most 32": dict(
                text=" ".join(["the"] * 40) + " [MASK]", target="is", contrast="are"
            ),
        }
        for expected, kwargs in cases.items():
            with subtests.test(expected):
                with pytest.raises(ExplanationError, match=expected):
                    prepare_explanation(self.mlm, **kwargs)

    def test_length_limit_is_the_smaller_of_model_and_tokenizer(self, subtests) -> None:
        # max_position_embeddings is 32; the tokenizer's limit applies when smaller
        for tokenizer_limit, expected in ((64, 32), (16, 16), (int(1e30), 32)):
            with subtests.test(model_max_length=tokenizer_limit):
                with mock.patch.object(
                    self.mlm.tokenizer, "model_max_length", tokenizer_limit
                ):
                    assert max_length(self.mlm) == expected
                    fits = " ".join(["the"] * (expected - 3)) + " [MASK]"
                    prepare_explanation(self.mlm, fits, target="is", contrast="are")
                    with pytest.raises(ExplanationError, match=f"{expected + 1} tokens long.*at most "
                        f"{expected}"):
                        prepare_explanation(
                            self.mlm, "the " + fits, target="is", contrast="are"
                        )

    def test_roberta_limit_leaves_out_the_padding_offset(self) -> None:
        # RoBERTa numbers positions from pad_token_id + 1 = 2: 32 rows hold 30 tokens
        model = masked_lm("roberta", vocab_size=len(WORDS), max_position_embeddings=32)
        loaded = LoadedModel(model, self.mlm.tokenizer, "masked_lm", "roberta")
        assert max_length(loaded) == 30
        with torch.no_grad():
            model(input_ids=torch.full((1, 30), 5))
            with pytest.raises((IndexError, RuntimeError)):  # what the limit stops
                model(input_ids=torch.full((1, 31), 5))
        fits = " ".join(["the"] * 27) + " [MASK]"
        prepare_explanation(loaded, fits, target="is", contrast="are")
        with pytest.raises(ExplanationError, match="31 tokens long.*at most 30"):
            prepare_explanation(loaded, "the " + fits, target="is", contrast="are")

    def test_classifier(self) -> None:
        text = "the movie was good ."
        ex = prepare_explanation(self.classifier, text, target_class=1)
        assert ex.output_position == 0
        assert [int(a) for a in ex.additional_forward_args] == [1, 0]
        assert "'positive'" in ex.qoi
        by_label = prepare_explanation(
            self.classifier, text, target_class="negative",
            contrast_class="1",
        )
        assert [int(a) for a in by_label.additional_forward_args] == [0, 1]
        with torch.no_grad():
            logits = self.classifier.model(input_ids=ex.input_ids).logits[0]
        assert round(abs(ex.qoi_value() - float(logits[1] - logits[0])), 5) == 0

    def test_classifier_errors(self, subtests) -> None:
        text = "the movie was bad ."
        cases = {
            "out of range: this model has 2 classes": dict(target_class=5),
            "neither an index nor a label": dict(target_class="great"),
            "same class": dict(target_class=1, contrast_class=1),
            "target class is required": dict(),
            "a classifier needs classes": dict(target="is", contrast="are"),
        }
        for expected, kwargs in cases.items():
            with subtests.test(expected):
                with pytest.raises(ExplanationError, match=expected):
                    prepare_explanation(self.classifier, text, **kwargs)
        three = LoadedModel(
            BertForSequenceClassification(BertConfig(num_labels=3, **SHAPE)).eval(),
            self.classifier.tokenizer, "classifier", "three",
        )
        with pytest.raises(ExplanationError, match="contrast class is required"):
            prepare_explanation(three, text, target_class=2)
        assert prepare_explanation(three, text, target_class=2, contrast_class=0).qoi == \
            "logit(class 2 'LABEL_2') - logit(class 0 'LABEL_0') at position 0 " \
            "([CLS])"

    def test_explain_runs_the_attribution(self) -> None:
        ex = prepare_explanation(self.mlm, MLM_TEXT, target="is", contrast="are")
        result = explain(self.mlm, ex, n_steps=4)
        assert result.output_positions == [7]
        assert [p.source for p in result.patterns[0]] == \
                         [j for j in range(11) if j != 7]
        assert result.tokens[0][7] == "[MASK]"
        assert result.metadata["text"] == MLM_TEXT
        assert result.metadata["model_kind"] == "masked_lm"
        assert result.convergence_delta is not None


class TestEmbeddedReadoutPairs:
    def test_pairs(self) -> None:
        assert readout_pair("is", "are") == ("number", 1.0)
        assert readout_pair("Are", "is") == ("number", -1.0)
        assert readout_pair("himself", "themselves") == ("number", 1.0)
        assert readout_pair("themselves", "himself") == ("number", -1.0)
        assert readout_pair("himself", "herself") == ("gender", 1.0)
        assert readout_pair("herself", "himself") == ("gender", -1.0)
        with pytest.raises(ExplanationError, match="is/are"):
            readout_pair("was", "were")

    def test_consistent_with_readout_sign(self, subtests) -> None:
        tokenizer = load_embedded_tokenizer()
        examples: List = []
        for task in TASKS:
            examples += generate(task, 4, tokenizer, seed=3)
        for example in examples:
            with subtests.test(task=example.task, form=example.form):
                assert readout_pair(example.correct, example.wrong) == readout_sign(example)

