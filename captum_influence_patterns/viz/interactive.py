"""The interactive route viewer: one self-contained HTML page per explanation.

The page is drawn in the browser from the result's JSON (the ``pattern-v1`` document
that ``explain`` writes), embedded in the page with the viewer's script and style
(``viz/static/viewer.js`` and ``viewer.css``, inlined: the page reads nothing from the
network). :func:`viewer_html` writes the page of one explanation, :func:`viewer_iframe`
wraps it for a notebook (``result._repr_html_``), and :func:`evaluation_html` the page
of an evaluation: the routes of each task x form group laid over each other.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from importlib import resources
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..utils.files import json_safe
from .edges import PatternLike, aggregate_edges

#: Height of the notebook frame, in pixels.
FRAME_HEIGHT = 620

Document = Dict[str, Any]


def _static(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text("utf-8")


def _page(data: Dict[str, Any], title: str) -> str:
    """The HTML document: the data as JSON (``<`` escaped so no ``</script>`` can end
    it early), the style and the script, all inline."""
    payload = json.dumps(json_safe(data), allow_nan=False).replace("<", "\\u003c")
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<style>\n{_static('viewer.css')}</style>\n</head>\n<body>\n"
        '<div class="cip" id="cip-root"></div>\n'
        f'<script type="application/json" id="cip-data">{payload}</script>\n'
        f"<script>\n{_static('viewer.js')}</script>\n</body>\n</html>\n"
    )


def page_data(html_text: str) -> Dict[str, Any]:
    """The JSON a page written here draws from (for tests and tools)."""
    start = html_text.index('<script type="application/json" id="cip-data">')
    start = html_text.index(">", start) + 1
    end = html_text.index("</script>", start)
    return json.loads(html_text[start:end])


def _document(result_or_document: Any) -> Document:
    """A pattern-v1 document from a document (returned as is) or a result."""
    if isinstance(result_or_document, Mapping):
        return dict(result_or_document)
    if not hasattr(result_or_document, "to_dict"):
        raise TypeError(
            "result_or_document must be an InfluencePatternsResult or the dict of a "
            f"pattern JSON file, got {type(result_or_document).__name__}"
        )
    document = result_or_document.to_dict()
    for key in ("text", "qoi"):
        if key in document["metadata"]:
            document[key] = document["metadata"][key]
    return document


def _routes(routes: Any) -> Dict[str, List[List[Dict[str, Any]]]]:
    """Reference routes as ``{name: [[pattern dict per source] per example]}`` from a
    :class:`~captum_influence_patterns.routes.compare.RouteComparison` or that dict."""
    if routes is None:
        return {}
    if isinstance(routes, Mapping):
        return {str(name): list(rows) for name, rows in routes.items()}
    names = [name for name in routes.methods if name != "guided"]
    return {
        name: [[p.to_dict() for p in example[name]] for example in routes.patterns]
        for name in names
    }


def viewer_html(
    result_or_document: Any,
    example: int = 0,
    routes: Any = None,
    title: Optional[str] = None,
) -> str:
    """The interactive page of one explanation, as a self-contained HTML document.

    The page shows the layer x position grid with every source's route (width by the
    node's ``|influence|``, colour by the sign of ``g``; dashed for the skip, a square
    with the head number for a head), the tokens with ``g``, and a filter by ``|g|``
    share. Hovering a token highlights its route and shows ``g``, ``I(pi^e)``,
    ``I(pi^a)`` and the route's nodes; clicking a node lists the candidates the search
    compared at that layer (``position_candidates``, ``node_candidates``) and marks
    the winner. Skip-only layers can be collapsed, the view zoomed (buttons or
    Ctrl+wheel) and exported as SVG or PNG. The page needs no network.

    Args:
        result_or_document (InfluencePatternsResult or dict): The result, or the
            pattern-v1 document ``explain`` writes (its ``pattern.json``).
        example (int, optional): The example of a batch shown first (the page of a
            batch has an example selector). Default: 0
        routes (RouteComparison or dict, optional): Reference routes to toggle on
            beside the guided ones: a result of
            :func:`~captum_influence_patterns.routes.compare.compare`, or
            ``{name: [[pattern dict per source] per example]}``. Default: None
        title (str, optional): The page title. Default: the text, else "Influence
            patterns".

    Returns:
        str: The HTML document.
    """
    document = _document(result_or_document)
    if not 0 <= example < len(document["patterns"]):
        raise ValueError(
            f"example must be in [0, {len(document['patterns'])}), got {example}"
        )
    references = _routes(routes)
    if references:
        document["routes"] = references
    data = {"view": "pattern", "example": example, "document": document}
    return _page(data, title or document.get("text") or "Influence patterns")


def viewer_iframe(
    result_or_document: Any, height: int = FRAME_HEIGHT, **kwargs: Any
) -> str:
    """:func:`viewer_html` in an ``<iframe srcdoc>``, for notebooks: the page keeps
    its own script and style, whatever the notebook allows its outputs (scripts run in
    the frame's sandbox, which allows scripts and downloads only)."""
    page = viewer_html(result_or_document, **kwargs)
    return (
        f'<iframe srcdoc="{html.escape(page, quote=True)}" '
        'sandbox="allow-scripts allow-downloads" '
        f'style="width: 100%; height: {int(height)}px; border: 1px solid #ddd;">'
        "</iframe>"
    )


# ------------------------------------------------------------------------ evaluation
def _record_document(record: Dict[str, Any]) -> Document:
    """One record of ``evaluate`` as a one-example pattern-v1 document."""
    routes = record.get("routes") or record.get("baselines") or {}
    length = len(record["input_ids"])
    document = {
        "text": record.get("text"),
        "qoi": _record_qoi(record),
        "tokens": [record.get("tokens") or [f"#{j}" for j in range(length)]],
        "input_ids": [record["input_ids"]],
        "token_influence": [record["token_influence"]],
        "patterns": [record["patterns"]],
        "output_positions": [record.get("output_position")],
        "id": record.get("id"),
    }
    if routes:
        document["routes"] = {name: [rows] for name, rows in routes.items()}
    return document


def _record_qoi(record: Dict[str, Any]) -> Optional[str]:
    if record.get("correct") is None:
        return None
    return (
        f"logit({record['correct']}) - logit({record.get('wrong')}) = "
        f"{record.get('qoi')}"
    )


def _group_key(record: Dict[str, Any]) -> Tuple[str, str, int, Any]:
    return (
        str(record.get("task")),
        str(record.get("form", "")),
        len(record["input_ids"]),
        record.get("output_position"),
    )


def evaluation_html(
    records: Sequence[Dict[str, Any]],
    patterns: Sequence[Sequence[PatternLike]],
    title: Optional[str] = None,
    level: str = "attention",
) -> str:
    """The page of an evaluation: per task x form group, the routes of its sentences
    laid over each other, as :func:`visualize_patterns_aggregate` draws them (width:
    the share of the group's sentences whose route uses the edge; colour: the sign of
    the source's mean ``g``; a head edge labelled with its head where more than half
    of the sentences using it use that head). Clicking a group lists its sentences;
    clicking a sentence opens its own route view (as :func:`viewer_html` draws it).

    Sentences of one task and form with different lengths or output positions form
    groups of their own, since their rows do not line up.

    Args:
        records (sequence of dict): The lines ``evaluate`` writes.
        patterns (sequence of pattern lists): ``records[i]["patterns"]`` as
            :class:`~captum_influence_patterns.results.Pattern` objects.
        title (str, optional): The page title.
        level (str, optional): ``"attention"`` (skip and head edges apart) or
            ``"embedding"`` (positions only). Default: ``"attention"``

    Returns:
        str: The HTML document.
    """
    if not records:
        raise ValueError("records is empty: pass the lines `evaluate` wrote")
    members: Dict[Tuple, List[int]] = defaultdict(list)
    for i, record in enumerate(records):
        members[_group_key(record)].append(i)
    groups = []
    for (task, form, length, output), indices in sorted(members.items(), key=str):
        group = [list(patterns[i]) for i in indices]
        edges = aggregate_edges(group, level=level)
        means = {e.source: e.mean_token_influence for e in edges}
        first = records[indices[0]]
        groups.append(
            {
                "task": task,
                "form": form,
                "tokens": first.get("tokens") or [f"#{j}" for j in range(length)],
                "output_position": output,
                "layers": max((len(p.nodes) for row in group for p in row), default=0),
                "sources": [
                    {"source": s, "mean_g": g} for s, g in sorted(means.items())
                ],
                "edges": [
                    {
                        "source": e.source,
                        "layer": e.layer,
                        "start": e.start,
                        "end": e.end,
                        "kind": e.kind,
                        "count": e.count,
                        "fraction": e.fraction,
                        "head": e.head,
                        "mean_g": e.mean_token_influence,
                    }
                    for e in edges
                ],
                "sentences": indices,
            }
        )
    data = {
        "view": "evaluation",
        "title": title,
        "groups": groups,
        "sentences": [
            {"text": r.get("text"), "document": _record_document(r)} for r in records
        ],
    }
    return _page(data, title or "Influence patterns by task and form")

