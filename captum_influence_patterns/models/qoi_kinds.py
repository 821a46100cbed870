"""The QoI kinds of the command line and :func:`~.explanation.prepare_explanation`:
one entry per model head, in one table.

Each :class:`QoIKind` says which heads it serves (``config.architectures`` suffixes),
the Auto class that loads them, whether it compares words or classes, whether the text
needs a mask token, and how it turns a tokenized text into an :class:`Explanation`. A
new kind is one :func:`register_qoi_kind` call (see docs/own_model.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..attribution import InfluencePatterns
from ..graph import MODEL_FAMILIES
from ..qoi import (
    classifier_logit_difference,
    masked_lm_logit_difference,
    next_token_logit_difference,
)
from ..utils.registry import Registry
from ..request import AttributionRequest
from .embedded import READOUT_PAIRS, LinearReadout, readout_forward

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
        baselines (int, Tensor or None): Baseline token id at every position, or a
            (1, T) tensor of ids (the ``"neutral"`` decoder baseline, which keeps the
            BOS); None for token id 0 (Captum's None).
        baseline (str): The baseline's name (``"mask"``, ``"pad"``, ``"zero"`` or
            ``"neutral"``).
        qoi (str): The quantity of interest in words.
        target (str): The target word or class, as described in reports.
        contrast (str): The contrast word or class.
        sources (list of int, optional): The positions to explain; None for the
            attribution's default. The ``"neutral"`` baseline leaves out the BOS it
            keeps (its ``g`` is exactly zero).
    """

    text: str
    input_ids: Tensor
    tokens: List[str]
    forward_func: Callable[..., Tensor]
    additional_forward_args: Tuple[Any, ...]
    output_position: int
    baselines: Union[None, int, Tensor]
    baseline: str
    qoi: str
    target: str
    contrast: str
    extra: Dict[str, Any] = field(default_factory=dict)
    sources: Optional[List[int]] = None
    baseline_note: str = ""

    def qoi_value(self) -> float:
        """The QoI at the input itself (one plain forward pass, no gradients)."""
        with torch.no_grad():
            value = self.forward_func(self.input_ids, *self.additional_forward_args)
        return float(value.reshape(-1)[0])

    def request(
        self, attribution: InfluencePatterns, **settings: Any
    ) -> AttributionRequest:
        """The validated :class:`~..request.AttributionRequest` of this explanation
        for ``attribution`` (built on :attr:`forward_func`), with the integration
        ``settings`` (``n_steps``, ``method``, ``internal_batch_size``): one request
        that :func:`~.explanation.explain`, the reference routes, the optimality test
        and the ablation of an evaluated example share."""
        return attribution.request(
            self.input_ids,
            self.baselines,
            None,
            self.additional_forward_args,
            output_position=self.output_position,
            **settings,
        )

    def describe(self) -> Dict[str, Any]:
        """JSON-safe description: text, QoI, target, contrast, baseline, positions."""
        return {
            "text": self.text,
            "qoi": self.qoi,
            "target": self.target,
            "contrast": self.contrast,
            "baseline": self.baseline,
            "baseline_id": (
                self.baselines.tolist()
                if isinstance(self.baselines, Tensor)
                else self.baselines
            ),
            "output_position": self.output_position,
            **({"baseline_note": self.baseline_note} if self.baseline_note else {}),
            **self.extra,
        }

# ---------------------------------------------------------------------- the table
#: ``build(loaded, common, target, contrast)``: the explanation of a tokenized text
#: (``common``: ``text``, ``input_ids``, ``tokens``, ``baselines``, ``baseline``), for
#: the target and contrast words or classes.
BuildExplanation = Callable[[Any, Dict[str, Any], Any, Any], "Explanation"]


