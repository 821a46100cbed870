"""Influence patterns as HTML: a Captum-style token heat map, routes in tooltips.

:func:`pattern_html` needs no matplotlib; :func:`display_pattern_html` shows it in a
notebook. Sufficiency ratios are blanked where ``|g|`` is tiny (see
:mod:`captum_influence_patterns.viz.ratios`).
"""

from __future__ import annotations

import html
from typing import Any, Dict, Optional, Sequence

from .edges import PatternLike, ResultLike
from .ratios import RATIO_NOTE, format_ratio, ratio_floor
from .tokens import clean_token


def _html_color(value: float) -> str:
    """Captum's ``visualize_text`` colour of a value in [-1, 1] (green +, red -)."""
    value = max(-1.0, min(1.0, value))
    if value > 0:
        return f"hsl(120, 75%, {100 - int(50 * value)}%)"
    return f"hsl(0, 75%, {100 - int(-40 * value)}%)"


def _tooltip(
    position: int,
    token: str,
    pattern: Optional[PatternLike],
    output: bool,
    floor: float,
) -> str:
    lines = [f"position {position}: {token}"]
    if output:
        lines.append("output position (read by the QoI)")
    if pattern is not None:
        lines += [
            f"g = {pattern.token_influence:.4g}",
            "I(pi^e)/g = "
            + format_ratio(
                pattern.embedding_sufficiency, pattern.token_influence, floor
            ),
            "I(pi^a)/g = "
            + format_ratio(pattern.sufficiency, pattern.token_influence, floor),
            f"route: {pattern.route_description() or '-'}",
        ]
    return "&#10;".join(html.escape(line, quote=True) for line in lines)


def pattern_html(
    result: ResultLike,
    example: int = 0,
    title: Optional[str] = None,
    show_table: bool = True,
    full_document: bool = False,
) -> str:
    """A self-contained HTML token heat map, like Captum's ``visualize_text``.

    Each token is shaded green (``g > 0``) or red (``g < 0``) by ``g / max |g|``; its
    tooltip gives ``g``, the sufficiencies ``I(pi^e)/g`` and ``I(pi^a)/g`` (shown as
    "-" where ``|g|`` is under 1% of ``sum |g|``, see
    :mod:`~captum_influence_patterns.viz.ratios`) and the route
    (:meth:`Pattern.route_description`). The output position is outlined. All text is
    HTML-escaped.

    Args:
        result (InfluencePatternsResult): The result.
        example (int, optional): Example index. Default: 0
        title (str, optional): Heading. Default: the example and its output token.
        show_table (bool, optional): Add a table of the same values below the tokens.
            Default: True
        full_document (bool, optional): Wrap in ``<!DOCTYPE html><html>...``, e.g. to
            write a file. Default: False (a ``<div>`` fragment for notebooks)

    Returns:
        str: The HTML.
    """
    tokens = result.token_labels(example)
    output = result.output_positions[example]
    patterns = {p.source: p for p in result.patterns[example]}
    scale = max([abs(p.token_influence) for p in patterns.values()] + [0.0])
    floor = ratio_floor(p.token_influence for p in patterns.values())
    if title is None:
        title = f"Example {example}: output at {output} ({clean_token(tokens[output])})"
    marks = []
    for j, token in enumerate(tokens):
        pattern = patterns.get(j)
        value = (
            pattern.token_influence / scale if pattern is not None and scale else 0.0
        )
        outline = "outline: 2px solid #222; font-weight: bold; " if j == output else ""
        marks.append(
            f'<mark title="{_tooltip(j, token, pattern, j == output, floor)}" '
            f'style="background-color: {_html_color(value)}; {outline}'
            'padding: 1px 3px; margin: 0 2px; border-radius: 3px; line-height: 2;">'
            f"{html.escape(clean_token(token))}</mark>"
        )
    parts = [
        '<div class="influence-patterns" style="font-family: sans-serif;">',
        f'<p style="font-weight: bold; margin: 4px 0;">{html.escape(title)}</p>',
        f'<div style="margin: 4px 0;">{" ".join(marks)}</div>',
        '<p style="font-size: 80%; color: #555; margin: 4px 0;">'
        "green: g &gt; 0, red: g &lt; 0 (shade: g / max |g|); outlined: output "
        "position; hover a token for its route.</p>",
    ]
    if show_table:
        parts.append(_html_table(tokens, patterns, floor))
    if show_table and any(abs(p.token_influence) < floor for p in patterns.values()):
        parts.append(
            f'<p style="font-size: 80%; color: #555; margin: 4px 0;">'
            f"{html.escape(RATIO_NOTE)}</p>"
        )
    parts.append("</div>")
    body = "\n".join(parts)
    if not full_document:
        return body
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def _html_table(
    tokens: Sequence[str], patterns: Dict[int, PatternLike], floor: float
) -> str:
    header = "".join(
        f'<th style="text-align: left; padding: 2px 8px;">{name}</th>'
        for name in (
            "pos",
            "token",
            "g",
            "I(&pi;<sup>e</sup>)/g",
            "I(&pi;<sup>a</sup>)/g",
            "route",
        )
    )
    rows = []
    for source in sorted(patterns):
        p = patterns[source]
        cells = (
            str(source),
            html.escape(clean_token(tokens[source])),
            f"{p.token_influence:.4g}",
            format_ratio(p.embedding_sufficiency, p.token_influence, floor),
            format_ratio(p.sufficiency, p.token_influence, floor),
            html.escape(p.route_description() or "-"),
        )
        rows.append(
            "<tr>"
            + "".join(f'<td style="padding: 2px 8px;">{cell}</td>' for cell in cells)
            + "</tr>"
        )
    return (
        '<table style="border-collapse: collapse; font-size: 85%;">\n'
        f"<tr>{header}</tr>\n" + "\n".join(rows) + "\n</table>"
    )


def display_pattern_html(result: ResultLike, example: int = 0, **kwargs: Any) -> Any:
    """Show :func:`pattern_html` in a notebook when IPython is installed.

    Args:
        result (InfluencePatternsResult): The result.
        example (int, optional): Example index. Default: 0
        **kwargs: Passed to :func:`pattern_html`.

    Returns:
        ``IPython.display.HTML`` (after displaying it) when IPython can be imported,
        else the HTML string.
    """
    text = pattern_html(result, example=example, **kwargs)
    try:
        from IPython.display import HTML, display
    except ImportError:
        return text
    obj = HTML(text)
    display(obj)
    return obj
