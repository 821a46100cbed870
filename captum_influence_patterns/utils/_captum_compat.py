"""The one place that imports Captum's private helpers, so a move between releases costs
one edit here."""

from captum._utils.common import (
    _expand_additional_forward_args as expand_additional_forward_args,
)
from captum._utils.common import _expand_target as expand_target
from captum._utils.common import (
    _format_additional_forward_args as format_additional_forward_args,
)
from captum._utils.common import _run_forward as run_forward
from captum._utils.common import _select_targets as select_targets
from captum._utils.gradient import compute_layer_gradients_and_eval
from captum._utils.typing import TargetType
from captum.attr._utils.approximation_methods import (
    SUPPORTED_METHODS,
    approximation_parameters,
)
from captum.attr._utils.attribution import GradientAttribution
from captum.attr._utils.common import _reshape_and_sum as reshape_and_sum
from captum.log import log_usage

__all__ = [
    "GradientAttribution",
    "SUPPORTED_METHODS",
    "TargetType",
    "approximation_parameters",
    "compute_layer_gradients_and_eval",
    "expand_additional_forward_args",
    "expand_target",
    "format_additional_forward_args",
    "log_usage",
    "reshape_and_sum",
    "run_forward",
    "select_targets",
]
