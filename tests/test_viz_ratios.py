"""viz/ratios.py: ratios to g are blanked where g is too small to divide by."""

from __future__ import annotations

import html

from captum_influence_patterns import InfluencePatternsResult
from captum_influence_patterns.testing.patterns import (
    OUTPUT,
    TOKENS,
    make_pattern,
    make_result,
    small_result,
)
from captum_influence_patterns.viz.html import pattern_html
from captum_influence_patterns.viz.ratios import RATIO_NOTE, format_ratio, ratio_floor


class TestRatioBlanking:
    """I/g is blanked where |g| < 1% of sum |g| (issue 13, item 3)."""

    def result(self) -> InfluencePatternsResult:
        patterns = [
            make_pattern(0, [(0, None), (0, None), (4, 2), (4, None)], 5.0),
            make_pattern(1, [(1, None), (4, 1), (4, None), (4, 3)], -4.95),
            make_pattern(2, [(2, 0), (2, None), (2, None), (4, 0)], 0.05),
        ]
        return make_result([patterns], TOKENS, OUTPUT)

    def test_floor_and_format(self) -> None:
        assert round(abs(ratio_floor([5.0, -4.95, 0.05]) - 0.1), 7) == 0
        assert format_ratio(26.1, 0.05, 0.1) == "-"
        assert format_ratio(0.5, -0.1, 0.1) == "0.500"
        assert format_ratio(float("nan"), 0.0, 0.0) == "-"

    def test_table_blanks_tiny_g_and_says_why(self) -> None:
        result = self.result()
        rows = result.table().splitlines()
        tiny = next(row for row in rows if row.lstrip().startswith("2 "))
        assert tiny.split()[3:5] == ["-", "-"]
        big = next(row for row in rows if row.lstrip().startswith("0 "))
        ratio = result.pattern(0, 0).sufficiency
        assert big.split()[4] == f"{ratio:.3f}"
        assert rows[-1] == RATIO_NOTE
        assert RATIO_NOTE not in small_result().table()  # 0.1 >= 0.091

    def test_html_blanks_tiny_g(self) -> None:
        text = pattern_html(self.result())
        assert "I(pi^a)/g = -&#10;" in text
        assert html.escape(RATIO_NOTE) in text
        assert html.escape(RATIO_NOTE) not in pattern_html(small_result())
