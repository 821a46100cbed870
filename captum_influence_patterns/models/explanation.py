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
    >>> result = explain(loaded, explanation)  # doctest: +SKIP
    >>> print(result.table())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor

from ..attribution import InfluencePatterns
from ..convergence import DEFAULT_MAX_STEPS, DEFAULT_TOLERANCE, attribute_converged
from ..request import AttributionRequest
from ..results import InfluencePatternsResult
from .loading import LoadedModel
from .qoi_kinds import QOI_KINDS, ClassLike, Explanation, ExplanationError

#: Baseline names accepted by :func:`prepare_explanation`.
BASELINES = ("mask", "pad", "zero", "neutral")


# ------------------------------------------------------------------- preparing
def prepare_explanation(
    loaded: LoadedModel,
    text: str,
    target: Optional[str] = None,
    contrast: Optional[str] = None,
    target_class: ClassLike = None,
    contrast_class: ClassLike = None,
    baseline: Optional[str] = None,
) -> Explanation:
    """Tokenize ``text`` and build the QoI for :meth:`InfluencePatterns.attribute`.

    The QoI depends on ``loaded.kind`` (an entry of :data:`.qoi_kinds.QOI_KINDS`):

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
            [CLS]/[SEP] included), ``"pad"`` (the pad token id at every position),
            ``"zero"`` (token id 0, what Captum takes for ``baselines=None``) or ``"neutral"`` (decoders: the BOS
            token kept at position 0 in the input and the baseline, and not a
            source, the " " token at every other position, or the pad token where
            the tokenizer has no single " " token; the text gets the BOS when its
            tokenizer does not add it). Default: None, the kind's
            :attr:`~.qoi_kinds.QoIKind.default_baseline`: ``"neutral"`` for causal
            LMs, where it converges fastest (docs/decoders.md), else ``"mask"``.

    Returns:
        Explanation: ready for :func:`explain`.

    Raises:
        ExplanationError: A mask token is missing, a word is several word pieces or
            unknown, a class is out of range, an argument is missing or does not fit
            the model's kind, or the baseline token does not exist.
    """
    tokenizer = loaded.tokenizer
    kind = QOI_KINDS[loaded.kind]
    baseline = kind.default_baseline if baseline is None else baseline
    if baseline == "neutral":
        input_ids, baselines, sources = _neutral_baseline(loaded, text)
        note = _neutral_note(tokenizer, baselines, sources)
    else:
        baselines, sources, note = _baseline_id(tokenizer, baseline), None, ""
        input_ids = _tokenize(loaded, text)
    tokens = list(tokenizer.convert_ids_to_tokens(input_ids[0].tolist()))
    common = dict(
        text=text,
        input_ids=input_ids,
        tokens=tokens,
        baselines=baselines,
        baseline=baseline,
        sources=sources,
        baseline_note=note,
    )
    if kind.compares == "classes":
        if target is not None or contrast is not None:
            raise ExplanationError(
                "target/contrast words apply to masked-LM models; a classifier "
                "needs classes (target_class/contrast_class, CLI: --class/"
                "--contrast-class)"
            )
        return kind.build(loaded, common, target_class, contrast_class)
    if target_class is not None or contrast_class is not None:
        raise ExplanationError(
            "classes apply to sequence classifiers; this model needs target and "
            "contrast words (CLI: --target/--contrast)"
        )
    if target is None or contrast is None:
        raise ExplanationError(
            "a target and a contrast word are required (CLI: --target WORD "
            "--contrast WORD)"
        )
    return kind.build(loaded, common, target, contrast)


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


def _neutral_baseline(
    loaded: LoadedModel, text: str
) -> Tuple[Tensor, Tensor, Optional[List[int]]]:
    """(input ids with the BOS at position 0, the (1, T) baseline, the sources) of
    the decoders' ``"neutral"`` baseline.

    Along the straight path from an all-" " (or all-pad) baseline without the BOS the
    QoI swings through values far from both ends and the integral needs hundreds of
    steps; with the BOS kept in both, 50 steps converge to 0.1-3% of the QoI
    difference on the agreement prefixes (docs/decoders.md).
    """
    tokenizer = loaded.tokenizer
    if loaded.kind != "causal_lm":
        raise ExplanationError(
            "baseline 'neutral' is the decoders' baseline (a BOS kept, ' ' "
            "elsewhere); use mask, pad or zero for this model"
        )
    space = tokenizer(" ", add_special_tokens=False)["input_ids"]
    if len(space) != 1:  # a word-level tokenizer drops the space
        space = [tokenizer.pad_token_id]
        if space[0] is None:
            raise ExplanationError(
                "baseline 'neutral': this tokenizer has neither a single ' ' token "
                "nor a pad token; use zero"
            )
    input_ids = _tokenize(loaded, text)
    bos = tokenizer.bos_token_id
    if bos is not None and int(input_ids[0, 0]) != bos:
        input_ids = torch.cat([input_ids.new_tensor([[bos]]), input_ids], dim=1)
        _check_length(loaded, input_ids)
    baselines = torch.full_like(input_ids, int(space[0]))
    if bos is None:
        return input_ids, baselines, None
    baselines[0, 0] = bos
    return input_ids, baselines, list(range(1, input_ids.shape[1]))


