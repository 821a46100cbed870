"""Tiny checkpoints on disk (a word-level tokenizer with a masked LM, a classifier and
a GPT-2), and broken copies of them, for the model-loading and command-line checks."""

from __future__ import annotations

import os
import shutil
from typing import Dict, Tuple

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
)

#: The word-level vocabulary of the tiny tokenizer.
WORDS = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] the a cat cats dog dogs that sees see is are old "
    ". farm ##ers movie was good bad $"
).split()
#: A sentence the tiny masked LM reads, with its [MASK].
MLM_TEXT = "the cat that the dogs see [MASK] old ."
#: The checkpoints' shape, in BERT's config names.
CHECKPOINT_SHAPE = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    max_position_embeddings=32, vocab_size=len(WORDS),
)


def tiny_tokenizer(directory: str) -> BertTokenizer:
    """A BERT tokenizer over :data:`WORDS`, built from a vocab.txt in ``directory``.

    ``from_pretrained`` reads vocab.txt in transformers 4 and 5 alike (the constructor's
    argument was renamed from ``vocab_file`` to ``vocab``).
    """
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(WORDS) + "\n")
    tokenizer = BertTokenizer.from_pretrained(directory, local_files_only=True)
    assert len(tokenizer) == len(WORDS)
    return tokenizer


def save_tiny_checkpoints(root: str) -> Dict[str, str]:
    """Save a tiny masked LM, a 2-class classifier and a GPT-2 causal LM (with the same
    word-level tokenizer); return their directories."""
    tokenizer = tiny_tokenizer(root)
    torch.manual_seed(0)
    models = {
        "mlm": BertForMaskedLM(BertConfig(**CHECKPOINT_SHAPE)),
        "classifier": BertForSequenceClassification(
            BertConfig(
                num_labels=2, id2label={0: "negative", 1: "positive"},
                label2id={"negative": 0, "positive": 1}, **CHECKPOINT_SHAPE,
            )
        ),
        "causal": GPT2LMHeadModel(GPT2Config(
            n_embd=32, n_layer=2, n_head=4, n_positions=32, vocab_size=len(WORDS),
            bos_token_id=2, eos_token_id=3,
        )),
    }
    paths = {}
    for name, model in models.items():
        paths[name] = os.path.join(root, name)
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def broken_checkpoints(root: str, paths: Dict[str, str]) -> Dict[str, Tuple[str, str]]:
    """Unreadable copies of the tiny masked LM: name -> (directory, words the
    one-line error must hold)."""
    broken: Dict[str, Tuple[str, str]] = {}

    def copy(name: str) -> str:  # afresh, so that calls on one root do not stack
        path = os.path.join(root, "broken", name)
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(paths["mlm"], path)
        return path

    path = copy("corrupt-config")
    with open(os.path.join(path, "config.json"), "w") as handle:
        handle.write('{"model_type": "bert", ')
    broken["corrupt config"] = (path, "could not read the config")
    path = copy("truncated-weights")
    weights = os.path.join(path, "model.safetensors")
    with open(weights, "rb") as handle:
        data = handle.read()
    with open(weights, "wb") as handle:
        handle.write(data[: len(data) // 2])
    broken["truncated safetensors"] = (path, "could not load the weights")
    path = copy("pickle")
    os.remove(os.path.join(path, "model.safetensors"))
    state = dict(BertForMaskedLM(BertConfig(**CHECKPOINT_SHAPE)).state_dict())
    state["payload"] = _Payload()  # a pickle that runs code: weights_only refuses it
    torch.save(state, os.path.join(path, "pytorch_model.bin"))
    broken["pickle refused by weights_only"] = (path, "weights_only=True")
    path = os.path.join(root, "broken", "small-vocabulary")
    if not os.path.exists(path):
        BertForMaskedLM(BertConfig(**{**CHECKPOINT_SHAPE, "vocab_size": 20})).save_pretrained(
            path
        )
        tiny_tokenizer(path).save_pretrained(path)
    broken["tokenizer larger than the model"] = (path, "embedding table has 20 rows")
    path = copy("wrong-head")
    config = BertConfig.from_pretrained(path)
    config.architectures = ["BertForSequenceClassification"]
    config.save_pretrained(path)
    broken["weights missing for the head"] = (path, "missing")
    return broken


class _Payload:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


