"""Model graph adapters: where the nodes of docs/method.md, section 2 live in a Hugging
Face
model.

An adapter locates, for one architecture family, the word-embedding module (where inputs
are interpolated), the module whose output is the embedding node ``h^0``, the layers
whose outputs are ``h^1..h^L``, and the submodule of each layer whose inputs are the
head contexts and the skip. It also knows how to install hooks that hand these tensors
to a :class:`NodeController` (see :mod:`.path_restriction`), so the search never needs
to know the family.

Two hook layouts cover the families:

- :class:`PostLNEncoderGraph` (BERT, RoBERTa, ELECTRA): a submodule (``BertSelfOutput``)
  is called with (head contexts, skip), so a pre-hook sees and replaces both.
- :class:`InlineResidualGraph` (DistilBERT, ALBERT, GPT-2, Llama, Mistral, Qwen2): the
  residual add is written inline in the block's ``forward``. The block's input is
  captured as the skip, the attention output projection's input gives the head contexts,
  and the module that consumes the post-attention sum (a LayerNorm) gets ``attention +
  skip`` recomputed from the gated skip, so the skip branch has a tensor of its own. For
  pre-LN blocks the block's output ``h' + MLP(LN(h'))`` is recomputed the same way, so
  paths from the skip through the MLP run through the gated ``h'``. Recomputed sums use
  the same operands as the model's own (IEEE addition is commutative), so forward values
  stay bit-identical.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Type

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


class StopForward(Exception):
    """Raised from a hook once a pass has read everything it needs."""


class NodeController:
    """Decides what happens at each node during one forward pass. The default is
    identity.

    ``word_embeddings`` receives the word-embedding module's output and may replace it
    (this is where inputs are interpolated). ``embedding_node`` receives ``h^layer``
    (layer 0 is the embedding block's output). ``attention_inputs`` receives the head
    contexts of ``layer`` as (rows, T, heads, head_size) and the skip input as (rows, T,
    D).
    """

    def word_embeddings(self, output: Tensor) -> Tensor:
        return output

    def embedding_node(self, layer: int, hidden: Tensor) -> Tensor:
        return hidden

    def attention_inputs(
        self, layer: int, heads: Tensor, skip: Tensor
    ) -> Tuple[Tensor, Tensor]:
        return heads, skip

    def mlp_inputs(
        self, layer: int, mlp: Tensor, residual: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Only with ``graph.split_mlp``: the MLP branch's output (or, for BERT, its
        intermediate activation) and the residual around it, (rows, T, ...)."""
        return mlp, residual


@contextmanager
def restrict_paths(graph: ModelGraph, controller: NodeController) -> Iterator[None]:
    """Route every node of ``graph`` through ``controller`` inside the block."""
    handles = graph.register_hooks(controller)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# PyTorch's forward-mode AD levels are process-wide ("Nested forward mode AD is not
# supported" when two threads enter one), so a lock per model would not be enough:
# every analysis in the process takes this one. Re-entrant, so a tool may nest blocks.
_ANALYSIS_LOCK = threading.RLock()


@contextmanager
def analysis_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and eager attention for the block; the user's settings come back after.

    Forward-mode autodiff cannot run through fused SDPA attention on CPU, so attention
    runs eagerly; eval mode switches dropout off so that every pass sees the same
    function. Every submodule's training flag, every parameter's ``requires_grad``, the
    attention implementation and the module hooks are restored on exit, also when an
    exception escapes.

    The block holds a process-wide re-entrant lock: concurrent analyses (two threads
    calling ``attribute`` on one model, or on two models) run one after the other,
    because hooks sit on shared modules and forward-mode AD levels are process-wide.
    """
    with _ANALYSIS_LOCK:
        training = [(module, module.training) for module in model.modules()]
        requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        hooks = _hook_dicts(model)
        attention = getattr(model.config, "_attn_implementation", None)
        switch = attention not in (None, "eager") and hasattr(
            model, "set_attn_implementation"
        )
        try:
            if switch:
                model.set_attn_implementation("eager")
            model.eval()
            yield
        finally:
            for module, flag in training:
                module.training = flag
            for parameter, flag in requires_grad:
                parameter.requires_grad_(flag)
            for hook_dict, saved in hooks:
                for key in set(hook_dict) - saved:
                    del hook_dict[key]  # left behind by an interrupted pass
            if switch:
                model.set_attn_implementation(attention)


_HOOK_KINDS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _hook_dicts(model: nn.Module) -> List[Tuple[Dict[int, Any], set]]:
    """Every module hook dictionary of ``model`` with the handle ids it holds now."""
    dicts = [
        getattr(module, kind)
        for module in model.modules()
        for kind in _HOOK_KINDS
        if isinstance(getattr(module, kind, None), dict)
    ]
    return [(d, set(d)) for d in dicts]


class UnsupportedModelError(ValueError):
    """Raised for a model whose architecture has no adapter."""


class ModelGraph:
    """The node layout of one model. Subclasses fill in the module attributes.

    Attributes:
        model (nn.Module): The Hugging Face model (any head).
        family (str): Architecture family name, e.g. ``"bert"``.
        word_embeddings (nn.Module): Module whose output is interpolated.
        embedding_output (nn.Module): Module whose output is the embedding node ``h^0``.
        layers (list of nn.Module): Modules whose outputs are ``h^1 .. h^L``.
        self_attentions (list of nn.Module): Per layer, the module computing attention
            weights (it returns ``(output, weights)`` under eager attention).
        is_causal (bool): Whether attention is causal (a route never moves backwards).
        split_mlp (bool): Also route every node set's feed-forward sublayer through
            :meth:`NodeController.mlp_inputs` (the MLP branch and the residual around
            it become nodes). Off by default, the paper's graph.
        num_heads (int): Attention heads per layer.
        head_size (int): Size of one head's context vector.
    """

    family: str = ""
    is_causal: bool = False
    split_mlp: bool = False
    model: nn.Module
    word_embeddings: nn.Module
    embedding_output: nn.Module
    layers: List[nn.Module]
    self_attentions: List[nn.Module]
    num_heads: int
    head_size: int

    @property
    def num_layers(self) -> int:
        """L: node sets, one per layer application (ALBERT applies shared layers)."""
        return len(self.layers)

    @property
    def vocab_size(self) -> int:
        return self.word_embeddings.num_embeddings

    def register_hooks(self, controller: NodeController) -> List[RemovableHandle]:
        """Install hooks routing every node through ``controller``; return handles."""
        raise NotImplementedError


class PostLNEncoderGraph(ModelGraph):
    """BERT-style post-LayerNorm encoders (docs/method.md, section 2)."""

    def __init__(self, model: nn.Module) -> None:
        base = model.base_model
        config = model.config
        self.model = model
        self.word_embeddings = base.embeddings.word_embeddings
        # ELECTRA may project small embeddings up to the hidden size: h^0 is the
        # projection.
        self.embedding_output = getattr(base, "embeddings_project", base.embeddings)
        self.layers = list(base.encoder.layer)
        self.attention_outputs = [layer.attention.output for layer in self.layers]
        self.self_attentions = [layer.attention.self for layer in self.layers]
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads

    def register_hooks(self, controller: NodeController) -> List[RemovableHandle]:
        handles = [
            self.word_embeddings.register_forward_hook(
                lambda module, args, output: controller.word_embeddings(output)
            ),
            self.embedding_output.register_forward_hook(_embedding_hook(controller, 0)),
        ]
        for index, (layer, attention_output) in enumerate(
            zip(self.layers, self.attention_outputs), start=1
        ):
            handles.append(
                attention_output.register_forward_pre_hook(
                    self._attention_hook(controller, index), with_kwargs=True
                )
            )
            handles.append(
                layer.register_forward_hook(_embedding_hook(controller, index))
            )
            if self.split_mlp:  # BertLayer calls self.output(intermediate, attention)
                handles.append(
                    layer.output.register_forward_pre_hook(
                        _mlp_hook(controller, index), with_kwargs=True
                    )
                )
        return handles

    def _attention_hook(self, controller: NodeController, layer: int) -> Callable:
        def hook(
            module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]
        ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
            # BertAttention calls self.output(attention_output, hidden_states).
            names = ("hidden_states", "input_tensor")
            values = list(args) + [kwargs.pop(k) for k in names if k in kwargs]
            contexts, skip = values[0], values[1]
            rows, positions, _ = contexts.shape
            heads = contexts.view(rows, positions, self.num_heads, self.head_size)
            heads, skip = controller.attention_inputs(layer, heads, skip)
            return (heads.reshape(rows, positions, -1), skip, *values[2:]), kwargs

        return hook


def _mlp_hook(controller: NodeController, layer: int) -> Callable:
    def hook(
        module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]
    ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        names = ("hidden_states", "input_tensor")
        values = list(args) + [kwargs.pop(k) for k in names if k in kwargs]
        mlp, residual = controller.mlp_inputs(layer, values[0], values[1])
        return (mlp, residual, *values[2:]), kwargs

    return hook


def _embedding_hook(controller: NodeController, layer: int) -> Callable:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):  # older layers return (hidden_states, ...)
            return (controller.embedding_node(layer, output[0]), *output[1:])
        return controller.embedding_node(layer, output)

    return hook


class InlineResidualGraph(ModelGraph):
    """Blocks whose residual add around attention is inline code (see module docstring).

    Subclasses set the modules in ``__init__`` and name each block's parts in
    :meth:`block_parts`. Hooks sit on each distinct block module once and count block
    calls in a forward pass, so a block applied several times (ALBERT) gives one node
    set per application.
    """

    pre_layer_norm: bool = False
    embedding_output: Optional[nn.Module]  # None: h^0 is the word embedding itself

    def block_parts(
        self, block: nn.Module
    ) -> Tuple[nn.Module, nn.Module, nn.Module, Optional[nn.Module]]:
        """(attention output projection, consumer of the post-attention sum, MLP, and
        for post-LN blocks the norm consuming ``MLP + residual``)."""
        raise NotImplementedError

    def register_hooks(self, controller: NodeController) -> List[RemovableHandle]:
        state: Dict[str, Any] = {"layer": 0}

        def word_embeddings(module: nn.Module, args: Any, output: Tensor) -> Tensor:
            output = controller.word_embeddings(output)
            if self.embedding_output is None:
                state["layer"] = 0
                output = controller.embedding_node(0, output)
            return output

        def embedding_output(module: nn.Module, args: Any, output: Tensor) -> Tensor:
            state["layer"] = 0
            return controller.embedding_node(0, output)

        def block_input(module: nn.Module, args: Tuple, kwargs: Dict) -> None:
            state["layer"] += 1
            state["skip"] = args[0] if args else kwargs["hidden_states"]

        def projection_input(module: nn.Module, args: Tuple) -> Tuple:
            contexts = args[0]
            rows, positions, _ = contexts.shape
            heads = contexts.view(rows, positions, self.num_heads, self.head_size)
            heads, state["skip"] = controller.attention_inputs(
                state["layer"], heads, state["skip"]
            )
            return (heads.reshape(rows, positions, -1), *args[1:])

        def projection_output(module: nn.Module, args: Any, output: Tensor) -> None:
            state["attention"] = output

        def sum_input(module: nn.Module, args: Tuple) -> Tuple:
            state["sum"] = state["attention"] + state["skip"]
            return (state["sum"], *args[1:])

        def mlp_output(module: nn.Module, args: Any, output: Tensor) -> None:
            state["mlp"] = output

        def consumer_output(module: nn.Module, args: Any, output: Tensor) -> None:
            state["residual"] = output  # post-LN: the residual around the MLP

        def mlp_sum_input(module: nn.Module, args: Tuple) -> Tuple:
            mlp, residual = controller.mlp_inputs(
                state["layer"], state["mlp"], state["residual"]
            )
            return (mlp + residual, *args[1:])

        def block_output(module: nn.Module, args: Any, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            if self.pre_layer_norm:
                mlp, residual = state["mlp"], state["sum"]
                if self.split_mlp:
                    mlp, residual = controller.mlp_inputs(state["layer"], mlp, residual)
                hidden = residual + mlp
            hidden = controller.embedding_node(state["layer"], hidden)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        handles = [self.word_embeddings.register_forward_hook(word_embeddings)]
        if self.embedding_output is not None:
            handles.append(
                self.embedding_output.register_forward_hook(embedding_output)
            )
        for block in _distinct(self.layers):
            projection, consumer, mlp, mlp_sum = self.block_parts(block)
            handles += [
                block.register_forward_pre_hook(block_input, with_kwargs=True),
                projection.register_forward_pre_hook(projection_input),
                projection.register_forward_hook(projection_output),
                consumer.register_forward_pre_hook(sum_input),
                block.register_forward_hook(block_output),
            ]
            if self.pre_layer_norm or self.split_mlp:
                handles.append(mlp.register_forward_hook(mlp_output))
            if self.split_mlp and not self.pre_layer_norm:
                handles += [
                    consumer.register_forward_hook(consumer_output),
                    mlp_sum.register_forward_pre_hook(mlp_sum_input),
                ]
        return handles


def _distinct(modules: List[nn.Module]) -> List[nn.Module]:
    seen: Dict[int, nn.Module] = {}
    for module in modules:
        seen.setdefault(id(module), module)
    return list(seen.values())


class DistilBertGraph(InlineResidualGraph):
    family = "distilbert"

    def __init__(self, model: nn.Module) -> None:
        base, config = model.base_model, model.config
        self.model = model
        self.word_embeddings = base.embeddings.word_embeddings
        self.embedding_output = base.embeddings
        self.layers = list(base.transformer.layer)
        self.self_attentions = [block.attention for block in self.layers]
        self.num_heads = config.n_heads
        self.head_size = config.dim // config.n_heads

    def block_parts(self, block: nn.Module) -> Tuple[nn.Module, ...]:
        return (
            block.attention.out_lin,
            block.sa_layer_norm,
            block.ffn,
            block.output_layer_norm,
        )


class AlbertGraph(InlineResidualGraph):
    family = "albert"

    def __init__(self, model: nn.Module) -> None:
        base, config = model.base_model, model.config
        self.model = model
        self.word_embeddings = base.embeddings.word_embeddings
        self.embedding_output = base.encoder.embedding_hidden_mapping_in
        groups = base.encoder.albert_layer_groups
        # ALBERT applies layer groups num_hidden_layers times; each application is a
        # layer.
        self.layers = [
            layer
            for i in range(config.num_hidden_layers)
            for layer in groups[
                i * config.num_hidden_groups // config.num_hidden_layers
            ].albert_layers
        ]
        self.self_attentions = [layer.attention for layer in self.layers]
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads

    def block_parts(self, block: nn.Module) -> Tuple[nn.Module, ...]:
        return (
            block.attention.dense,
            block.attention.LayerNorm,
            block.ffn_output,
            block.full_layer_layer_norm,
        )


class GPT2Graph(InlineResidualGraph):
    family = "gpt2"
    is_causal = True
    pre_layer_norm = True

    def __init__(self, model: nn.Module) -> None:
        base, config = model.base_model, model.config
        self.model = model
        self.word_embeddings = base.wte
        self.embedding_output = base.drop  # wte + wpe, after embedding dropout
        self.layers = list(base.h)
        self.self_attentions = [block.attn for block in self.layers]
        self.num_heads = config.n_head
        self.head_size = config.n_embd // config.n_head

    def block_parts(self, block: nn.Module) -> Tuple[Optional[nn.Module], ...]:
        return block.attn.c_proj, block.ln_2, block.mlp, None


class LlamaGraph(InlineResidualGraph):
    """Llama, Mistral, Qwen2: RMSNorm, rotary positions, grouped-query attention.

    Head contexts are per query head (the input of ``o_proj``), so a route names one of
    the ``num_attention_heads`` query heads even where key/value heads are shared.
    """

    family = "llama"
    is_causal = True
    pre_layer_norm = True

    def __init__(self, model: nn.Module) -> None:
        base, config = model.base_model, model.config
        self.model = model
        self.word_embeddings = base.embed_tokens
        self.embedding_output = None  # rotary positions: h^0 is the token embedding
        self.layers = list(base.layers)
        self.self_attentions = [block.self_attn for block in self.layers]
        self.num_heads = config.num_attention_heads
        self.head_size = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )

    def block_parts(self, block: nn.Module) -> Tuple[Optional[nn.Module], ...]:
        return block.self_attn.o_proj, block.post_attention_layernorm, block.mlp, None


class BertGraph(PostLNEncoderGraph):
    family = "bert"


class RobertaGraph(PostLNEncoderGraph):
    family = "roberta"


class ElectraGraph(PostLNEncoderGraph):
    family = "electra"


ADAPTERS: Dict[str, Type[ModelGraph]] = {
    "bert": BertGraph,
    "roberta": RobertaGraph,
    "electra": ElectraGraph,
    "distilbert": DistilBertGraph,
    "albert": AlbertGraph,
    "gpt2": GPT2Graph,
    "llama": LlamaGraph,
    "mistral": LlamaGraph,
    "qwen2": LlamaGraph,
}


def model_graph(model: nn.Module) -> ModelGraph:
    """Return the graph adapter for ``model``, detected from
    ``model.config.model_type``.

    Raises:
        UnsupportedModelError: when the architecture is not supported; the message lists
            the supported families.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = ADAPTERS.get(model_type)  # type: ignore[arg-type]
    if adapter is None:
        raise UnsupportedModelError(
            f"model: unsupported architecture {model_type or type(model).__name__!r}. "
            f"Supported model_type values: {', '.join(sorted(ADAPTERS))} (any head: "
            "masked or causal LM, sequence classification or the bare model)."
        )
    return adapter(model)
