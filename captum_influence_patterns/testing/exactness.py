"""Helpers of the exactness tests: the model cases every schedule is checked on, the
float64 internals that make Llama-family models exact, a padded problem, and the
comparison of two searches' states.

The rotary families (Llama, Mistral, Qwen2) compute RMSNorm and the attention softmax
in float32 whatever the weights' dtype; :func:`float64_internals` patches both to the
model's dtype, so that float64 comparisons can hold to 1e-12.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Dict, Iterator, Tuple
from unittest import mock

import numpy as np
import torch
from torch import Tensor, nn
from transformers import (
    MistralConfig,
    MistralForCausalLM,
    PretrainedConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from ..influence import ExampleProblem
from .models import (
    FAMILIES,
    MASK_ID,
    MORE_FAMILIES,
    agreement_batch,
    family_model,
    masked_lm,
)
from .models import problem as example_problem

#: The fields of a search state that two schedules must agree on.
STATE_FIELDS = (
    "sign",
    "positions",
    "position_candidates",
    "is_head",
    "head",
    "node_candidates",
    "is_mlp",
    "ffn_candidates",
)
#: The families with rotary positions (RMSNorm, grouped-query attention).
ROTARY = ("llama", "mistral", "qwen2")
#: Every family, and ALBERT with two layer groups of two layers each, applied three
#: times (group i * 2 // 3 serves application i: six node sets, weights shared).
CASES = FAMILIES + MORE_FAMILIES + ("albert-groups", "mistral", "qwen2")


def _decoder(config_class: type, model_class: type, seed: int = 0) -> nn.Module:
    """A tiny float64 Mistral or Qwen2 (GQA, large random weights), like
    :func:`.models.family_model`'s Llama."""
    torch.manual_seed(seed)
    config: PretrainedConfig = config_class(
        hidden_size=24,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        vocab_size=60,
        max_position_embeddings=40,
    )
    model = model_class(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(15.0)
    return model.double().eval()


def case_model(case: str) -> nn.Module:
    """The float64 model of one of :data:`CASES`."""
    if case == "albert-groups":
        return family_model(
            "albert", config=dict(num_hidden_groups=2, inner_group_num=2)
        )
    if case == "mistral":
        return _decoder(MistralConfig, MistralForCausalLM)
    if case == "qwen2":
        return _decoder(Qwen2Config, Qwen2ForCausalLM)
    return masked_lm(case)


def _rms_norm(self: nn.Module, hidden_states: Tensor) -> Tensor:
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _eager_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Any,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> Tuple[Tensor, Tensor]:
    groups = module.num_key_value_groups
    key, value = (x.repeat_interleave(groups, dim=1) for x in (key, value))
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = weights.softmax(-1)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


@contextmanager
def float64_internals() -> Iterator[None]:
    """Llama, Mistral and Qwen2 with RMSNorm and softmax in the model's dtype."""
    with ExitStack() as stack:
        for family in ROTARY:
            module = f"transformers.models.{family}.modeling_{family}"
            norm = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[family]
            norm_forward = f"{module}.{norm}RMSNorm.forward"
            stack.enter_context(mock.patch(norm_forward, _rms_norm))
            stack.enter_context(
                mock.patch(f"{module}.eager_attention_forward", _eager_attention)
            )
        yield


def padded_problem(
    model: nn.Module, split_mlp: bool, n_steps: int = 4, **kwargs: Any
) -> ExampleProblem:
    """One padded row of 8 tokens (position 7 is padding), the QoI at position 4."""
    ids, args = agreement_batch(length=8)
    mask = torch.ones_like(ids)
    mask[:, 7:] = 0
    return example_problem(
        model, ids, (*args, mask), n_steps=n_steps, split_mlp=split_mlp, **kwargs
    )


def per_row_output_batch() -> Tuple[Tensor, Dict[str, Any]]:
    """Two padded rows of 8 ids whose QoIs read positions 4 and 5, and the keyword
    arguments of ``attribute`` for them ([MASK] baselines, their masks, an output
    position per row)."""
    ids, (_, correct, wrong) = agreement_batch(length=8)
    ids[1, 5] = MASK_ID
    positions = torch.tensor([4, 5])
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    mask[1, 6:] = 0
    return ids, dict(
        baselines=MASK_ID,
        additional_forward_args=(positions, correct, wrong),
        attention_mask=mask,
        output_position=positions,
    )


def assert_same_search_state(
    first: Any, second: Any, tolerance: Dict[str, float]
) -> None:
    """Two search states agree on every field of :data:`STATE_FIELDS`: floating
    fields within ``tolerance`` (``torch.testing.assert_close``), the others exactly."""
    for field in STATE_FIELDS:
        a, b = getattr(first, field), getattr(second, field)
        if a.is_floating_point():
            torch.testing.assert_close(a, b, **tolerance, msg=field)
        else:
            assert torch.equal(a, b), field


def oracle_token_influence(
    model: nn.Module, ids: Tensor, args: Tuple, n_steps: int
) -> Tensor:
    """g (B, T) of the masked-LM logit difference of :func:`.models.agreement_batch`
    against [MASK] baselines, integrated at numpy's Gauss-Legendre nodes by reverse
    mode through ``model(inputs_embeds=...)``: no hook of this library takes part, so
    it is a known answer for anything that does (a user's hooks on the model run as
    the model runs them)."""
    positions, correct, wrong = args
    table = model.get_input_embeddings().weight.detach()
    embeds, baseline = table[ids], table[torch.full_like(ids, MASK_ID)]
    rows = torch.arange(ids.shape[0])
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    total = torch.zeros(ids.shape, dtype=embeds.dtype)
    for node, weight in zip(nodes, weights):
        alpha = 0.5 * (1.0 + float(node))
        point = (baseline + alpha * (embeds - baseline)).requires_grad_()
        logits = model(inputs_embeds=point).logits
        qoi = logits[rows, positions, correct] - logits[rows, positions, wrong]
        (grad,) = torch.autograd.grad(qoi.sum(), point)
        total += 0.5 * float(weight) * (grad * (embeds - baseline)).sum(-1)
    return total
