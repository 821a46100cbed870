"""The six agreement tasks as language-model prefixes, and a model's own accuracy.

A decoder predicts the next token, so each generated sentence
(:mod:`.agreement_tasks`) is cut right before the verb or reflexive: "the author that
the guard likes [MASK] young ." becomes the prefix "The author that the guard likes",
and the QoI compares the tokens the model would predict next (" is" against " are",
:func:`~..models.qoi_kinds.continuation_id`).

A prefix is kept when every word is one token of the model's tokenizer (so roles keep
their positions: the BOS, which the decoders' neutral baseline adds, is position 0 as
[CLS] is in the masked sentences) and both continuations are one token each; the
others are dropped and counted. Items the model gets wrong stay in: the evaluation
records mark them (``prediction_correct``), and :func:`model_accuracy` reports the
model's own accuracy per task and form, with the share of items whose pair is the
model's top two next tokens.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import torch

from ..models.loading import LoadedModel
from ..models.qoi_kinds import ExplanationError, continuation_id
from .agreement_tasks import TASKS, generate
from .datasets import EvalItem, EvaluationError, stable_id

#: The role of the predicted word in the masked sentences (dropped from prefixes).
_MASK_ROLE = "mask"


@dataclass
class PrefixStats:
    """How many prefixes of each task were generated and why others were dropped.

    Attributes:
        kept (dict): Task -> prefixes kept.
        split_words (dict): Task -> prefixes dropped for a word of several tokens.
        split_pair (dict): Task -> prefixes dropped for a continuation of several
            tokens (or one merging with the prefix).
    """

    kept: Dict[str, int] = field(default_factory=dict)
    split_words: Dict[str, int] = field(default_factory=dict)
    split_pair: Dict[str, int] = field(default_factory=dict)


def to_prefix(text: str, mask_token: str = "[MASK]") -> str:
    """The words before ``mask_token``, the first capitalised."""
    words = text.split()
    if mask_token not in words:
        raise ValueError(f"text {text!r} has no {mask_token}")
    prefix = " ".join(words[: words.index(mask_token)])
    return prefix[:1].upper() + prefix[1:]


def lm_prefix_items(
    tasks: Sequence[str], n: int, tokenizer: Any, seed: int = 0
) -> Tuple[List[EvalItem], PrefixStats]:
    """``n`` prefixes per task for a causal LM's tokenizer.

    Sentences are generated with the embedded tokenizer (every word one BERT piece)
    and drawn until ``n`` prefixes fit ``tokenizer``; the first ``n`` that fit are
    kept, so the forms stay interleaved.

    Returns:
        (items, stats): items task after task, ``roles`` counting the BOS as 0 and
        only the words before the cut; ``target``/``contrast`` the correct and wrong
        words.

    Raises:
        EvaluationError: an unknown task, ``n < 1``, or fewer than ``n`` prefixes fit.
    """
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise EvaluationError(f"tasks: unknown {unknown or 'none given'}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise EvaluationError(f"n: expected an int >= 1 per task, got {n!r}")
    stats = PrefixStats()
    items: List[EvalItem] = []
    for task in tasks:
        kept = 0
        stats.split_words[task] = stats.split_pair[task] = 0
        for example in generate(task, 4 * n, seed=seed):
            if kept == n:
                break
            text = to_prefix(example.text)
            words = text.split()
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) != len(words):
                stats.split_words[task] += 1
                continue
            try:
                for word in (example.correct, example.wrong):
                    continuation_id(tokenizer, text, word, "continuation")
            except ExplanationError:
                stats.split_pair[task] += 1
                continue
            roles = {
                role: position
                for role, position in example.roles.items()
                if role != _MASK_ROLE and position <= len(words)
            }
            items.append(
                EvalItem(
                    id=stable_id(task, kept, text),
                    index=len(items),
                    task=task,
                    text=text,
                    target=example.correct,
                    contrast=example.wrong,
                    form=example.form,
                    roles=roles,
                )
            )
            kept += 1
        stats.kept[task] = kept
        if kept < n:
            raise EvaluationError(
                f"task {task}: only {kept} of {n} prefixes are one token per word "
                f"with one-token continuations for this tokenizer"
            )
    return items, stats


def next_token_logits(loaded: LoadedModel, text: str) -> torch.Tensor:
    """The model's next-token logits after ``text`` read with the BOS first (as the
    neutral baseline explains it)."""
    tokenizer = loaded.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    device = next(loaded.model.parameters()).device
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids], device=device)).logits
    return logits[0, -1].float().cpu()


def item_prediction(loaded: LoadedModel, item: EvalItem) -> Dict[str, Any]:
    """The model's own prediction on one prefix: ``qoi`` (logit(correct) -
    logit(wrong)), ``prediction_correct`` (qoi > 0), ``top2`` (the pair is the two
    most likely next tokens) and ``top_token``."""
    tokenizer = loaded.tokenizer
    correct = continuation_id(tokenizer, item.text, item.target, "target")
    wrong = continuation_id(tokenizer, item.text, item.contrast, "contrast")
    logits = next_token_logits(loaded, item.text)
    qoi = float(logits[correct] - logits[wrong])
    top = logits.topk(2).indices.tolist()
    return {
        "qoi": qoi,
        "prediction_correct": qoi > 0,
        "top2": set(top) == {correct, wrong},
        "top_token": tokenizer.convert_ids_to_tokens(top[0]),
    }


def model_accuracy(records: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Accuracy and top-2 share per task and per (task, form), from records with
    ``task``, ``form``, ``prediction_correct`` and ``top2`` (``item_prediction`` or
    the evaluation's records).

    Returns:
        ``{task: {"n", "accuracy", "top2_share", "wrong_ids", "forms": {form: {"n",
        "accuracy", "top2_share"}}}}``.
    """
    groups: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record["task"]].append(record)
    out: Dict[str, Dict[str, Any]] = {}
    for task, rows in groups.items():
        forms: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
        for row in rows:
            forms[str(row.get("form"))].append(row)
        out[task] = {
            **_shares(rows),
            "wrong_ids": [
                row.get("id") for row in rows if not row["prediction_correct"]
            ],
            "forms": {form: _shares(forms[form]) for form in sorted(forms)},
        }
    return out


def _shares(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    n = len(rows)
    return {
        "n": n,
        "accuracy": sum(bool(r["prediction_correct"]) for r in rows) / n,
        "top2_share": sum(bool(r.get("top2")) for r in rows) / n,
    }
