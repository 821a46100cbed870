"""Forward hooks: the one place that registers and removes them, and whose they are.

Every part of the library that hooks the model (the graph's layouts, the row-wise
recorder, the route finders, the checks of a user's hooks) describes its hooks as
:class:`Hook` values and places them with :func:`hooks_in_place` (or :func:`register`,
whose handles the caller removes).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List

from torch import nn
from torch.utils.hooks import RemovableHandle

#: The top-level package of this library.
LIBRARY = __name__.split(".")[0]


@dataclass(frozen=True)
class Hook:
    """One forward hook: ``function`` on ``module``, after its forward, or before it
    with ``pre`` (a pre-hook sees, and may replace, the inputs).

    Attributes:
        module (nn.Module): The hooked module.
        function (Callable): The hook, with PyTorch's signature for its kind.
        pre (bool): A forward pre-hook. Default: False
        with_kwargs (bool): The hook also receives (and a pre-hook may return) the
            keyword arguments. Default: False
        prepend (bool): Run before the hooks already there (a user's). Default: False
    """

    module: nn.Module
    function: Callable[..., Any]
    pre: bool = False
    with_kwargs: bool = False
    prepend: bool = False


def register(hooks: Iterable[Hook]) -> List[RemovableHandle]:
    """Place ``hooks`` in order and return their handles; where one fails, those
    placed already are removed before the error goes on."""
    handles: List[RemovableHandle] = []
    try:
        for hook in hooks:
            place = (
                hook.module.register_forward_pre_hook
                if hook.pre
                else hook.module.register_forward_hook
            )
            handles.append(
                place(hook.function, with_kwargs=hook.with_kwargs, prepend=hook.prepend)
            )
    except BaseException:
        remove(handles)
        raise
    return handles


def remove(handles: Iterable[RemovableHandle]) -> None:
    """Remove the hooks behind ``handles``."""
    for handle in handles:
        handle.remove()


@contextmanager
def hooks_in_place(hooks: Iterable[Hook]) -> Iterator[None]:
    """``hooks`` on their modules inside the block, removed on exit (also when an
    exception escapes)."""
    handles = register(hooks)
    try:
        yield
    finally:
        remove(handles)


def hook_package(hook: Any) -> str:
    """The top-level package whose code a hook is."""
    return (getattr(hook, "__module__", None) or "").split(".")[0]


def distinct(modules: List[nn.Module]) -> List[nn.Module]:
    """``modules`` once each, in order: a module shared across layers (ALBERT) is
    hooked once."""
    seen: Dict[int, nn.Module] = {}
    for module in modules:
        seen.setdefault(id(module), module)
    return list(seen.values())
