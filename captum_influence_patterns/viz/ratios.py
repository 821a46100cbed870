"""Sufficiency ratios ``I(pi)/g`` for display, blanked where ``g`` is too small.

``I(pi^e)/g`` and ``I(pi^a)/g`` say how much of a token's influence ``g`` its pattern
carries. For a token whose ``|g|`` is a sliver of the example's total, both numbers are
small and their ratio is noise (values such as 26 or 64 appear); averaged over many
examples, such ratios swamp the meaningful ones. Tables and pages therefore show a ratio
only where ``|g| >= MIN_RATIO_SHARE * sum |g|`` over the example's sources, and say so.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

#: Share of the example's ``sum |g|`` a token needs for its I/g ratios to be shown.
MIN_RATIO_SHARE = 0.01
#: What a table shows in place of a blanked ratio.
BLANK = "-"
#: The footnote of tables with blanked ratios.
RATIO_NOTE = (
    f"I/g shown as '{BLANK}' where |g| < {MIN_RATIO_SHARE:.0%} of sum |g|: "
    "a ratio of two tiny numbers is noise."
)


def ratio_floor(
    token_influences: Iterable[float], share: float = MIN_RATIO_SHARE
) -> float:
    """The smallest ``|g|`` whose ratios are shown: ``share * sum |g|``.

    Args:
        token_influences (iterable of float): ``g`` of every source of one example.
        share (float, optional): Share of ``sum |g|``. Default: :data:`MIN_RATIO_SHARE`

    Returns:
        float: The floor (0 when every ``g`` is 0).
    """
    return share * sum(abs(float(g)) for g in token_influences)


def shown_ratio(value: float, token_influence: float, floor: float) -> Optional[float]:
    """``value`` when ``|g| >= floor`` and it is finite, else None (blank it)."""
    if abs(token_influence) < floor or token_influence == 0 or not math.isfinite(value):
        return None
    return value


def format_ratio(
    value: float, token_influence: float, floor: float, spec: str = ".3f"
) -> str:
    """A ratio formatted with ``spec``, or :data:`BLANK` where it is not shown.

    Args:
        value (float): The ratio, e.g. :attr:`Pattern.sufficiency`.
        token_influence (float): The token's ``g``.
        floor (float): From :func:`ratio_floor`.
        spec (str, optional): Format specification. Default: ``".3f"``

    Returns:
        str: The text for a table cell.
    """
    shown = shown_ratio(value, token_influence, floor)
    return BLANK if shown is None else format(shown, spec)
