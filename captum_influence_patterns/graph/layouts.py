"""Hook layouts: where the nodes of docs/method.md, section 2 live in a Hugging Face
model, and the hooks that hand them to a controller.

A graph locates, for one architecture family, the word-embedding module (where inputs
are interpolated), the module whose output is the embedding node ``h^0``, the layers
whose outputs are ``h^1..h^L``, and the submodule of each layer whose inputs are the
head contexts and the skip. It also knows how to install hooks that hand these tensors
to a :class:`~.controller.NodeController` (the gated passes of :mod:`.gating`), so the
search never needs to know the family.

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

A user's own hooks on the model stay and are computed through (:mod:`.user_hooks`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple, Type

import torch
from torch import Tensor, nn

from .controller import NodeController
from .families import EncoderSublayers, Family, UnsupportedModelError
from .hooks import Hook, distinct, hooks_in_place


@contextmanager
def restrict_paths(graph: ModelGraph, controller: NodeController) -> Iterator[None]:
    """Route every node of ``graph`` through ``controller`` inside the block."""
    with hooks_in_place(graph.hooks(controller)):
        yield


class ModelGraph:
    """The node layout of one model, located from its :class:`~.families.Family`.

    Build one with :func:`~.cache.model_graph`; a layout subclass installs the hooks.

    Attributes:
        model (nn.Module): The Hugging Face model (any head).
        family (str): Architecture family name, e.g. ``"bert"``.
        spec (Family): The family's description (named slots of every layer).
        word_embeddings (nn.Module): The word-embedding module (the token table).
        interpolated (nn.Module): Module whose output is interpolated, the ``layer``
            of :class:`~.attribution.InfluencePatterns`: the word embeddings by
            default, or a position-wise module between them and ``h^0`` (the
            embedding block, :meth:`interpolation_layers`).
        embedding_output (nn.Module or None): Module whose output is the embedding node
            ``h^0`` (None: the word embedding's output is ``h^0``).
        layers (list of nn.Module): Modules whose outputs are ``h^1 .. h^L``.
        self_attentions (list of nn.Module): Per layer, the module computing attention
            weights (it returns ``(output, weights)`` under eager attention).
        is_causal (bool): Whether attention is causal (a route never moves backwards).
        pre_layer_norm (bool): Whether the blocks are pre-LayerNorm.
        split_mlp (bool): Also route every node set's feed-forward sublayer through
            :meth:`~.controller.NodeController.mlp_inputs` (the MLP branch and the
            residual around it become nodes). Off by default, the paper's graph.
        num_heads (int): Attention heads per layer.
        head_size (int): Size of one head's context vector.
    """

    def __init__(self, model: nn.Module, family: Family, split_mlp: bool = False):
        base, config = model.base_model, model.config
        self.model = model
        self.family = family.name
        self.is_causal = family.is_causal
        self.pre_layer_norm = family.pre_layer_norm
        self.split_mlp = split_mlp
        self.word_embeddings = base.get_submodule(family.word_embeddings)
        self.interpolated: nn.Module = self.word_embeddings
        self.embedding_output = _first_submodule(base, family.embedding_output)
        layers = base.get_submodule(family.layers)
        if family.layer_groups:
            groups, count = config.num_hidden_groups, config.num_hidden_layers
            layers = [
                layer
                for i in range(count)
                for layer in layers[_albert_group(i, count, groups)].albert_layers
            ]
        self.layers: List[nn.Module] = list(layers)
        self.self_attentions = [
            layer.get_submodule(family.self_attention) for layer in self.layers
        ]
        self.num_heads: int = config.num_attention_heads
        self.head_size: int = getattr(config, "head_dim", None) or (
            config.hidden_size // self.num_heads
        )
        self.spec = family
        self._check_heads()

    def _check_heads(self) -> None:
        """Refuse a config whose head count or size the attention modules do not
        compute with (``config.num_attention_heads`` edited after loading)."""
        for index, (layer, attention) in enumerate(
            zip(self.layers, self.self_attentions), start=1
        ):
            counts = _int_attributes(attention, _HEAD_COUNTS)
            sizes = _int_attributes(attention, _HEAD_SIZES)
            try:
                query = self.part(layer, "query")
            except AttributeError:  # a missing slot is the row-wise check's to find
                query = None
            width = getattr(query, "out_features", None)
            if (
                counts - {self.num_heads}
                or sizes - {self.head_size}
                or width not in (None, self.num_heads * self.head_size)
            ):
                raise ValueError(
                    f"model: config.num_attention_heads is {self.num_heads} (head size "
                    f"{self.head_size}) but layer {index}'s attention "
                    f"({type(attention).__name__}) computes with heads {sorted(counts)} "
                    f"of size {sorted(sizes)} (query width {width}); the config was "
                    "edited after loading (set it back, or load the model again), or "
                    "the family's query slot names another projection"
                )

    @property
    def num_layers(self) -> int:
        """L: node sets, one per layer application (ALBERT applies shared layers)."""
        return len(self.layers)

    @property
    def vocab_size(self) -> int:
        return self.word_embeddings.num_embeddings

    def interpolation_layers(self) -> Dict[str, nn.Module]:
        """The modules whose output can be interpolated, by name in ``model``: the
        word embeddings, the embedding block (``embeddings`` where the model has one)
        and the module whose output is ``h^0``. Each acts position by position
        before the first layer, so a source's tangent stays at its position."""
        base = self.model.base_model
        candidates = [self.word_embeddings, self.embedding_output]
        candidates.append(_first_submodule(base, ("embeddings",)))
        wanted = {id(module) for module in candidates if module is not None}
        return {
            name: module
            for name, module in self.model.named_modules()
            if id(module) in wanted
        }

    def part(self, layer: nn.Module, slot: str) -> Optional[nn.Module]:
        """The submodule of ``layer`` in the named ``slot`` of ``Family.block`` (None
        where the family leaves the slot empty)."""
        path = getattr(self.spec.block, slot)
        return None if path is None else layer.get_submodule(path)

    def hooks(self, controller: NodeController) -> List[Hook]:
        """The hooks routing every node through ``controller`` (placed by
        :func:`restrict_paths`)."""
        raise NotImplementedError

    def _split_heads(self, contexts: Tensor) -> Tensor:
        rows, positions, width = contexts.shape
        if width != self.num_heads * self.head_size:
            slot = (
                "attention_output" if isinstance(self.spec.block, EncoderSublayers)
                else "output_projection"
            )
            raise UnsupportedModelError(
                f"adapter: the module in the {slot} slot of family {self.family!r} "
                f"receives inputs of width {width}, not the {self.num_heads} heads x "
                f"{self.head_size} of the head contexts; name the module that takes "
                "the head contexts and register_family(..., overwrite=True)"
            )
        return contexts.view(rows, positions, self.num_heads, self.head_size)


#: Attention modules' own names for their head count and head size.
_HEAD_COUNTS = ("num_attention_heads", "n_heads", "num_heads")
_HEAD_SIZES = ("attention_head_size", "head_dim")


def _int_attributes(module: nn.Module, names: Tuple[str, ...]) -> Set[int]:
    return {
        value
        for value in (getattr(module, name, None) for name in names)
        if isinstance(value, int) and not isinstance(value, bool)
    }


def _albert_group(application: int, layers: int, groups: int) -> int:
    """The layer group serving ALBERT's layer application ``application``, computed
    as transformers does (``AlbertTransformer.forward``)."""
    return int(application / (layers / groups))


def _first_submodule(base: nn.Module, paths: Tuple[str, ...]) -> Optional[nn.Module]:
    for path in paths:
        try:
            return base.get_submodule(path)
        except AttributeError:
            continue
    return None


class PostLNEncoderGraph(ModelGraph):
    """BERT-style post-LayerNorm encoders (docs/method.md, section 2).

    Hooks two slots of :class:`~.families.EncoderSublayers`: ``attention_output``
    (``BertSelfOutput``), called with (head contexts, skip), and ``output``
    (``BertOutput``), called with (intermediate activation, attention sublayer output)
    and hooked only with ``split_mlp``. Pre-hooks see and replace both arguments.
    """

    def hooks(self, controller: NodeController) -> List[Hook]:
        hooks = [
            Hook(
                self.interpolated,
                lambda module, args, output: controller.word_embeddings(output),
            ),
            Hook(self.embedding_output, _embedding_hook(controller, 0)),
        ]
        for index, layer in enumerate(self.layers, start=1):
            hooks += [
                Hook(
                    self.part(layer, "attention_output"),
                    self._attention_hook(controller, index),
                    pre=True,
                    with_kwargs=True,
                ),
                Hook(layer, _embedding_hook(controller, index)),
            ]
            if self.split_mlp:
                hooks.append(
                    Hook(
                        self.part(layer, "output"),
                        _mlp_hook(controller, index),
                        pre=True,
                        with_kwargs=True,
                    )
                )
        return hooks

    def _attention_hook(self, controller: NodeController, layer: int) -> Callable:
        def hook(
            module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]
        ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
            contexts, skip, rest = _two_arguments(module, args, kwargs)
            heads, skip = controller.attention_inputs(
                layer, self._split_heads(contexts), skip
            )
            return (heads.reshape(contexts.shape), skip, *rest), kwargs

        return hook


def _two_arguments(
    module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]
) -> Tuple[Tensor, Tensor, List[Any]]:
    """A BERT submodule's (hidden_states, input_tensor), taken out of ``kwargs``."""
    names = ("hidden_states", "input_tensor")
    values = list(args) + [kwargs.pop(k) for k in names if k in kwargs]
    if len(values) < 2 or not all(isinstance(v, Tensor) for v in values[:2]):
        raise UnsupportedModelError(
            f"adapter: {type(module).__name__}, in the attention_output (or output) "
            f"slot of the family's EncoderSublayers, was called with {len(values)} "
            "argument(s); that slot must name the submodule called with (branch, "
            "residual) (BertSelfOutput, BertOutput): fix the slot and "
            "register_family(..., overwrite=True)"
        )
    return values[0], values[1], values[2:]


