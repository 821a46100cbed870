"""captum_influence_patterns: influence patterns (Lu et al., NeurIPS 2021) as a Captum
plugin.

Explains how a token's information reaches a transformer's prediction: for each source
token, the route (a position per layer, and a head or the skip connection at each layer)
that carries most of its integrated-gradient influence on a quantity of interest.
"""

from .attribution import InfluencePatterns
from .graph import (
    EncoderSublayers,
    Family,
    InlineBlock,
    ModelGraph,
    NodeController,
    UnsupportedModelError,
    analysis_mode,
    model_graph,
    register_family,
    restrict_paths,
)
from .graph.gating import Gates
from .qoi import (
    classifier_logit_difference,
    masked_lm_logit_difference,
    next_token_logit_difference,
)
from .results import InfluencePatternsResult, Pattern, PatternNode
from .routes.optimality import optimality_test

# Plotting (matplotlib), reference routes (networkx) and model loading (the embedded
# MiniLM: load_model, prepare_explanation, explain and its readout QoI readout_forward)
# import on first use, so that ``import captum_influence_patterns`` stays light; so do
# the registries' entry types beside their ``register_*``.
_LAZY = {
    "pattern_html": "viz.html",
    "visualize_pattern": "viz.plots",
    "visualize_patterns_aggregate": "viz.plots",
    "compare": "routes.compare",
    "explain": "models.explanation",
    "load_model": "models.loading",
    "prepare_explanation": "models.explanation",
    "readout_forward": "models.embedded",
    "QoIKind": "models.qoi_kinds",
    "register_qoi_kind": "models.qoi_kinds",
    "RouteFinder": "routes.finders",
    "register_route_finder": "routes.finders",
    "Search": "search.table",
    "register_search": "search.table",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.4.0"

__all__ = [
    "EncoderSublayers",
    "Family",
    "Gates",
    "InlineBlock",
    "InfluencePatterns",
    "InfluencePatternsResult",
    "ModelGraph",
    "NodeController",
    "Pattern",
    "PatternNode",
    "QoIKind",
    "RouteFinder",
    "Search",
    "UnsupportedModelError",
    "analysis_mode",
    "classifier_logit_difference",
    "compare",
    "explain",
    "load_model",
    "masked_lm_logit_difference",
    "model_graph",
    "next_token_logit_difference",
    "optimality_test",
    "pattern_html",
    "prepare_explanation",
    "readout_forward",
    "register_family",
    "register_qoi_kind",
    "register_route_finder",
    "register_search",
    "restrict_paths",
    "visualize_pattern",
    "visualize_patterns_aggregate",
]
