"""A user's own hooks on the model: found, and computed through or refused.

The hooks that replace a module's input or a block's output run before the user's
hooks there, and :func:`check_hooks_kept` refuses a hook that a recomputed sum would
bypass.
"""

from __future__ import annotations

from typing import Any, Callable, List

import torch
from torch import Tensor, nn

from .controller import NodeController
from .hooks import LIBRARY, Hook, distinct, hook_package, hooks_in_place
from .layouts import ModelGraph, restrict_paths


#: Packages whose hooks only record (transformers' output capturing) or are this
#: library's own: they change nothing a schedule computes.
_QUIET_HOOK_PACKAGES = (LIBRARY, "transformers")


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
        if any(hook_package(h) not in _QUIET_HOOK_PACKAGES for h in hooks.values())
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
            hook_package(h) not in _QUIET_HOOK_PACKAGES
            for h in getattr(module, kind).values()
        )
    ]


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
    recorded = [Hook(layer, plain.layer_output) for layer in distinct(graph.layers)]
    with torch.no_grad(), hooks_in_place(recorded):
        run()
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
