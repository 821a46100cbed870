"""Model graph adapters: where the nodes of docs/method.md, section 2 live in a Hugging
Face model, the :class:`NodeController` contract, and :func:`analysis_mode`.

An adapter locates, for one architecture family, the word-embedding module (where inputs
are interpolated), the module whose output is the embedding node ``h^0``, the layers
whose outputs are ``h^1..h^L``, and the submodule of each layer whose inputs are the
head contexts and the skip. It also knows how to install hooks that hand these tensors
to a :class:`NodeController` (the gated passes of :mod:`.gating`), so the search never
needs to know the family.

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

A user's own hooks on the model (:func:`foreign_hooks`) stay and are computed through:
the hooks that replace a module's input or a block's output run before the user's
hooks there, and :func:`check_hooks_kept` refuses a hook that a recomputed sum would
bypass.
"""

from __future__ import annotations

import copy
import itertools
import threading
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Literal,
    Optional,
    Set,
    Tuple,
    Type,
    Union,
)

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..registry import check_free


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
#: Models under analysis now (the lock's holder entered them): ``id(model)``.
_ACTIVE: Set[int] = set()


@contextmanager
def analysis_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, eager attention and float32 or wider weights for the block; the
    user's settings come back after.

    Forward-mode autodiff cannot run through fused SDPA attention on CPU, so attention
    runs eagerly; eval mode switches dropout off so that every pass sees the same
    function. Forward-mode tangents overflow in float16 (already at ``h^0``), so
    float16/bfloat16 parameters and buffers are cast to float32 (with a warning), and
    every part of an analysis (search, scoring, conductance, attention, ablation) sees
    the same float32 model. Every submodule's training flag, every parameter's
    ``requires_grad`` and dtype and the attention implementation are restored on exit,
    also when an exception escapes (casting up and back down is exact, and ``.data``
    keeps every tensor object the same); hooks this library left on the model are
    removed, and no other hook.

    The block holds a process-wide re-entrant lock: concurrent analyses (two threads
    calling ``attribute`` on one model, or on two models) run one after the other,
    because hooks sit on shared modules and forward-mode AD levels are process-wide.
    Any other thread that runs the model (or one of its modules) meanwhile gets a
    RuntimeError instead of outputs bent by the analysis' hooks.

    Entered again for the same model inside the block (a call inside ``compare``), it
    does nothing: the outer block already holds the settings and restores them.
    """
    with _ANALYSIS_LOCK:
        if id(model) in _ACTIVE:
            yield
            return
        training = [(module, module.training) for module in model.modules()]
        requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        hooks = _hook_dicts(model)
        attention = getattr(model.config, "_attn_implementation", None)
        switch = attention not in (None, "eager") and hasattr(
            model, "set_attn_implementation"
        )
        guards = _guard_other_threads(model)
        reduced = _reduced_precision_tensors(model)
        _ACTIVE.add(id(model))
        try:
            if switch:
                model.set_attn_implementation("eager")
            model.eval()
            for tensor, _ in reduced:
                tensor.data = tensor.data.float()
            yield
        finally:
            _ACTIVE.discard(id(model))
            for tensor, dtype in reduced:
                tensor.data = tensor.data.to(dtype)
            for guard in guards:
                guard.remove()
            for module, flag in training:
                module.training = flag
            for parameter, flag in requires_grad:
                parameter.requires_grad_(flag)
            _remove_library_hooks(hooks)
            if switch:
                model.set_attn_implementation(attention)


REDUCED_PRECISION = (torch.float16, torch.bfloat16)


def _reduced_precision_tensors(model: nn.Module) -> List[Tuple[Tensor, torch.dtype]]:
    """The float16/bfloat16 parameters and buffers with their dtypes, after a warning
    naming the dtype when there are any."""
    reduced = [
        (tensor, tensor.dtype)
        for tensor in itertools.chain(model.parameters(), model.buffers())
        if tensor.dtype in REDUCED_PRECISION
    ]
    if reduced:
        dtype = reduced[0][1]
        warnings.warn(
            f"model: {dtype} weights; forward-mode tangents overflow in {dtype}, "
            "so this call computes in float32 (weights cast for the call and "
            "cast back exactly): influences are the float32 model's, whose "
            f"outputs differ from the {dtype} model's by its rounding",
            UserWarning,
            stacklevel=5,  # the caller of attribute, compare, ...
        )
    return reduced


def _guard_other_threads(model: nn.Module) -> List[RemovableHandle]:
    """Pre-hooks on every module (before any hook of the analysis) refusing calls
    from threads other than the one analysing, whose passes the hooks would bend."""
    owner = threading.get_ident()

    def guard(module: nn.Module, args: Any) -> None:
        if threading.get_ident() != owner:
            raise RuntimeError(
                f"model: {type(module).__name__} was called from another thread while "
                "an influence-patterns analysis holds the model (its hooks, eval "
                "mode and eager attention are in place until attribute returns); "
                "call the model after it returns, or give this thread its own copy "
                "(copy.deepcopy(model))"
            )

    return [module.register_forward_pre_hook(guard) for module in model.modules()]


_HOOK_KINDS = ("_forward_hooks", "_forward_pre_hooks")
_HOOK_FLAGS = (
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)


def _hook_dicts(model: nn.Module) -> List[Tuple[nn.Module, Dict[int, Any], set]]:
    """Every forward-hook dictionary of ``model``, with the handle ids it holds now."""
    return [
        (module, getattr(module, kind), set(getattr(module, kind)))
        for module in model.modules()
        for kind in _HOOK_KINDS
    ]


def _hook_package(hook: Any) -> str:
    """The top-level package whose code a hook is."""
    return (getattr(hook, "__module__", None) or "").split(".")[0]


def _remove_library_hooks(hooks: List[Tuple[nn.Module, Dict[int, Any], set]]) -> None:
    """Remove hooks of this package added since :func:`_hook_dicts` (left behind by
    an interrupted pass); hooks registered by anyone else stay."""
    package = __name__.split(".")[0]
    for module, hook_dict, saved in hooks:
        for key in set(hook_dict) - saved:
            if _hook_package(hook_dict[key]) == package:
                del hook_dict[key]
                for flags in _HOOK_FLAGS:
                    getattr(module, flags, {}).pop(key, None)


#: Packages whose hooks only record (transformers' output capturing) or are this
#: library's own: they change nothing a schedule computes.
_QUIET_HOOK_PACKAGES = (__name__.split(".")[0], "transformers")


def foreign_hooks(model: nn.Module) -> List[str]:
    """The modules of ``model`` carrying forward hooks or forward pre-hooks that
    neither this library nor transformers' output capturing added (a user's
    steering, ablation or scaling), as ``"name (forward hook)"``; global module hooks
    (``torch.nn.modules.module.register_module_forward_hook``) come first.

    Such hooks change what the model computes, so every schedule must either run
    them where the model does or refuse (docs/troubleshooting.md).
    """
    from torch.nn.modules import module as torch_module

    found = [
        f"every module ({label}, registered globally)"
        for hooks, label in (
            (torch_module._global_forward_pre_hooks, "forward pre-hook"),
            (torch_module._global_forward_hooks, "forward hook"),
        )
        if any(_hook_package(h) not in _QUIET_HOOK_PACKAGES for h in hooks.values())
    ]
    for name, module in model.named_modules():
        for label in _foreign_kinds(module):
            found.append(f"{name or type(module).__name__} ({label})")
    return found


def _foreign_kinds(module: nn.Module) -> List[str]:
    """The kinds of hooks on ``module`` that neither this library nor transformers
    added."""
    return [
        label
        for kind, label in (
            ("_forward_pre_hooks", "forward pre-hook"),
            ("_forward_hooks", "forward hook"),
        )
        if any(
            _hook_package(h) not in _QUIET_HOOK_PACKAGES
            for h in getattr(module, kind).values()
        )
    ]


class UnsupportedModelError(ValueError):
    """Raised for a model whose architecture has no adapter."""


@dataclass(frozen=True)
class EncoderSublayers:
    """Named slots of a BERT-style post-LN layer, whose attention output and
    feed-forward output are submodules called with (branch, residual): layout
    :class:`PostLNEncoderGraph`. Paths are relative to one layer.

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

    @property
    def layout(self) -> Type[ModelGraph]:
        return PostLNEncoderGraph


