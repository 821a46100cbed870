"""Tiny randomly initialised models of every supported family, built from configs."""

from __future__ import annotations

from typing import Tuple

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
    RobertaConfig,
    RobertaForMaskedLM,
)

from captum_influence_patterns import (
    InfluencePatterns,
    analysis_mode,
    masked_lm_logit_difference,
    restrict_paths,
)
from captum_influence_patterns.gating import GatedPass, Gates
from captum_influence_patterns.influence import ExampleProblem
from captum_influence_patterns._validation import example_args

VOCAB = 60
MASK_ID = 3
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


def masked_lm(family: str = "bert", seed: int = 0, **overrides) -> nn.Module:
    """A float64 language model of ``family`` with random weights (eval mode): masked LM
    for encoders, causal LM for GPT-2 and Llama (whose QoI at position 4 is then the
    next
    token's logit difference)."""
    torch.manual_seed(seed)
    shape = {**SHAPE, **overrides}
    if family == "bert":
        model = BertForMaskedLM(BertConfig(**shape))
    elif family == "roberta":
        model = RobertaForMaskedLM(RobertaConfig(pad_token_id=1, **shape))
    elif family == "electra":
        # embedding_size != hidden_size exercises ELECTRA's embedding projection
        model = ElectraForMaskedLM(ElectraConfig(embedding_size=16, **shape))
    elif family == "distilbert":
        model = DistilBertForMaskedLM(
            DistilBertConfig(
                dim=shape["hidden_size"],
                n_layers=shape["num_hidden_layers"],
                n_heads=shape["num_attention_heads"],
                hidden_dim=shape["intermediate_size"],
                vocab_size=VOCAB,
                max_position_embeddings=40,
                dropout=0.1,
                attention_dropout=0.1,
            )
        )
    elif family == "albert":
        # one shared layer applied three times: one node set per application
        model = AlbertForMaskedLM(
            AlbertConfig(
                embedding_size=16, num_hidden_groups=1, inner_group_num=1, **shape
            )
        )
    elif family == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                n_embd=shape["hidden_size"],
                n_layer=shape["num_hidden_layers"],
                n_head=shape["num_attention_heads"],
                n_positions=40,
                vocab_size=VOCAB,
            )
        )
    elif family == "llama":
        # grouped-query attention: 4 query heads share 2 key/value heads
        model = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=shape["hidden_size"],
                num_hidden_layers=shape["num_hidden_layers"],
                num_attention_heads=shape["num_attention_heads"],
                num_key_value_heads=2,
                intermediate_size=shape["intermediate_size"],
                vocab_size=VOCAB,
                max_position_embeddings=40,
            )
        )
    else:
        raise ValueError(family)
    _scale_up(model)
    return model.double().eval()


def classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(num_labels=3, **SHAPE))
    _scale_up(model)
    return model.double().eval()


def _scale_up(model: nn.Module) -> None:
    # Default init (std 0.02) makes every influence tiny; larger weights give attention
    # patterns with real structure and QoIs of order one.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2:
                parameter.mul_(15.0)


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


def attribution(model: nn.Module) -> InfluencePatterns:
    return InfluencePatterns(masked_lm_logit_difference(model), model)


def problem(
    model: nn.Module,
    ids: Tensor,
    args: Tuple,
    example: int = 0,
    n_steps: int = 16,
    method: str = "gausslegendre",
    internal_batch_size=None,
) -> ExampleProblem:
    """The per-example problem the attribution builds (mask baseline)."""
    ip = attribution(model)
    return ExampleProblem(
        ip.graph,
        ip.forward_func,
        ids[example],
        torch.full_like(ids[example], MASK_ID),
        None,
        example_args(args, example, ids.shape[0]),
        n_steps,
        method,
        internal_batch_size,
    )


def gated_outputs_equal(model: nn.Module, split_mlp: bool = False) -> bool:
    """Whether random gates on every node leave the QoI bit-identical."""
    ids, args = agreement_batch()
    ip = attribution(model)
    graph = ip.graph
    graph.split_mlp = split_mlp
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
    try:
        with analysis_mode(model), torch.no_grad():
            plain = ip.forward_func(ids, *args)
            embeds = graph.word_embeddings(ids)
            with restrict_paths(graph, GatedPass(embeds, torch.arange(rows), gates)):
                gated = ip.forward_func(ids, *args)
    finally:
        graph.split_mlp = False
    return torch.equal(plain, gated)
