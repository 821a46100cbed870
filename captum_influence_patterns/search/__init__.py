"""Guided pattern refinement (docs/method.md, sections 6 and 7)."""

from . import beam  # noqa: F401 (it registers its search)
from .state import (
    SEARCHES,
    Search,
    SearchFn,
    SearchState,
    check_finite,
    check_output_read,
    choose_nodes,
    choose_positions,
    fast_stages,
    ignore_progress,
    one_hot_positions,
    reference_nodes,
    reference_search,
    reference_stages,
    register_search,
    search_sign,
)
