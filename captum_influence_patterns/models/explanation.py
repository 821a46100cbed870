"""Turn a text into an attribution problem, and run it.

:func:`prepare_explanation` builds what :meth:`InfluencePatterns.attribute` needs for
one text (token ids, the quantity-of-interest forward function and its arguments, the
output position and the baseline) for a model of :func:`~.loading.load_model`, and
:func:`explain` runs the attribution.

Example:
    >>> loaded = load_model()  # the embedded MiniLM  # doctest: +SKIP
    >>> explanation = prepare_explanation(
    ...     loaded, "the farmers that the assistant loves [MASK] old .",
    ...     target="are", contrast="is")  # doctest: +SKIP
    >>> result = explain(loaded, explanation, n_steps=50)  # doctest: +SKIP
    >>> print(result.table())  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .embedded import READOUT_PAIRS, LinearReadout, readout_forward
from .loading import LoadedModel
from ..attribution import InfluencePatterns
from ..model_graph import ADAPTERS
from ..qoi import (
    classifier_logit_difference,
    masked_lm_logit_difference,
    next_token_logit_difference,
)
from ..results import InfluencePatternsResult

#: Baseline names accepted by :func:`prepare_explanation`.
BASELINES = ("mask", "pad", "zero")

ClassLike = Union[None, int, str]


class ExplanationError(ValueError):
    """A text, target or baseline does not fit the model (the message says why)."""


@dataclass
class Explanation:
    """Everything :meth:`InfluencePatterns.attribute` needs to explain one text.

    Attributes:
        text (str): The text as given.
        input_ids (Tensor): (1, T) token ids, special tokens included.
        tokens (list of str): The tokenizer's tokens of ``input_ids``.
        forward_func (Callable): QoI forward function, one scalar per row.
        additional_forward_args (tuple): Its extra arguments, (1,) tensors.
        output_position (int): The position the QoI reads ([MASK], or 0 for [CLS]).
        baselines (int or None): Baseline token id at every position; None for the
            zero word embedding.
        baseline (str): The baseline's name (``"mask"``, ``"pad"`` or ``"zero"``).
        qoi (str): The quantity of interest in words.
        target (str): The target word or class, as described in reports.
        contrast (str): The contrast word or class.
    """

    text: str
    input_ids: Tensor
    tokens: List[str]
    forward_func: Callable[..., Tensor]
    additional_forward_args: Tuple[Any, ...]
    output_position: int
    baselines: Optional[int]
    baseline: str
    qoi: str
    target: str
    contrast: str
    extra: Dict[str, Any] = field(default_factory=dict)

    def qoi_value(self) -> float:
        """The QoI at the input itself (one plain forward pass, no gradients)."""
        with torch.no_grad():
            value = self.forward_func(self.input_ids, *self.additional_forward_args)
        return float(value.reshape(-1)[0])

    def describe(self) -> Dict[str, Any]:
        """JSON-safe description: text, QoI, target, contrast, baseline, positions."""
        return {
            "text": self.text,
            "qoi": self.qoi,
            "target": self.target,
            "contrast": self.contrast,
            "baseline": self.baseline,
            "baseline_id": self.baselines,
            "output_position": self.output_position,
            **self.extra,
        }


# ------------------------------------------------------------------- preparing
def prepare_explanation(
    loaded: LoadedModel,
    text: str,
    target: Optional[str] = None,
    contrast: Optional[str] = None,
    target_class: ClassLike = None,
    contrast_class: ClassLike = None,
    baseline: str = "mask",
) -> Explanation:
    """Tokenize ``text`` and build the QoI for :meth:`InfluencePatterns.attribute`.

    The QoI depends on ``loaded.kind``:

    - ``masked_lm``: ``logit(target) - logit(contrast)`` at the mask token
      (:func:`~captum_influence_patterns.qoi.masked_lm_logit_difference`); the text
      must hold exactly one mask token and each word must be one word piece.
    - ``causal_lm``: the next-token ``logit(target) - logit(contrast)`` at the last
      position (:func:`~captum_influence_patterns.qoi.next_token_logit_difference`);
      the text is the prefix whose next token is predicted (no mask token).
    - ``classifier``: ``logit(target_class) - logit(contrast_class)`` at [CLS]
      (position 0; :func:`~captum_influence_patterns.qoi.classifier_logit_difference`).
      Classes are indices or label names; with two labels the contrast defaults to
      the other class.
    - ``embedded_readout``: the linear probe's ``logit(target) - logit(contrast)`` on
      the final hidden state at the mask token, for a pair of words the readout
      knows (``is``/``are`` and ``himself``/``themselves``: number;
      ``himself``/``herself``: gender).

    Args:
        loaded: What :func:`load_model` returned.
        text: The text; special tokens are added by the tokenizer.
        target: Word of the QoI's positive side (masked LM, embedded readout).
        contrast: Word of the negative side.
        target_class: Class of the positive side (classifier).
        contrast_class: Class of the negative side (classifier).
        baseline: ``"mask"`` (the mask token id at every position, as in the paper,
            [CLS]/[SEP] included), ``"pad"`` (the pad token id at every position) or
            ``"zero"`` (a zero word embedding).

    Returns:
        Explanation: ready for :func:`explain`.

    Raises:
        ExplanationError: A mask token is missing, a word is several word pieces or
            unknown, a class is out of range, an argument is missing or does not fit
            the model's kind, or the baseline token does not exist.
    """
    tokenizer = loaded.tokenizer
    baseline_id = _baseline_id(tokenizer, baseline)
    input_ids = _tokenize(loaded, text)
    tokens = list(tokenizer.convert_ids_to_tokens(input_ids[0].tolist()))
    common = dict(
        text=text,
        input_ids=input_ids,
        tokens=tokens,
        baselines=baseline_id,
        baseline=baseline,
    )
    if loaded.kind == "classifier":
        _reject(
            target is not None or contrast is not None,
            "target/contrast words apply to masked-LM models; a classifier "
            "needs classes (target_class/contrast_class, CLI: --class/"
            "--contrast-class)",
        )
        return _classifier_explanation(loaded, target_class, contrast_class, common)
    _reject(
        target_class is not None or contrast_class is not None,
        "classes apply to sequence classifiers; this model needs target and "
        "contrast words (CLI: --target/--contrast)",
    )
    _reject(
        target is None or contrast is None,
        "a target and a contrast word are required (CLI: --target WORD "
        "--contrast WORD)",
    )
    if loaded.kind == "causal_lm":
        return _token_contrast_explanation(
            loaded,
            target,
            contrast,
            input_ids.shape[1] - 1,
            common,
            next_token_logit_difference,
            "the next token after the last position",
        )
    position = _mask_position(tokenizer, input_ids)
    if loaded.kind == "masked_lm":
        return _token_contrast_explanation(
            loaded,
            target,
            contrast,
            position,
            common,
            masked_lm_logit_difference,
            tokenizer.mask_token,
        )
    return _readout_explanation(loaded, target, contrast, position, common)


def _reject(condition: bool, message: str) -> None:
    if condition:
        raise ExplanationError(message)


def _baseline_id(tokenizer: Any, baseline: str) -> Optional[int]:
    if baseline == "zero":
        return None
    if baseline not in BASELINES:
        raise ExplanationError(
            f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}"
        )
    token_id = tokenizer.mask_token_id if baseline == "mask" else tokenizer.pad_token_id
    if token_id is None:
        raise ExplanationError(
            f"the tokenizer has no {baseline} token; use another baseline"
        )
    return int(token_id)


def _tokenize(loaded: LoadedModel, text: str) -> Tensor:
    if not isinstance(text, str) or not text.strip():
        raise ExplanationError("the text is empty")
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"].long()
    ids = ids.to(next(loaded.model.parameters()).device)  # the model's device
    limit = max_length(loaded)
    if ids.shape[1] > limit:
        raise ExplanationError(
            f"the text is {ids.shape[1]} tokens long; the model reads at most {limit}"
        )
    if ids.shape[1] < 2:
        raise ExplanationError("the text has no token besides the output position")
    return ids


def max_length(loaded: LoadedModel) -> int:
    """The most tokens a text may have: the smaller of the model's position table
    (``max_position_embeddings``, less RoBERTa's padding offset) and the tokenizer's
    ``model_max_length`` (ignored when unset, i.e. huge)."""
    config = loaded.model.config
    limit = int(getattr(config, "max_position_embeddings", None) or 512)
    if getattr(config, "model_type", None) == "roberta":
        # RoBERTa numbers positions from padding_idx + 1
        limit -= int(config.pad_token_id or 0) + 1
    tokenizer_limit = getattr(loaded.tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
        limit = min(limit, tokenizer_limit)
    return limit


def _mask_position(tokenizer: Any, input_ids: Tensor) -> int:
    mask = tokenizer.mask_token
    hits = (input_ids[0] == tokenizer.mask_token_id).nonzero().reshape(-1).tolist()
    if not hits:
        raise ExplanationError(
            f"the text has no mask token: put {mask} where the predicted word goes "
            f"(this model's mask token is {mask!r})"
        )
    if len(hits) > 1:
        raise ExplanationError(
            f"the text has {len(hits)} mask tokens; use exactly one {mask}"
        )
    return int(hits[0])


def _word_id(tokenizer: Any, word: str, role: str) -> int:
    """The id of ``word`` as one word piece (as it would follow a space)."""
    pieces = tokenizer.tokenize(" " + word.strip())
    if len(pieces) != 1 and word in tokenizer.get_vocab():
        pieces = [word]  # an exact vocabulary entry, e.g. "##s" or "Ġis"
    if len(pieces) != 1:
        raise ExplanationError(
            f"{role} word {word!r} is {len(pieces)} word pieces {pieces}; the "
            "masked-LM QoI compares single word pieces, so choose a word that is one "
            "piece"
        )
    token_id = int(tokenizer.convert_tokens_to_ids(pieces[0]))
    if token_id == tokenizer.unk_token_id:
        raise ExplanationError(f"{role} word {word!r} is not in the vocabulary")
    return token_id


def _token_contrast_explanation(
    loaded: LoadedModel,
    target: str,
    contrast: str,
    position: int,
    common: Dict[str, Any],
    qoi_factory: Any,
    where: str,
) -> Explanation:
    """Logit difference of two single word pieces at ``position`` (masked/causal LM)."""
    tokenizer = loaded.tokenizer
    target_id = _word_id(tokenizer, target, "target")
    contrast_id = _word_id(tokenizer, contrast, "contrast")
    _reject(
        target_id == contrast_id,
        f"target and contrast are the same word piece ({target!r}); the QoI "
        "would be zero",
    )
    return Explanation(
        forward_func=qoi_factory(loaded.model),
        additional_forward_args=(
            torch.tensor([position], device=common["input_ids"].device),
            torch.tensor([target_id], device=common["input_ids"].device),
            torch.tensor([contrast_id], device=common["input_ids"].device),
        ),
        output_position=position,
        qoi=(
            f"logit({target!r}) - logit({contrast!r}) at {where} (position {position})"
        ),
        target=target,
        contrast=contrast,
        extra={"target_id": target_id, "contrast_id": contrast_id},
        **common,
    )


def readout_pair(target: str, contrast: str) -> Tuple[str, float]:
    """Readout kind and sign of a (target, contrast) word pair of the embedded model.

    The pairs are :data:`~.embedded.READOUT_PAIRS`, the agreement tasks' words:
    ``is``/``are`` and ``himself``/``themselves`` (number), ``himself``/``herself``
    (gender). The sign follows
    readout_sign of the agreement tasks: +1 when the target
    is the readout's positive class (singular, male), -1 when it is the negative one.

    Args:
        target: The word the QoI favours.
        contrast: The word it is compared with.

    Returns:
        (kind, sign).

    Raises:
        ExplanationError: The pair is not one the readout knows.
    """
    pair = (target.strip().lower(), contrast.strip().lower())
    for words, kind in READOUT_PAIRS.items():
        if pair == words:
            return kind, 1.0
        if pair == words[::-1]:
            return kind, -1.0
    known = sorted(f"{a}/{b} ({kind})" for (a, b), kind in READOUT_PAIRS.items())
    raise ExplanationError(
        f"the embedded model's linear readout does not know the pair {target!r}/"
        f"{contrast!r}; use one of: {', '.join(known)} (either order)"
    )


def _readout_explanation(
    loaded: LoadedModel,
    target: str,
    contrast: str,
    position: int,
    common: Dict[str, Any],
) -> Explanation:
    kind, sign = readout_pair(target, contrast)
    readout = LinearReadout.load(kind)
    return Explanation(
        forward_func=readout_forward(loaded.model, readout),
        additional_forward_args=(
            torch.tensor([position], device=common["input_ids"].device),
            torch.tensor(
                [sign], dtype=torch.float64, device=common["input_ids"].device
            ),
        ),
        output_position=position,
        qoi=(
            f"{kind} readout: logit({target!r}) - logit({contrast!r}) of the linear "
            f"probe on the final hidden state at {loaded.tokenizer.mask_token} "
            f"(position {position})"
        ),
        target=target,
        contrast=contrast,
        extra={"readout": kind, "readout_sign": sign},
        **common,
    )


def _classifier_position(loaded: LoadedModel, tokens: List[str]) -> int:
    """[CLS] (0) for encoders; the last token for causal models, which pool it."""
    adapter = ADAPTERS.get(getattr(loaded.model.config, "model_type", None))
    return len(tokens) - 1 if getattr(adapter, "is_causal", False) else 0


def _class_index(config: Any, value: ClassLike, role: str) -> int:
    num_labels = int(config.num_labels)
    labels = {str(k).lower(): int(v) for k, v in (config.label2id or {}).items()}
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
    elif text.lower() in labels:
        index = labels[text.lower()]
    else:
        raise ExplanationError(
            f"{role} class {value!r} is neither an index nor a label of this model "
            f"({_class_names(config)})"
        )
    if not 0 <= index < num_labels:
        raise ExplanationError(
            f"{role} class {index} is out of range: this model has {num_labels} "
            f"classes ({_class_names(config)})"
        )
    return index


def _class_names(config: Any) -> str:
    id2label = config.id2label or {}
    return ", ".join(
        f"{k}: {id2label.get(k, id2label.get(str(k), k))}"
        for k in range(config.num_labels)
    )


def _class_label(config: Any, index: int) -> str:
    label = (config.id2label or {}).get(index)
    return f"class {index}" + (f" {label!r}" if label is not None else "")


def _classifier_explanation(
    loaded: LoadedModel,
    target_class: ClassLike,
    contrast_class: ClassLike,
    common: Dict[str, Any],
) -> Explanation:
    config = loaded.model.config
    position = _classifier_position(loaded, common["tokens"])
    _reject(
        target_class is None,
        "a target class is required (target_class, CLI: --class K)",
    )
    target = _class_index(config, target_class, "target")
    if contrast_class is None:
        _reject(
            config.num_labels != 2,
            f"a contrast class is required for a model with {config.num_labels} "
            "classes (contrast_class, CLI: --contrast-class K2)",
        )
        contrast = 1 - target
    else:
        contrast = _class_index(config, contrast_class, "contrast")
    _reject(
        target == contrast,
        f"target and contrast are the same class ({target}); the QoI would be zero",
    )
    return Explanation(
        forward_func=classifier_logit_difference(loaded.model),
        additional_forward_args=(
            torch.tensor([target], device=common["input_ids"].device),
            torch.tensor([contrast], device=common["input_ids"].device),
        ),
        output_position=position,
        qoi=(
            f"logit({_class_label(config, target)}) - "
            f"logit({_class_label(config, contrast)}) at position {position} "
            f"({common['tokens'][position]})"
        ),
        target=str(target),
        contrast=str(contrast),
        extra={"target_class": target, "contrast_class": contrast},
        **common,
    )


# ---------------------------------------------------------------------- running
def explain(
    loaded: LoadedModel,
    explanation: Explanation,
    n_steps: int = 50,
    show_progress: bool = False,
    **attribute_kwargs: Any,
) -> InfluencePatternsResult:
    """Run :meth:`InfluencePatterns.attribute` on a prepared explanation.

    Args:
        loaded: The model.
        explanation: What :func:`prepare_explanation` returned for it.
        n_steps: Interpolation points.
        show_progress: Show tqdm progress bars (on stderr).
        **attribute_kwargs: Further arguments of ``attribute`` (``method``,
            ``internal_batch_size``, ``schedule``, ``sources``).

    Returns:
        InfluencePatternsResult: with tokens set, the convergence delta, and the
        explanation's description plus the model name in ``metadata``.
    """
    attribution = InfluencePatterns(explanation.forward_func, loaded.model)
    attribute_kwargs.setdefault("return_convergence_delta", True)
    result = attribution.attribute(
        explanation.input_ids,
        baselines=explanation.baselines,
        additional_forward_args=explanation.additional_forward_args,
        output_position=explanation.output_position,
        n_steps=n_steps,
        show_progress=show_progress,
        **attribute_kwargs,
    )
    result.set_tokens(loaded.tokenizer)
    result.metadata.update(
        {"model": loaded.name, "model_kind": loaded.kind, **explanation.describe()}
    )
    return result
