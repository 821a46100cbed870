"""Tiny randomly initialised models of every supported family, built from configs.

The one place where tests, benchmarks and scripts build models: :func:`family_model`
for any size, :func:`masked_lm` and :func:`classifier` for the test suite's shape.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple, Type

import torch
from torch import Tensor, nn
from transformers import (
    AlbertConfig,
    AlbertForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForMaskedLM,
    ElectraConfig,
    ElectraForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    RobertaConfig,
    RobertaForMaskedLM,
)

from ..attribution import InfluencePatterns
from ..graph import analysis_mode, model_graph, restrict_paths
from ..graph.gating import GatedPass, Gates
from ..influence import ExampleProblem
from ..qoi import masked_lm_logit_difference
from ..quadrature import DEFAULT_METHOD, IntegrationSettings

VOCAB = 60
MASK_ID = 3
#: The test suite's shape, in BERT's config names.
SHAPE = dict(
    hidden_size=24,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=48,
    vocab_size=VOCAB,
    max_position_embeddings=40,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)
FAMILIES = ("bert", "roberta", "electra")
MORE_FAMILIES = ("distilbert", "albert", "gpt2", "llama")

_GPT2_NAMES = dict(
    hidden_size="n_embd",
    num_hidden_layers="n_layer",
    num_attention_heads="n_head",
    max_position_embeddings="n_positions",
    intermediate_size=None,
    hidden_dropout_prob=None,
    attention_probs_dropout_prob=None,
)
_DISTILBERT_NAMES = dict(
    hidden_size="dim",
    num_hidden_layers="n_layers",
    num_attention_heads="n_heads",
    intermediate_size="hidden_dim",
    hidden_dropout_prob="dropout",
    attention_probs_dropout_prob="attention_dropout",
)
_LLAMA_NAMES = dict(hidden_dropout_prob=None, attention_probs_dropout_prob=None)

#: Per family: the language-model class, the config class, the config's names for the
#: shape keys where they differ from BERT's (None: the family has no such setting),
#: and fixed settings.
_FAMILY_CONFIGS: Dict[
    str,
    Tuple[Type[nn.Module], Type[PretrainedConfig], Dict[str, Optional[str]], Dict],
] = {
    "bert": (BertForMaskedLM, BertConfig, {}, {}),
    "roberta": (RobertaForMaskedLM, RobertaConfig, {}, dict(pad_token_id=1)),
    # embedding_size != hidden_size exercises ELECTRA's embedding projection
    "electra": (ElectraForMaskedLM, ElectraConfig, {}, dict(embedding_size=16)),
    "distilbert": (DistilBertForMaskedLM, DistilBertConfig, _DISTILBERT_NAMES, {}),
    # one shared layer applied num_hidden_layers times: one node set per application
    "albert": (
        AlbertForMaskedLM,
        AlbertConfig,
        {},
        dict(embedding_size=16, num_hidden_groups=1, inner_group_num=1),
    ),
    "gpt2": (GPT2LMHeadModel, GPT2Config, _GPT2_NAMES, {}),
    # grouped-query attention: 4 query heads share 2 key/value heads
    "llama": (LlamaForCausalLM, LlamaConfig, _LLAMA_NAMES, dict(num_key_value_heads=2)),
}


def family_model(
    family: str,
    seed: int = 0,
    *,
    weight_scale: float = 15.0,
    dtype: torch.dtype = torch.float64,
    model_class: Optional[Type[nn.Module]] = None,
    config: Optional[Dict[str, Any]] = None,
    **shape: Any,
) -> nn.Module:
    """A randomly initialised model of ``family`` in eval mode.

    Args:
        family (str): One of :data:`FAMILIES` or :data:`MORE_FAMILIES`.
        seed (int, optional): Seed of the initialisation. Default: 0
        weight_scale (float, optional): Factor on every matrix. The default init (std
            0.02) makes every influence tiny; larger weights give attention patterns
            with real structure and QoIs of order one. Default: 15.0
        dtype (torch.dtype, optional): Default: torch.float64
        model_class (type, optional): The head; default the family's language model
            (masked LM for encoders, causal LM for GPT-2 and Llama).
        config (dict, optional): Further config settings, passed as they are (e.g.
            ``num_labels``); they override the family's fixed settings.
        **shape: :data:`SHAPE`'s keys (BERT's names), overriding :data:`SHAPE`.
    """
    default_class, config_class, names, fixed = _FAMILY_CONFIGS[family]
    settings = dict(fixed)
    for key, value in {**SHAPE, **shape}.items():
        name = names.get(key, key)
        if name is not None:
            settings[name] = value
    settings.update(config or {})
    torch.manual_seed(seed)
    model = (model_class or default_class)(config_class(**settings))
    if weight_scale != 1.0:
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() == 2:
                    parameter.mul_(weight_scale)
    return model.to(dtype).eval()


def masked_lm(family: str = "bert", seed: int = 0, **shape: Any) -> nn.Module:
    """A float64 language model of ``family`` with large random weights: masked LM for
    encoders, causal LM for GPT-2 and Llama (whose QoI at position 4 is then the next
    token's logit difference)."""
    return family_model(family, seed, **shape)


def classifier(seed: int = 0) -> nn.Module:
    """A float64 three-class BERT sequence classifier with large random weights."""
    return family_model(
        "bert",
        seed,
        model_class=BertForSequenceClassification,
        config=dict(num_labels=3),
    )


def agreement_batch(
    seed: int = 1, batch: int = 2, length: int = 7
) -> Tuple[Tensor, Tuple]:
    """Token ids with [MASK] at position 4 and QoI args (positions, correct, wrong)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, length), generator=generator)
    ids[:, 4] = MASK_ID
    positions = torch.full((batch,), 4)
    correct = torch.randint(5, VOCAB, (batch,), generator=generator)
    wrong = (correct + 7) % (VOCAB - 5) + 5
    return ids, (positions, correct, wrong)


def agreement_keywords(args: Tuple, n_steps: int = 4, **overrides: Any) -> Dict[str, Any]:
    """The keyword arguments of ``attribute`` for :func:`agreement_batch`'s QoI
    arguments ``args``: [MASK] baselines, the output at position 4, ``n_steps``, and
    any ``overrides``."""
    keywords: Dict[str, Any] = dict(
        baselines=MASK_ID,
        additional_forward_args=args,
        output_position=4,
        n_steps=n_steps,
    )
    keywords.update(overrides)
    return keywords


def mean_pooled_qoi(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """A QoI that reads every position (no output position): the difference of the
    means over positions of two logits (ids 7 and 9) of the masked LM ``model``."""

    def mean_pooled(input_ids: Tensor) -> Tensor:
        logits = model(input_ids=input_ids).logits
        return logits[..., 7].mean(1) - logits[..., 9].mean(1)

    return mean_pooled


def attribution(model: nn.Module, split_mlp: bool = False) -> InfluencePatterns:
    """The masked-LM logit-difference explainer of ``model``."""
    return InfluencePatterns(
        masked_lm_logit_difference(model), model, split_mlp=split_mlp
    )


def run_search(model: nn.Module, ids: Tensor, args: Tuple, n_steps: int, **kwargs):
    """``attribute`` with the mask baseline and output position 4 of
    :func:`agreement_batch`."""
    return attribution(model).attribute(
        ids,
        baselines=MASK_ID,
        additional_forward_args=args,
        output_position=4,
        n_steps=n_steps,
        **kwargs,
    )


def problem(
    model: nn.Module,
    ids: Tensor,
    args: Tuple,
    n_steps: int = 16,
    split_mlp: bool = False,
    example: int = 0,
    method: str = DEFAULT_METHOD,
    internal_batch_size: Optional[int] = None,
) -> ExampleProblem:
    """The problem the attribution builds for one example (mask baseline, one pass per
    stage)."""
    return attribution(model, split_mlp).example_problem(
        ids,
        torch.full_like(ids, MASK_ID),
        None,
        args,
        example,
        IntegrationSettings(n_steps, method, internal_batch_size),
    )


def gated_outputs_equal(model: nn.Module, split_mlp: bool = False) -> bool:
    """Whether random gates on every node leave the QoI bit-identical."""
    ids, args = agreement_batch()
    forward_func = masked_lm_logit_difference(model)
    graph = model_graph(model, split_mlp=split_mlp)
    generator = torch.Generator().manual_seed(0)
    rows, length = ids.shape
    layers = range(1, graph.num_layers + 1)

    def random_mask(*shape: int) -> Tensor:
        return torch.randint(0, 2, (rows, length, *shape), generator=generator).double()

    gates = Gates(
        embedding={k: random_mask() for k in range(graph.num_layers + 1)},
        heads={k: random_mask(graph.num_heads) for k in layers},
        skip={k: random_mask() for k in layers},
        mlp={k: random_mask() for k in layers},
        residual={k: random_mask() for k in layers},
    )
    with analysis_mode(model), torch.no_grad():
        plain = forward_func(ids, *args)
        embeds = graph.word_embeddings(ids)
        with restrict_paths(graph, GatedPass(embeds, torch.arange(rows), gates)):
            gated = forward_func(ids, *args)
    return torch.equal(plain, gated)
