"""Families: where each architecture keeps the nodes of its graph, as named
submodule paths, and the table of supported families (:data:`MODEL_FAMILIES`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Dict, Literal, Optional, Tuple, Union

from ..utils.registry import Registry


#: Marks a field of a block spec that is a setting, not a submodule slot.
_SETTING = {"setting": True}


class UnsupportedModelError(ValueError):
    """Raised for a model whose architecture has no adapter."""


@dataclass(frozen=True)
class EncoderSublayers:
    """Named slots of a BERT-style post-LN layer, whose attention output and
    feed-forward output are submodules called with (branch, residual): layout
    :class:`~.layouts.PostLNEncoderGraph`. Paths are relative to one layer.

    Attributes:
        query, key, value (str): The query, key and value projections (``nn.Linear``).
        attention_output (str): Called with (head contexts, skip); returns the attention
            sublayer's output (``BertSelfOutput``: projection, add, LayerNorm).
        intermediate (str): The first half of the feed-forward block; its output is the
            MLP node of split graphs.
        output (str): Called with (intermediate activation, attention sublayer output);
            returns ``h^l`` (``BertOutput``).
    """

    query: str = "attention.self.query"
    key: str = "attention.self.key"
    value: str = "attention.self.value"
    attention_output: str = "attention.output"
    intermediate: str = "intermediate"
    output: str = "output"



@dataclass(frozen=True)
class InlineBlock:
    """Named slots of a block whose residual adds are inline code: layout
    :class:`~.layouts.InlineResidualGraph`. Paths are relative to one block.

    Post-LN (``norm="post"``): ``a = attention_norm(output_projection(C) + h)``,
    ``h' = output_norm(MLP(a) + a)``. Pre-LN (``norm="pre"``, LayerNorm or RMSNorm):
    ``a = output_projection(C) + h``, ``h' = a + mlp(attention_norm(a))``, with the
    queries, keys and values read from ``input_norm(h)``.

    Attributes:
        norm (str): ``"post"`` or ``"pre"``: where the norms sit.
        output_projection (str): The attention output projection; its input is the head
            contexts ``C``.
        attention_norm (str): The norm that consumes the post-attention sum.
        mlp (str): The module whose output is the MLP branch.
        output_norm (str, optional): Post-LN: the norm consuming ``MLP + residual``.
        query, key, value (str, optional): Separate projections (``nn.Linear``).
        qkv (str, optional): A fused projection (GPT-2's ``c_attn``, a ``Conv1D``)
            returning queries, keys and values concatenated, in place of the three.
        input_norm (str, optional): Pre-LN: the norm before attention.
        mlp_function (str, optional): A method of the block computing the MLP branch
            from its input where ``mlp`` is only its last part (ALBERT's
            ``ff_chunk``). Default: calling ``mlp`` itself.
    """

    norm: Literal["post", "pre"] = field(metadata=_SETTING)
    output_projection: str
    attention_norm: str
    mlp: str
    output_norm: Optional[str] = None
    query: Optional[str] = None
    key: Optional[str] = None
    value: Optional[str] = None
    qkv: Optional[str] = None
    input_norm: Optional[str] = None
    mlp_function: Optional[str] = field(default=None, metadata=_SETTING)

    def __post_init__(self) -> None:
        if self.norm not in ("post", "pre"):
            raise ValueError(f"norm: 'post' or 'pre', got {self.norm!r}")
        if (self.qkv is None) == (self.query is None):
            raise ValueError("qkv: name either a fused qkv or query, key and value")
        if (self.norm == "post") != (self.output_norm is not None):
            raise ValueError("output_norm: needed for norm='post' only")
        if (self.norm == "pre") != (self.input_norm is not None):
            raise ValueError("input_norm: needed for norm='pre' only")



def module_slots(block: Union[EncoderSublayers, InlineBlock]) -> Dict[str, str]:
    """The slots of ``block`` that name a submodule, with their paths (every field
    but the settings, where the family fills it)."""
    return {
        slot.name: getattr(block, slot.name)
        for slot in fields(block)
        if not slot.metadata.get("setting") and getattr(block, slot.name)
    }


@dataclass(frozen=True)
class Family:
    """Where one architecture family keeps the nodes of its graph, as submodule paths.

    Paths are dotted names for :meth:`torch.nn.Module.get_submodule`: the model-level
    ones relative to ``model.base_model``, ``self_attention`` and ``block``'s slots
    relative to one layer. Head counts and sizes come from the config
    (``num_attention_heads``, ``hidden_size`` and, where the config has one,
    ``head_dim``). Register a new family with :func:`register_family`.

    Attributes:
        name (str): ``config.model_type`` of the family, e.g. ``"bert"``
            (``graph.family``).
        word_embeddings (str): The word-embedding module (where inputs are
            interpolated).
        embedding_output (tuple of str): Candidates for the module whose output is the
            embedding node ``h^0``; the first one the model has is used. Empty: ``h^0``
            is the word embedding's output.
        layers (str): The module list whose outputs are ``h^1 .. h^L``.
        self_attention (str): The module computing a layer's attention weights (it
            returns ``(output, weights)`` under eager attention).
        block (EncoderSublayers or InlineBlock): The named parts of a layer; its type
            is the hook layout.
        is_causal (bool): Whether attention is causal. Default: False
        positions (str): ``"absolute"`` (position embeddings added to ``h^0``) or
            ``"rotary"`` (queries and keys rotated per position; the rotation comes as
            the attention module's ``position_embeddings``). Default: ``"absolute"``
        key_value_heads (str, optional): The config attribute counting key/value heads
            where groups of query heads share them (grouped-query attention). Default:
            None (one key/value head per query head)
        layer_groups (bool): ``layers`` names ALBERT's layer groups, applied in turn
            ``config.num_hidden_layers`` times; every application is a layer of the
            graph. Default: False
    """

    name: str
    word_embeddings: str
    embedding_output: Tuple[str, ...]
    layers: str
    self_attention: str
    block: Union[EncoderSublayers, InlineBlock]
    is_causal: bool = False
    positions: Literal["absolute", "rotary"] = "absolute"
    key_value_heads: Optional[str] = None
    layer_groups: bool = False

    @property
    def pre_layer_norm(self) -> bool:
        return isinstance(self.block, InlineBlock) and self.block.norm == "pre"


_BERT = Family(
    name="bert",
    word_embeddings="embeddings.word_embeddings",
    embedding_output=("embeddings",),
    layers="encoder.layer",
    self_attention="attention.self",
    block=EncoderSublayers(),
)
_LLAMA = Family(  # also Mistral and Qwen2: RMSNorm, rotary positions, GQA
    name="llama",
    word_embeddings="embed_tokens",
    embedding_output=(),  # rotary positions: h^0 is the token embedding
    layers="layers",
    self_attention="self_attn",
    # Head contexts are per query head (the input of o_proj), so a route names one
    # of the query heads even where key/value heads are shared.
    block=InlineBlock(
        norm="pre",
        input_norm="input_layernorm",
        query="self_attn.q_proj",
        key="self_attn.k_proj",
        value="self_attn.v_proj",
        output_projection="self_attn.o_proj",
        attention_norm="post_attention_layernorm",
        mlp="mlp",
    ),
    is_causal=True,
    positions="rotary",
    key_value_heads="num_key_value_heads",
)

#: ``config.model_type`` -> the :class:`Family` that locates its nodes; add to it with
#: :func:`register_family`.
MODEL_FAMILIES: Registry[Family] = Registry(Family, argument="family", what="a family")


def register_family(family: Family, *, overwrite: bool = False) -> Family:
    """Make the architecture ``family.name`` (a ``config.model_type``) analysable.

    A new family is one declarative :class:`Family` whose ``block`` names the parts
    of a layer; :func:`~.cache.model_graph` hooks them and the row-wise schedule of
    :mod:`.search.rowwise` linearises them.

    Args:
        family (Family): The family's description; ``family.name`` is its key in
            :data:`MODEL_FAMILIES`.
        overwrite (bool, optional): Replace a family of the same name,
            which raises a ValueError otherwise. Default: False

    Returns:
        Family: ``family``, which :func:`~.cache.model_graph` now finds by the
        model's ``config.model_type``.
    """
    return MODEL_FAMILIES.add(family, overwrite=overwrite)


for _spec in (
    _BERT,
    replace(_BERT, name="roberta"),
    # ELECTRA may project small embeddings up to the hidden size: h^0 is the projection.
    replace(
        _BERT, name="electra", embedding_output=("embeddings_project", "embeddings")
    ),
    Family(
        name="distilbert",
        word_embeddings="embeddings.word_embeddings",
        embedding_output=("embeddings",),
        layers="transformer.layer",
        self_attention="attention",
        block=InlineBlock(
            norm="post",
            query="attention.q_lin",
            key="attention.k_lin",
            value="attention.v_lin",
            output_projection="attention.out_lin",
            attention_norm="sa_layer_norm",
            mlp="ffn",
            output_norm="output_layer_norm",
        ),
    ),
    Family(
        name="albert",
        word_embeddings="embeddings.word_embeddings",
        embedding_output=("encoder.embedding_hidden_mapping_in",),
        layers="encoder.albert_layer_groups",
        self_attention="attention",
        block=InlineBlock(
            norm="post",
            query="attention.query",
            key="attention.key",
            value="attention.value",
            output_projection="attention.dense",
            attention_norm="attention.LayerNorm",
            mlp="ffn_output",
            mlp_function="ff_chunk",
            output_norm="full_layer_layer_norm",
        ),
        layer_groups=True,
    ),
    Family(
        name="gpt2",
        word_embeddings="wte",
        embedding_output=("drop",),  # wte + wpe, after embedding dropout
        layers="h",
        self_attention="attn",
        block=InlineBlock(
            norm="pre",
            input_norm="ln_1",
            qkv="attn.c_attn",
            output_projection="attn.c_proj",
            attention_norm="ln_2",
            mlp="mlp",
        ),
        is_causal=True,
    ),
    _LLAMA,
    replace(_LLAMA, name="mistral"),
    replace(_LLAMA, name="qwen2"),
):
    register_family(_spec)