@dataclass(frozen=True)
class QoIKind:
    """One entry of :data:`QOI_KINDS` (``LoadedModel.kind``).

    Attributes:
        name (str): The kind, e.g. ``"masked_lm"``.
        qoi (str): The quantity of interest in words (help and error messages).
        build (BuildExplanation): Builds the explanation of one text.
        heads (tuple of str): The ``config.architectures`` suffixes it serves (none
            for the embedded model, chosen by name).
        auto_class (str or None): The ``transformers`` Auto class that loads them.
        compares (str): ``"words"`` (``target``/``contrast``) or ``"classes"``
            (``target_class``/``contrast_class``).
        needs_mask (bool): The text holds a mask token at the output position.
        default_baseline (str): The baseline when none is named: ``"mask"`` (the
            paper's), or ``"neutral"`` for decoders, which have no mask token
            (docs/decoders.md).
    """

    name: str
    qoi: str
    build: BuildExplanation
    heads: Tuple[str, ...] = ()
    auto_class: Optional[str] = None
    compares: Literal["words", "classes"] = "words"
    needs_mask: bool = False
    default_baseline: str = "mask"


#: The QoI kinds, by ``LoadedModel.kind``, in the order heads are matched.
QOI_KINDS: Registry[QoIKind] = Registry(QoIKind, argument="kind", what="a QoI kind")


def register_qoi_kind(kind: QoIKind, *, overwrite: bool = False) -> QoIKind:
    """Add ``kind`` to :data:`QOI_KINDS`: a new name goes after the kinds there (a
    head that an earlier kind serves keeps it), a replaced one keeps its place.

    Args:
        kind (QoIKind): The new kind; ``kind.name`` is its key (``LoadedModel.kind``).
        overwrite (bool, optional): Replace a kind of the same name,
            which raises a ValueError otherwise. Default: False

    Returns:
        QoIKind: ``kind``; the command line and
        :func:`~.explanation.prepare_explanation` now explain models with its heads.
    """
    return QOI_KINDS.add(kind, overwrite=overwrite)


def head_kind(architectures: Sequence[str]) -> Optional[QoIKind]:
    """The first kind (in table order) serving one of ``architectures``, or None."""
    for kind in QOI_KINDS.values():
        if any(arch.endswith(kind.heads) for arch in architectures if kind.heads):
            return kind
    return None


def supported_heads() -> str:
    """The heads of the table and their QoIs, in words (for error messages)."""
    return "; ".join(
        f"{' / '.join('...' + head for head in kind.heads)} (QoI: {kind.qoi})"
        for kind in QOI_KINDS.values()
        if kind.heads
    )


# ------------------------------------------------------------------- the builders
def _reject(condition: bool, message: str) -> None:
    if condition:
        raise ExplanationError(message)


def _one_row(common: Dict[str, Any], *values: int) -> Tuple[Tensor, ...]:
    """The QoI's arguments of one example: a (1,) tensor per value, on the inputs'
    device."""
    return tuple(
        torch.tensor([value], device=common["input_ids"].device) for value in values
    )


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


def continuation_id(tokenizer: Any, text: str, word: str, role: str) -> int:
    """The id of the one token ``word`` is when it follows ``text`` after a space,
    as the tokenizer cuts ``text + " " + word``: on a byte-level BPE that is the
    spaced token (" are", not "are"), the token a language model predicts there.

    Raises:
        ExplanationError: ``word`` is several tokens there, or it merges with the
            text's last token (the reason is in the message).
    """
    word = word.strip()
    _reject(not word, f"the {role} word is empty")
    prefix = tokenizer(text, add_special_tokens=False)["input_ids"]
    whole = tokenizer(text + " " + word, add_special_tokens=False)["input_ids"]
    _reject(
        whole[: len(prefix)] != prefix,
        f"{role} word {word!r} merges with the text's last token when it follows "
        f"it; end the text where the {role} word's token starts",
    )
    pieces = whole[len(prefix):]
    if len(pieces) != 1:
        raise ExplanationError(
            f"{role} word {word!r} is {len(pieces)} tokens after this text "
            f"{tokenizer.convert_ids_to_tokens(pieces)}; the next-token QoI compares "
            "the logits of one token each, so choose a word that is one token"
        )
    return int(pieces[0])


