"""The influence graph of docs/method.md, section 2, located in a Hugging Face model.

- :mod:`.layouts`: the graph of one model and the hooks that route its nodes through
  a :class:`~.layouts.NodeController`;
- :mod:`.gating`: the controllers of the gated passes (docs/method.md, section 4).
"""

from .gating import GatedPass, Gates, NodeKey, gate, tangent_of, with_tangent
from .layouts import (
    ADAPTERS,
    REDUCED_PRECISION,
    EncoderSublayers,
    Family,
    InlineBlock,
    ModelGraph,
    NodeController,
    StopForward,
    UnsupportedModelError,
    analysis_mode,
    check_hooks_kept,
    foreign_hooks,
    model_graph,
    register_family,
    restrict_paths,
)
