"""Analysis mode: the model's settings for the length of an analysis, and back."""

from __future__ import annotations

import itertools
import threading
import warnings
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Set, Tuple

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .hooks import LIBRARY, Hook, hook_package, register, remove


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
            remove(guards)
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

    return register(Hook(module, guard, pre=True) for module in model.modules())


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


def _remove_library_hooks(hooks: List[Tuple[nn.Module, Dict[int, Any], set]]) -> None:
    """Remove hooks of this package added since :func:`_hook_dicts` (left behind by
    an interrupted pass); hooks registered by anyone else stay."""
    for module, hook_dict, saved in hooks:
        for key in set(hook_dict) - saved:
            if hook_package(hook_dict[key]) == LIBRARY:
                del hook_dict[key]
                for flags in _HOOK_FLAGS:
                    getattr(module, flags, {}).pop(key, None)