def _token_contrast_explanation(
    loaded: Any,
    target: str,
    contrast: str,
    position: int,
    common: Dict[str, Any],
    qoi_factory: Any,
    where: str,
    token_id: Callable[[str, str], int],
) -> Explanation:
    """Logit difference of two single word pieces at ``position`` (masked/causal LM);
    ``token_id(word, role)`` resolves a word to its id."""
    tokenizer = loaded.tokenizer
    target_id = token_id(target, "target")
    contrast_id = token_id(contrast, "contrast")
    spelled = tokenizer.convert_ids_to_tokens([target_id, contrast_id])
    _reject(
        target_id == contrast_id,
        f"target and contrast are the same word piece ({target!r}); the QoI "
        "would be zero",
    )
    return Explanation(
        forward_func=qoi_factory(loaded.model),
        additional_forward_args=_one_row(common, position, target_id, contrast_id),
        output_position=position,
        qoi=(
            f"logit({target!r}) - logit({contrast!r}) at {where} (position {position});"
            f" tokens {spelled[0]!r} (id {target_id}) and {spelled[1]!r} (id "
            f"{contrast_id})"
        ),
        target=target,
        contrast=contrast,
        extra={
            "target_id": target_id,
            "contrast_id": contrast_id,
            "target_token": spelled[0],
            "contrast_token": spelled[1],
        },
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
    loaded: Any,
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
            *_one_row(common, position),
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


def _classifier_position(loaded: Any, tokens: List[str]) -> int:
    """[CLS] (0) for encoders; the last token for causal models, which pool it."""
    adapter = MODEL_FAMILIES.get(getattr(loaded.model.config, "model_type", None))
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
    loaded: Any,
    common: Dict[str, Any],
    target_class: ClassLike,
    contrast_class: ClassLike,
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
        additional_forward_args=_one_row(common, target, contrast),
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


def _masked_lm_explanation(
    loaded: Any, common: Dict[str, Any], target: str, contrast: str
) -> Explanation:
    tokenizer = loaded.tokenizer
    position = _mask_position(tokenizer, common["input_ids"])
    return _token_contrast_explanation(
        loaded,
        target,
        contrast,
        position,
        common,
        masked_lm_logit_difference,
        tokenizer.mask_token,
        lambda word, role: _word_id(tokenizer, word, role),
    )


def _causal_lm_explanation(
    loaded: Any, common: Dict[str, Any], target: str, contrast: str
) -> Explanation:
    return _token_contrast_explanation(
        loaded,
        target,
        contrast,
        common["input_ids"].shape[1] - 1,
        common,
        next_token_logit_difference,
        "the next token after the last position",
        lambda word, role: continuation_id(
            loaded.tokenizer, common["text"], word, role
        ),
    )


def _embedded_readout_explanation(
    loaded: Any, common: Dict[str, Any], target: str, contrast: str
) -> Explanation:
    position = _mask_position(loaded.tokenizer, common["input_ids"])
    return _readout_explanation(loaded, target, contrast, position, common)


register_qoi_kind(
    QoIKind(
        "masked_lm",
        "logit(target) - logit(contrast) at the mask token",
        _masked_lm_explanation,
        heads=("ForMaskedLM",),
        auto_class="AutoModelForMaskedLM",
        needs_mask=True,
    )
)
register_qoi_kind(
    QoIKind(
        "causal_lm",
        "next-token logit(target) - logit(contrast) at the last position",
        _causal_lm_explanation,
        heads=("ForCausalLM", "LMHeadModel"),  # GPT2LMHeadModel
        auto_class="AutoModelForCausalLM",
        default_baseline="neutral",
    )
)
register_qoi_kind(
    QoIKind(
        "classifier",
        "logit(class) - logit(other class) at [CLS]",
        _classifier_explanation,
        heads=("ForSequenceClassification",),
        auto_class="AutoModelForSequenceClassification",
        compares="classes",
    )
)
register_qoi_kind(
    QoIKind(
        "embedded_readout",
        "the linear readout's logit(target) - logit(contrast) at the mask token",
        _embedded_readout_explanation,
        needs_mask=True,
    )
)