@dataclass(frozen=True)
class InlineBlock:
    """Named slots of a block whose residual adds are inline code: layout
    :class:`InlineResidualGraph`. Paths are relative to one block.

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

    norm: Literal["post", "pre"]
    output_projection: str
    attention_norm: str
    mlp: str
    output_norm: Optional[str] = None
    query: Optional[str] = None
    key: Optional[str] = None
    value: Optional[str] = None
    qkv: Optional[str] = None
    input_norm: Optional[str] = None
    mlp_function: Optional[str] = None

    def __post_init__(self) -> None:
        if self.norm not in ("post", "pre"):
            raise ValueError(f"norm: 'post' or 'pre', got {self.norm!r}")
        if (self.qkv is None) == (self.query is None):
            raise ValueError("qkv: name either a fused qkv or query, key and value")
        if (self.norm == "post") != (self.output_norm is not None):
            raise ValueError("output_norm: needed for norm='post' only")
        if (self.norm == "pre") != (self.input_norm is not None):
            raise ValueError("input_norm: needed for norm='pre' only")

    @property
    def layout(self) -> Type[ModelGraph]:
        return InlineResidualGraph


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


class ModelGraph:
    """The node layout of one model, located from its :class:`Family`.

    Build one with :func:`model_graph`; a layout subclass installs the hooks.

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
            :meth:`NodeController.mlp_inputs` (the MLP branch and the residual around
            it become nodes). Off by default, the paper's graph.
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

    def register_hooks(self, controller: NodeController) -> List[RemovableHandle]:
        """Install hooks routing every node through ``controller``; return handles."""
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

    Hooks two slots of :class:`EncoderSublayers`: ``attention_output``
    (``BertSelfOutput``), called with (head contexts, skip), and ``output``
    (``BertOutput``), called with (intermediate activation, attention sublayer output)
    and hooked only with ``split_mlp``. Pre-hooks see and replace both arguments.
    """

    def register_hooks(self, controller: NodeController) -> List[RemovableHandle]:
        handles = [
            self.interpolated.register_forward_hook(
                lambda module, args, output: controller.word_embeddings(output)
            ),
            self.embedding_output.register_forward_hook(_embedding_hook(controller, 0)),
        ]
        for index, layer in enumerate(self.layers, start=1):
            attention_output = self.part(layer, "attention_output")
            ffn_output = self.part(layer, "output")
            handles.append(
                attention_output.register_forward_pre_hook(
                    self._attention_hook(controller, index), with_kwargs=True
                )
            )
            handles.append(
                layer.register_forward_hook(_embedding_hook(controller, index))
            )
            if self.split_mlp:
                handles.append(
                    ffn_output.register_forward_pre_hook(
                        _mlp_hook(controller, index), with_kwargs=True
                    )
                )
        return handles

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

    Hooks four slots of :class:`InlineBlock`: ``output_projection``,
    ``attention_norm`` (the consumer of the post-attention sum), ``mlp`` and, for
    post-LN blocks, ``output_norm`` (the norm consuming ``MLP + residual``).
    Hooks sit on each distinct block module once and count block calls in a forward
    pass, so a block applied several times (ALBERT) gives one node set per application.
    """

    def register_hooks(self, controller: NodeController) -> List[RemovableHandle]:
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

        handles = [self.interpolated.register_forward_hook(word_embeddings)]
        if self.embedding_output is not None:
            handles.append(
                self.embedding_output.register_forward_hook(embedding_output)
            )
        for block in _distinct(self.layers):
            handles += _BlockHooks(self, controller, count).register(block)
        return handles


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

    def register(self, block: nn.Module) -> List[RemovableHandle]:
        projection, consumer, mlp, mlp_sum = (
            self.graph.part(block, slot)
            for slot in ("output_projection", "attention_norm", "mlp", "output_norm")
        )
        pre_layer_norm, split_mlp = self.graph.pre_layer_norm, self.graph.split_mlp
        # Hooks that replace a module's input or a pre-LN block's output run before
        # a user's hooks there (prepend), so that those act on the gated tensors as
        # they act on the model's own.
        handles = [
            block.register_forward_pre_hook(self.block_input, with_kwargs=True),
            projection.register_forward_pre_hook(self.projection_input),
            projection.register_forward_hook(self.projection_output),
            consumer.register_forward_pre_hook(self.sum_input, prepend=True),
            block.register_forward_hook(self.block_output),
        ]
        if pre_layer_norm:
            handles.append(
                block.register_forward_hook(self.rebuilt_output, prepend=True)
            )
        if pre_layer_norm or split_mlp:
            handles.append(mlp.register_forward_hook(self.mlp_output))
        if split_mlp and not pre_layer_norm:
            handles += [
                consumer.register_forward_hook(self.consumer_output),
                mlp_sum.register_forward_pre_hook(self.mlp_sum_input, prepend=True),
            ]
        return handles

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


