"""captum_influence_patterns: influence patterns (Lu et al., NeurIPS 2021) as a Captum
plugin.

Explains how a token's information reaches a transformer's prediction: for each source
token, the route (a position per layer, and a head or the skip connection at each layer)
that carries most of its integrated-gradient influence on a quantity of interest.
"""

from .influence_patterns import InfluencePatterns, analysis_mode
from .model_graph import ModelGraph, UnsupportedModelError, model_graph
from .path_restriction import Gates, NodeController, restrict_paths
from .qoi import (
    classifier_logit_difference,
    masked_lm_logit_difference,
    next_token_logit_difference,
)
from .results import InfluencePatternsResult, Pattern, PatternNode
from .visualization import pattern_html, visualize_pattern, visualize_patterns_aggregate
from .baselines import compare
from .model_loading import load_model

__version__ = "0.1.0"

__all__ = [
    "Gates",
    "InfluencePatterns",
    "InfluencePatternsResult",
    "ModelGraph",
    "NodeController",
    "Pattern",
    "PatternNode",
    "UnsupportedModelError",
    "analysis_mode",
    "classifier_logit_difference",
    "compare",
    "load_model",
    "masked_lm_logit_difference",
    "model_graph",
    "next_token_logit_difference",
    "pattern_html",
    "restrict_paths",
    "visualize_pattern",
    "visualize_patterns_aggregate",
]
