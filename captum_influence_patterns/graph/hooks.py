"""Forward hooks: whose they are."""

from __future__ import annotations

from typing import Any, Dict, List

from torch import nn

#: The top-level package of this library.
LIBRARY = __name__.split(".")[0]


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
