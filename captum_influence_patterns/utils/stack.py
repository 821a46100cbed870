"""Where a warning of the library points: at the user's code, not inside the library."""

from __future__ import annotations

import sys


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` in the caller of this function that
    points at the first frame outside this package and Captum (whose ``log_usage``
    wraps ``attribute``): the user's call, however deep inside the library (through
    :meth:`~..attribution.InfluencePatterns.search` or an analysis) the warning is
    raised."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
        ("captum_influence_patterns.", "captum.")
    ):
        frame, level = frame.f_back, level + 1
    return level