def _distinct(modules: List[nn.Module]) -> List[nn.Module]:
    seen: Dict[int, nn.Module] = {}
    for module in modules:
        seen.setdefault(id(module), module)
    return list(seen.values())


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
ADAPTERS: Dict[str, Family] = {}


def register_family(spec: Family, overwrite: bool = False) -> Family:
    """Make the architecture ``spec.name`` (a ``config.model_type``) analysable.

    A new family is one declarative :class:`Family` whose ``block`` names the parts
    of a layer; :func:`model_graph` hooks them and the row-wise schedule of
    :mod:`.rowwise` linearises them.

    Args:
        spec (Family): The family's description.
        overwrite (bool, optional): Replace a family registered under the same name.
            Default: False

    Returns:
        Family: ``spec``.

    Raises:
        ValueError: when ``spec.name`` is registered already and ``overwrite`` is
            False.
    """
    if not isinstance(spec, Family):
        raise TypeError(f"spec: expected a Family, got {type(spec).__name__}")
    check_free(
        ADAPTERS, spec.name, argument="spec", what="a family named",
        overwrite=overwrite,
    )
    ADAPTERS[spec.name] = spec
    return spec


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


def model_graph(model: nn.Module, split_mlp: bool = False) -> ModelGraph:
    """Return the graph of ``model``, its family detected from
    ``model.config.model_type``.

    The graph is built once per model (and ``split_mlp``) and rebuilt only when what
    it reads changes: the family registered for ``config.model_type``, the config's
    head and layer counts and sizes, or the model's modules (a layer or attention
    module replaced, added or removed). Each call returns its own copy, so setting an
    attribute of one caller's graph changes no other's. The cache holds no reference
    to the model: it goes when the model does.

    Args:
        model (nn.Module): A Hugging Face model of a supported family (any head).
        split_mlp (bool, optional): Make every layer's feed-forward sublayer and the
            residual around it nodes of their own (docs/method.md, section 6).
            Default: False

    Returns:
        ModelGraph: The graph, with hooks for :func:`restrict_paths`.

    Raises:
        UnsupportedModelError: when the architecture is not supported; the message lists
            the supported families.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    family = ADAPTERS.get(model_type)  # type: ignore[arg-type]
    if family is None:
        raise UnsupportedModelError(
            f"model: unsupported architecture {model_type or type(model).__name__!r}. "
            f"Supported model_type values: {', '.join(sorted(ADAPTERS))} (any head: "
            "masked or causal LM, sequence classification or the bare model)."
        )
    # The modules' ids identify the structure: the modules a built graph holds stay
    # alive with it, so a replaced one always has a new id.
    read = (
        family,
        tuple(getattr(config, name, None) for name in _CONFIG_READ),
        tuple(map(id, model.modules())),
    )
    with _GRAPHS_LOCK:
        built = _GRAPHS.setdefault(model, {})
        if split_mlp not in built or built[split_mlp][0] != read:
            graph = family.block.layout(model, family, split_mlp=split_mlp)
            built[split_mlp] = (read, _copy(graph, None))
        return _copy(built[split_mlp][1], model)


#: The config attributes a graph reads.
_CONFIG_READ = (
    "num_attention_heads",
    "hidden_size",
    "head_dim",
    "num_hidden_layers",
    "num_hidden_groups",
)
#: Per model, per ``split_mlp``: what the graph was built from and the graph (its
#: ``model`` left out, so that the cache does not keep the model alive).
_GRAPHS: weakref.WeakKeyDictionary[nn.Module, Dict[bool, Tuple[Any, ModelGraph]]] = (
    weakref.WeakKeyDictionary()
)
_GRAPHS_LOCK = threading.Lock()


def _copy(graph: ModelGraph, model: Optional[nn.Module]) -> ModelGraph:
    """A copy of ``graph`` on ``model``, with lists of its own."""
    copied = copy.copy(graph)
    copied.model = model  # type: ignore[assignment]
    copied.layers = list(graph.layers)
    copied.self_attentions = list(graph.self_attentions)
    return copied


class _LayerOutputs(NodeController):
    """Records ``h^1 .. h^L`` as the graph's hooks hand them over."""

    def __init__(self) -> None:
        self.hidden: List[Tensor] = []

    def embedding_node(self, layer: int, hidden: Tensor) -> Tensor:
        if layer:
            self.hidden.append(hidden)
        return hidden

    def layer_output(self, module: nn.Module, args: Any, output: Any) -> None:
        self.hidden.append(output[0] if isinstance(output, tuple) else output)


