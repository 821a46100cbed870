"""Quantities of interest: forward functions returning one scalar per row.

Each factory wraps a Hugging Face model into ``forward_func(input_ids, *args)`` for
:class:`~captum_influence_patterns.InfluencePatterns`. Per-example values (positions,
token ids, classes) are passed as ``additional_forward_args`` tensors of shape (B,),
which the attribution splits per example and expands to the rows of each pass.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

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
