"""The one place that imports Captum's private helpers, so a move between releases costs
one edit here."""

from captum._utils.common import _run_forward as run_forward
from captum._utils.common import _select_targets as select_targets
from captum._utils.typing import TargetType
from captum.attr._utils.approximation_methods import (
    SUPPORTED_METHODS,
    approximation_parameters,
)
from captum.attr._utils.attribution import GradientAttribution
from captum.log import log_usage

__all__ = [
    "GradientAttribution",
    "SUPPORTED_METHODS",
    "TargetType",
    "approximation_parameters",
    "log_usage",
    "run_forward",
    "select_targets",
]
