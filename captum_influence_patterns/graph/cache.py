"""The graph of a model, built once per model and rebuilt when what it reads
changes."""

from __future__ import annotations

import copy
import threading
import weakref
from typing import Any, Dict, Optional, Tuple

from torch import nn

from .families import MODEL_FAMILIES, UnsupportedModelError
from .layouts import ModelGraph, layout


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
        ModelGraph: The graph, with hooks for :func:`~.layouts.restrict_paths`.

    Raises:
        UnsupportedModelError: when the architecture is not supported; the message lists
            the supported families.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    family = MODEL_FAMILIES.get(model_type)  # type: ignore[arg-type]
    if family is None:
        raise UnsupportedModelError(
            f"model: unsupported architecture {model_type or type(model).__name__!r}. "
            f"Supported model_type values: {', '.join(sorted(MODEL_FAMILIES))} (any head: "
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
            graph = layout(family)(model, family, split_mlp=split_mlp)
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