def _mlp_hook(controller: NodeController, layer: int) -> Callable:
    def hook(
        module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]
    ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        mlp, residual, rest = _two_arguments(module, args, kwargs)
        mlp, residual = controller.mlp_inputs(layer, mlp, residual)
        return (mlp, residual, *rest), kwargs

    return hook


def _embedding_hook(controller: NodeController, layer: int) -> Callable:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):  # older layers return (hidden_states, ...)
            return (controller.embedding_node(layer, output[0]), *output[1:])
        return controller.embedding_node(layer, output)

    return hook


class InlineResidualGraph(ModelGraph):
    """Blocks whose residual add around attention is inline code (see module docstring).

    Hooks four slots of :class:`~.families.InlineBlock`: ``output_projection``,
    ``attention_norm`` (the consumer of the post-attention sum), ``mlp`` and, for
    post-LN blocks, ``output_norm`` (the norm consuming ``MLP + residual``).
    Hooks sit on each distinct block module once and count block calls in a forward
    pass, so a block applied several times (ALBERT) gives one node set per application.
    """

    def hooks(self, controller: NodeController) -> List[Hook]:
        count = _BlockCount()

        def word_embeddings(module: nn.Module, args: Any, output: Tensor) -> Tensor:
            output = controller.word_embeddings(output)
            if self.embedding_output is None:
                count.calls = 0
                output = controller.embedding_node(0, output)
            return output

        def embedding_output(module: nn.Module, args: Any, output: Tensor) -> Tensor:
            count.calls = 0
            return controller.embedding_node(0, output)

        hooks = [Hook(self.interpolated, word_embeddings)]
        if self.embedding_output is not None:
            hooks.append(Hook(self.embedding_output, embedding_output))
        for block in distinct(self.layers):
            hooks += _BlockHooks(self, controller, count).hooks(block)
        return hooks


