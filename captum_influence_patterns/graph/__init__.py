"""The influence graph of docs/method.md, section 2, located in a Hugging Face model.

- :mod:`.families`: where each architecture keeps its nodes (:class:`~.families.Family`)
  and the table of supported families;
- :mod:`.controller`: what a pass does at each node
  (:class:`~.controller.NodeController`);
- :mod:`.layouts`: the graph of one model and the hooks that route its nodes through a
  controller;
- :mod:`.cache`: :func:`~.cache.model_graph`, the graph of a model, built once;
- :mod:`.session`: :func:`~.session.analysis_mode`, the model's settings for an
  analysis;
- :mod:`.user_hooks`: a user's own hooks, computed through or refused;
- :mod:`.hooks`: the one place that places and removes forward hooks;
- :mod:`.gating`: the controllers of the gated passes (docs/method.md, section 4).
"""

from .cache import model_graph
from .controller import NodeController, StopForward
from .families import (
    MODEL_FAMILIES,
    EncoderSublayers,
    Family,
    InlineBlock,
    UnsupportedModelError,
    register_family,
)
from .gating import GatedPass, Gates, NodeKey, gate, tangent_of, with_tangent
from .layouts import ModelGraph, restrict_paths
from .session import REDUCED_PRECISION, analysis_mode
from .user_hooks import check_hooks_kept, foreign_hooks

__all__ = [
    "MODEL_FAMILIES",
    "REDUCED_PRECISION",
    "EncoderSublayers",
    "Family",
    "GatedPass",
    "Gates",
    "InlineBlock",
    "ModelGraph",
    "NodeController",
    "NodeKey",
    "StopForward",
    "UnsupportedModelError",
    "analysis_mode",
    "check_hooks_kept",
    "foreign_hooks",
    "gate",
    "model_graph",
    "register_family",
    "restrict_paths",
    "tangent_of",
    "with_tangent",
]
