"""Quantities of interest: forward functions returning one scalar per row.

Each factory wraps a Hugging Face model into ``forward_func(input_ids, *args)`` for
:class:`~captum_influence_patterns.InfluencePatterns`. Per-example values (positions,
token ids, classes) are passed as ``additional_forward_args`` tensors of shape (B,),
which the attribution splits per example and expands to the rows of each pass.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from .utils._captum_compat import TargetType, select_targets

IndexLike = Union[int, Tensor]


def _per_row(value: IndexLike, rows: int, device: torch.device) -> Tensor:
    return torch.as_tensor(value, device=device).reshape(-1).expand(rows)


def _require_lm_head(model: nn.Module, factory: str, auto_class: str) -> None:
    """Fail now, not deep inside the first pass, when ``model`` has no LM head.

    A Hugging Face model without a language-model head (``BertModel``, the embedded
    MiniLM) returns hidden states, not ``.logits``. Models that are not Hugging Face
    ``PreTrainedModel``s (no ``get_output_embeddings``) are trusted.
    """
    get_head = getattr(model, "get_output_embeddings", None)
    if get_head is None or get_head() is not None:
        return
    raise ValueError(
        f"{factory}: model ({type(model).__name__}) has no language-model head, so "
        f"it returns hidden states, not logits. Load the checkpoint with "
        f"{auto_class}.from_pretrained(...); for the embedded MiniLM use its linear "
        "readout: readout_forward(model, 'number') or "
        "prepare_explanation(load_model(), text, target=..., contrast=...) "
        "(see docs/troubleshooting.md)"
    )


def masked_lm_logit_difference(model: nn.Module) -> Callable[..., Tensor]:
    """QoI of agreement tasks: ``logit(correct) - logit(wrong)`` at the output position.

    Args:
        model: A masked language model (``AutoModelForMaskedLM``), or any module
            whose output has ``.logits`` of shape (rows, T, vocab).

    Returns:
        ``f(input_ids, output_position, correct_id, wrong_id, attention_mask=None)``
        returning (rows,) logit differences; the last four may be ints or (rows,)
        tensors. A difference of logits equals the difference of log-probabilities.

    Raises:
        ValueError: ``model`` is a Hugging Face model without a language-model head
            (e.g. ``BertModel`` or the embedded MiniLM); the message says what to use.
    """
    _require_lm_head(model, "masked_lm_logit_difference", "AutoModelForMaskedLM")
    return _token_logit_difference(model)


def _token_logit_difference(model: nn.Module) -> Callable[..., Tensor]:
    """``logit(a) - logit(b)`` of ``model(...).logits`` at each row's position."""

    def forward(
        input_ids: Tensor,
        output_position: IndexLike,
        correct_id: IndexLike,
        wrong_id: IndexLike,
        attention_mask: Optional[Tensor] = None,
    ) -> Tensor:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        at_output = logits[rows, _per_row(output_position, rows.shape[0], rows.device)]
        correct = _per_row(correct_id, rows.shape[0], rows.device)
        wrong = _per_row(wrong_id, rows.shape[0], rows.device)
        return at_output[rows, correct] - at_output[rows, wrong]

    return forward


def classifier_logit_difference(model: nn.Module) -> Callable[..., Tensor]:
    """QoI of sequence classification: ``logit(class) - logit(other class)``.

    Returns:
        ``f(input_ids, target_class, other_class, attention_mask=None)`` returning
        (rows,); the output position of such models is [CLS] (0).
    """

    def forward(
        input_ids: Tensor,
        target_class: IndexLike,
        other_class: IndexLike,
        attention_mask: Optional[Tensor] = None,
    ) -> Tensor:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        chosen = _per_row(target_class, rows.shape[0], rows.device)
        other = _per_row(other_class, rows.shape[0], rows.device)
        return logits[rows, chosen] - logits[rows, other]

    return forward


def next_token_logit_difference(model: nn.Module) -> Callable[..., Tensor]:
    """QoI of causal language models: ``logit(candidate) - logit(other)`` for the token
    after ``output_position`` (normally the last position).

    Returns:
        ``f(input_ids, output_position, candidate_id, other_id, attention_mask=None)``,
        the same computation as :func:`masked_lm_logit_difference` read at a causal LM's
        next-token logits.

    Raises:
        ValueError: ``model`` is a Hugging Face model without a language-model head
            (e.g. ``GPT2Model``); load it with ``AutoModelForCausalLM``.
    """
    _require_lm_head(model, "next_token_logit_difference", "AutoModelForCausalLM")
    return _token_logit_difference(model)


def check_qoi(output: Any, target: TargetType, batch: int) -> None:
    """Refuse a ``forward_func`` output (for ``target``) that is not one finite,
    floating-point scalar per example of ``batch`` that depends differentiably on the
    word embeddings.

    Raises:
        ValueError: naming what the QoI is instead, and the fix.
    """
    try:
        output = select_targets(output, target)
    except (AssertionError, IndexError, RuntimeError, TypeError) as error:
        raise ValueError(
            f"target: could not select one scalar per example from forward_func's "
            f"output ({error}). Pass a target that selects one value per example, "
            "or a forward_func that returns (B,) scalars (see "
            "captum_influence_patterns.qoi)."
        ) from error
    if (
        not isinstance(output, Tensor)
        or output.numel() != batch
        or (output.dim() and output.shape[0] != batch)
    ):
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output)
        raise ValueError(
            "forward_func/target: expected one scalar per example, "
            f"shape ({batch},), "
            f"got {shape}. Choose a target that selects one value per example, "
            "or wrap "
            "forward_func to return the QoI (see captum_influence_patterns.qoi)."
        )
    if not output.is_floating_point():
        raise ValueError(
            f"forward_func: the QoI has dtype {output.dtype}; return a "
            "floating-point value computed from the model's output (a logit or "
            "probability, not an argmax or a count)"
        )
    if not output.requires_grad:
        raise ValueError(
            "forward_func: the QoI does not depend differentiably on the model's "
            "word embeddings (detached by .detach(), .item(), numpy or "
            "torch.no_grad inside forward_func); return it as a tensor computed "
            "from the model's output"
        )
    bad = (~torch.isfinite(output.detach().reshape(-1))).nonzero().flatten()
    if bad.numel():
        raise ValueError(
            f"forward_func: the QoI is NaN or infinite at the input of example(s) "
            f"{bad.tolist()}; check the model's weights and the inputs"
        )