class _BlockCount:
    """Block calls so far in one forward pass: the index of the node set being built."""

    calls = 0


class _BlockHooks:
    """The hooks of one inline-residual block and the tensors they hand each other.

    The hooks of one block call run in order (block input, projection, sum, MLP,
    block output), so the fields always belong to the current call.

    Attributes:
        layer (int): The node set of the current call (1 .. L).
        skip (Tensor): The block's input, gated as the skip node.
        attention (Tensor): The attention output projection's output.
        sum (Tensor): ``attention + skip``, fed to the norm that consumed the sum.
        mlp (Tensor): The MLP's output (its chunks' outputs, in order).
        mlp_chunks (list of Tensor): The MLP's outputs so far in this call.
        residual (Tensor): Post-LN: the residual around the MLP (the norm's output).
    """

    layer: int
    skip: Tensor
    attention: Tensor
    sum: Tensor
    mlp: Tensor
    residual: Tensor

    def __init__(
        self, graph: ModelGraph, controller: NodeController, count: _BlockCount
    ) -> None:
        self.graph = graph
        self.controller = controller
        self.count = count

    def hooks(self, block: nn.Module) -> List[Hook]:
        projection, consumer, mlp, mlp_sum = (
            self.graph.part(block, slot)
            for slot in ("output_projection", "attention_norm", "mlp", "output_norm")
        )
        pre_layer_norm, split_mlp = self.graph.pre_layer_norm, self.graph.split_mlp
        # Hooks that replace a module's input or a pre-LN block's output run before
        # a user's hooks there (prepend), so that those act on the gated tensors as
        # they act on the model's own.
        hooks = [
            Hook(block, self.block_input, pre=True, with_kwargs=True),
            Hook(projection, self.projection_input, pre=True),
            Hook(projection, self.projection_output),
            Hook(consumer, self.sum_input, pre=True, prepend=True),
            Hook(block, self.block_output),
        ]
        if pre_layer_norm:
            hooks.append(Hook(block, self.rebuilt_output, prepend=True))
        if pre_layer_norm or split_mlp:
            hooks.append(Hook(mlp, self.mlp_output))
        if split_mlp and not pre_layer_norm:
            hooks += [
                Hook(consumer, self.consumer_output),
                Hook(mlp_sum, self.mlp_sum_input, pre=True, prepend=True),
            ]
        return hooks

    def block_input(self, module: nn.Module, args: Tuple, kwargs: Dict) -> None:
        self.count.calls += 1
        self.layer = self.count.calls
        self.skip = args[0] if args else kwargs["hidden_states"]
        self.mlp_chunks: List[Tensor] = []

    def projection_input(self, module: nn.Module, args: Tuple) -> Tuple:
        contexts = args[0]
        heads, self.skip = self.controller.attention_inputs(
            self.layer, self.graph._split_heads(contexts), self.skip
        )
        return (heads.reshape(contexts.shape), *args[1:])

    def projection_output(self, module: nn.Module, args: Any, output: Tensor) -> None:
        self.attention = output

    def sum_input(self, module: nn.Module, args: Tuple) -> Tuple:
        # Recomputed from the gated skip so the skip branch has a tensor of its own.
        self.sum = self.attention + self.skip
        return (self.sum, *args[1:])

    def mlp_output(self, module: nn.Module, args: Any, output: Tensor) -> None:
        # A chunked feed-forward (ALBERT's chunk_size_feed_forward) calls the MLP
        # once per chunk of positions: the branch is every chunk, in order.
        self.mlp_chunks.append(output)
        chunks = self.mlp_chunks
        self.mlp = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)

    def consumer_output(self, module: nn.Module, args: Any, output: Tensor) -> None:
        self.residual = output

    def mlp_sum_input(self, module: nn.Module, args: Tuple) -> Tuple:
        mlp, residual = self.controller.mlp_inputs(self.layer, self.mlp, self.residual)
        return (mlp + residual, *args[1:])

    def rebuilt_output(self, module: nn.Module, args: Any, output: Any) -> Any:
        """Pre-LN: ``h' + MLP(LN(h'))`` from the gated ``h'``, before any user hook
        on the block sees the output."""
        mlp, residual = self.mlp, self.sum
        if self.graph.split_mlp:
            mlp, residual = self.controller.mlp_inputs(self.layer, mlp, residual)
        return _replace_hidden(output, residual + mlp)

    def block_output(self, module: nn.Module, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        return _replace_hidden(
            output, self.controller.embedding_node(self.layer, hidden)
        )


def _replace_hidden(output: Any, hidden: Tensor) -> Any:
    """A block's output (a tensor or a tuple led by one) with ``hidden`` in place."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def layout(family: Family) -> Type[ModelGraph]:
    """The hook layout of ``family``: its ``block``'s type names it."""
    if isinstance(family.block, EncoderSublayers):
        return PostLNEncoderGraph
    return InlineResidualGraph
