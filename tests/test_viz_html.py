"""viz/html.py: the HTML page of a result: well-formed, escaped, titled."""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from typing import List
from unittest import mock

from captum_influence_patterns.testing.patterns import small_result
from captum_influence_patterns.viz.html import display_pattern_html, pattern_html


class _TagChecker(HTMLParser):
    VOID = {"meta", "br", "img", "hr", "input", "link"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: List[str] = []
        self.errors: List[str] = []
        self.titles: List[str] = []
        self.data: List[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.titles += [value for name, value in attrs if name == "title"]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)

    def handle_data(self, data) -> None:
        self.data.append(data)


class TestHTML:
    def check(self, text: str) -> _TagChecker:
        checker = _TagChecker()
        checker.feed(text)
        checker.close()
        assert checker.errors == []
        assert checker.stack == []
        return checker

    def test_well_formed_and_escaped(self) -> None:
        result = small_result()
        for full in (False, True):
            text = pattern_html(result, full_document=full)
            checker = self.check(text)
            assert "<script>" not in text
            assert "&lt;script&gt;" in text
            assert "<script>" in "".join(checker.data)
        route = result.pattern(0, 1).route_description()
        assert any(route in title for title in checker.titles)
        assert any("output position" in title for title in checker.titles)
        assert "hsl(120, 75%, 50%)" in text  # the largest g is fully green

    def test_display_without_ipython(self) -> None:
        with mock.patch.dict(sys.modules, {"IPython": None, "IPython.display": None}):
            assert display_pattern_html(small_result()) == pattern_html(small_result())
