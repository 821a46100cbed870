"""Model graph adapters: where the nodes of METHOD.md section 2 live in a Hugging Face model.

An adapter locates, for one architecture family, the word-embedding module (where inputs are
interpolated), the module whose output is the embedding node ``h^0``, the layers whose outputs
are ``h^1..h^L``, and the submodule of each layer whose inputs are the head contexts and the
skip. It also knows how to install hooks that hand these tensors to a :class:`NodeController`
(see :mod:`.path_restriction`), so the search never needs to know the family.

Post-LayerNorm encoders (BERT, RoBERTa, ELECTRA) share :class:`PostLNEncoderGraph`. A pre-LN
decoder (GPT-2, Llama) would subclass :class:`ModelGraph` and override :meth:`register_hooks`,
since its skip is the residual stream itself rather than an argument of a submodule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Tuple, Type

from torch import nn
from torch.utils.hooks import RemovableHandle

if TYPE_CHECKING:  # pragma: no cover
    from .path_restriction import NodeController


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
        attention_outputs (list of nn.Module): Per layer, the submodule called with
            (head contexts, skip).
        num_heads (int): Attention heads per layer.
        head_size (int): Size of one head's context vector.
    """

    family: str = ""
    model: nn.Module
    word_embeddings: nn.Module
    embedding_output: nn.Module
    layers: List[nn.Module]
    attention_outputs: List[nn.Module]
    num_heads: int
    head_size: int

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def vocab_size(self) -> int:
        return self.word_embeddings.num_embeddings

    def register_hooks(self, controller: "NodeController") -> List[RemovableHandle]:
        """Install hooks routing every node through ``controller``; return handles."""
        raise NotImplementedError


class PostLNEncoderGraph(ModelGraph):
    """BERT-style post-LayerNorm encoders (METHOD.md section 2)."""

    def __init__(self, model: nn.Module) -> None:
        base = model.base_model
        config = model.config
        self.model = model
        self.word_embeddings = base.embeddings.word_embeddings
        # ELECTRA may project small embeddings up to the hidden size: h^0 is the projection.
        self.embedding_output = getattr(base, "embeddings_project", base.embeddings)
        self.layers = list(base.encoder.layer)
        self.attention_outputs = [layer.attention.output for layer in self.layers]
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads

    def register_hooks(self, controller: "NodeController") -> List[RemovableHandle]:
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
            handles.append(layer.register_forward_hook(_embedding_hook(controller, index)))
        return handles

    def _attention_hook(self, controller: "NodeController", layer: int) -> Callable:
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


def _embedding_hook(controller: "NodeController", layer: int) -> Callable:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):  # older layers return (hidden_states, ...)
            return (controller.embedding_node(layer, output[0]), *output[1:])
        return controller.embedding_node(layer, output)

    return hook


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
}


def model_graph(model: nn.Module) -> ModelGraph:
    """Return the graph adapter for ``model``, detected from ``model.config.model_type``.

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
            "masked LM, sequence classification or the bare encoder)."
        )
    return adapter(model)