def check_hooks_kept(graph: ModelGraph, run: Callable[[], Any]) -> None:
    """Refuse a model whose own hooks (:func:`foreign_hooks`) the graph's hooks
    would bypass.

    Where the graph recomputes a sum the model adds inline (the inline-residual
    layout), a hook on a module between the attention output projection and that
    sum (the attention module's output, a dropout after the projection) is not part
    of the recomputed tensor. With the graph's hooks passing every node through
    unchanged, ``h^1 .. h^L`` must then be bit-identical to the model's own; ``run``
    runs one forward pass of the QoI. A hook on the word-embedding module is refused
    outright: the interpolation replaces that module's output. Nothing is checked
    without foreign hooks.

    Raises:
        ValueError: naming the hooked modules, when a layer's output differs, or
            the word-embedding module's hook.
    """
    hooked = foreign_hooks(graph.model)
    if not hooked:
        return
    if _foreign_kinds(graph.word_embeddings):
        raise ValueError(
            f"model: a hook on the word-embedding module "
            f"({graph.spec.word_embeddings}) would be replaced by the interpolation "
            "of its output, which is where inputs are interpolated; hook the module "
            "after it (the embedding block, or the first layer's input) instead"
        )
    plain, gated = _LayerOutputs(), _LayerOutputs()
    handles = [
        layer.register_forward_hook(plain.layer_output)
        for layer in _distinct(graph.layers)
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad(), restrict_paths(graph, gated):
        run()
    differ = [
        layer
        for layer, (a, b) in enumerate(zip(plain.hidden, gated.hidden), start=1)
        if not torch.equal(a, b)
    ]
    if differ or len(plain.hidden) != len(gated.hidden):
        raise ValueError(
            f"model: hooks on {', '.join(hooked)} change what the model computes in a "
            f"way the influence graph cannot follow (h^{differ[0] if differ else 1} "
            "differs with the graph's hooks in place): a hook between the attention "
            "output projection and the residual sum is bypassed where the sum is "
            "recomputed; hook the projection, the layer or the MLP instead, or remove "
            "the hook (docs/troubleshooting.md)"
        )