def _neutral_note(
    tokenizer: Any, baselines: Tensor, sources: Optional[List[int]]
) -> str:
    ids = baselines[0].tolist()
    space = f"{tokenizer.convert_ids_to_tokens(ids[-1])!r} (id {ids[-1]})"
    if sources is None:
        return f"neutral: {space} at every position"
    bos = f"{tokenizer.convert_ids_to_tokens(ids[0])!r} (id {ids[0]})"
    return (
        f"neutral: BOS {bos} kept at position 0 in the input and the baseline (not a "
        f"source), {space} elsewhere"
    )


def _tokenize(loaded: LoadedModel, text: str) -> Tensor:
    if not isinstance(text, str) or not text.strip():
        raise ExplanationError("the text is empty")
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"].long()
    ids = ids.to(next(loaded.model.parameters()).device)  # the model's device
    _check_length(loaded, ids)
    return ids


def _check_length(loaded: LoadedModel, ids: Tensor) -> None:
    limit = max_length(loaded)
    if ids.shape[1] > limit:
        raise ExplanationError(
            f"the text is {ids.shape[1]} tokens long; the model reads at most {limit}"
        )
    if ids.shape[1] < 2:
        raise ExplanationError("the text has no token besides the output position")


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


# ---------------------------------------------------------------------- running
def explain(
    loaded: LoadedModel,
    explanation: Explanation,
    n_steps: Optional[int] = None,
    show_progress: bool = False,
    *,
    attribution: Optional[InfluencePatterns] = None,
    request: Optional[AttributionRequest] = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_steps: int = DEFAULT_MAX_STEPS,
    strict: bool = False,
    **attribute_kwargs: Any,
) -> InfluencePatternsResult:
    """Run :meth:`InfluencePatterns.attribute` on a prepared explanation, with the
    step count raised until the integral converges
    (:func:`~captum_influence_patterns.convergence.attribute_converged`).

    Args:
        loaded: The model.
        explanation: What :func:`prepare_explanation` returned for it.
        n_steps: Interpolation points tried first. Default: None (the request's,
            else :data:`~captum_influence_patterns.quadrature.DEFAULT_N_STEPS`)
        show_progress: Show tqdm progress bars (on stderr).
        attribution: The explanation's :class:`InfluencePatterns`, when the caller
            runs more on it (the evaluation: routes, optimality). Default: None (built
            here)
        request: The explanation's request (:meth:`Explanation.request
            <.qoi_kinds.Explanation.request>` of ``attribution``), validated once by a
            caller that runs more on it; it carries ``n_steps``, ``method`` and
            ``internal_batch_size``, which are then not given here. Default: None
            (built here)
        tolerance: Largest accepted ``|convergence delta| / |QoI(x) - QoI(x')|``;
            above it ``n_steps`` is doubled. Default: 0.05
        max_steps: Most steps the doubling reaches. Default: 400
        strict: Refuse (``ConvergenceError``) instead of flagging
            (``ConvergenceWarning``) a result that does not converge. Default: False
        **attribute_kwargs: Further arguments of ``attribute`` (``method``,
            ``internal_batch_size``, ``schedule``, ``sources``).

    Returns:
        InfluencePatternsResult: with tokens set, the convergence delta, the
        explanation's description plus the model name in ``metadata``, and
        ``metadata["convergence"]`` (steps used, relative delta, ``converged``).
        The request of the steps used is the caller's to rebuild when it runs more on
        the result: ``result.metadata["n_steps"]``.
    """
    if attribution is None:
        attribution = InfluencePatterns(explanation.forward_func, loaded.model)
    attribute_kwargs.pop("return_convergence_delta", None)
    if attribute_kwargs.get("sources") is None:  # None: the explanation's default
        attribute_kwargs["sources"] = explanation.sources
    settings = {
        name: value
        for name, value in (
            ("n_steps", n_steps),
            ("method", attribute_kwargs.pop("method", None)),
            ("internal_batch_size", attribute_kwargs.pop("internal_batch_size", None)),
        )
        if value is not None
    }
    if request is None:
        request = explanation.request(attribution, **settings)
    else:
        if settings:
            raise ValueError(
                f"{', '.join(settings)}: the request carries them; pass them to "
                "explanation.request(attribution, ...) instead"
            )
        if not torch.equal(request.inputs, explanation.input_ids):
            raise ValueError(
                "request: built for other token ids than the explanation's; build "
                "it with explanation.request(attribution)"
            )
    result = attribute_converged(
        attribution,
        request,
        tolerance=tolerance,
        max_steps=max_steps,
        strict=strict,
        show_progress=show_progress,
        **attribute_kwargs,
    )
    result.set_tokens(loaded.tokenizer)
    result.metadata.update(
        {"model": loaded.name, "model_kind": loaded.kind, **explanation.describe()}
    )
    return result
