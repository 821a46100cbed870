"""The discussion under a report: markdown whose numbers are placeholders
(``{{overall.n|d}}``, ``{{routes:claims.0.verdict}}``) filled from the summaries, so no
number is typed in by hand (:func:`render_notes`), and checked before any work
(:func:`check_notes`)."""

from __future__ import annotations

import re
from typing import Any, Dict, Sequence

from .datasets import EvaluationError
from .records import Summary, read_summary


#: A number of a discussion: ``{{path|format}}``, the path into the report's summary
#: (``name:path`` into another summary given by name), the format a Python format
#: specification (``.3f``, ``.1%``, ``,d``).
PLACEHOLDER = re.compile(
    r"\{\{\s*(?:([A-Za-z_]\w*):)?([^|{}\s]+)\s*\|\s*([^{}\s]+)\s*\}\}"
)


def lookup(summary: Any, path: str) -> Any:
    """The value at a dotted ``path`` of a summary (its JSON object's keys; list
    items by index; a key holding dots can be matched whole)."""
    node = summary.to_dict() if isinstance(summary, Summary) else summary
    parts = path.split(".")
    while parts:
        if isinstance(node, dict):
            for take in range(len(parts), 0, -1):
                key = ".".join(parts[:take])
                if key in node:
                    node, parts = node[key], parts[take:]
                    break
            else:
                raise KeyError(path)
        elif isinstance(node, list) and parts[0].lstrip("-").isdigit():
            node, parts = node[int(parts[0])], parts[1:]
        else:
            raise KeyError(path)
    return node


def check_notes(text: str, names: Sequence[str] = ()) -> None:
    """Raise an :class:`EvaluationError` for a ``{{...}}`` of a discussion that is
    not a placeholder, or names a summary not among ``names`` (the report's own
    summary needs no name): what can be checked before any summary is computed."""
    for match in re.finditer(r"\{\{.*?\}\}", text, flags=re.S):
        placeholder = PLACEHOLDER.fullmatch(match.group(0))
        if placeholder is None:
            raise EvaluationError(
                f"discussion placeholder {match.group(0)!r}: write it "
                "{{path|format}} or {{name:path|format}}"
            )
        name = placeholder.group(1)
        if name is not None and name not in names:
            raise EvaluationError(
                f"discussion placeholder {match.group(0)!r}: no summary named "
                f"{name!r}; give it with --notes-summary {name}=SUMMARY.json"
            )


def render_notes(text: str, summaries: Dict[str, Any]) -> str:
    """A discussion with every ``{{path|format}}`` replaced by the summary's value.

    Args:
        text (str): Markdown with placeholders (:data:`PLACEHOLDER`).
        summaries (dict): ``""`` -> the report's own summary, and any other
            summaries by the name the placeholders give (:class:`~.records.Summary`
            or its JSON object).

    Raises:
        EvaluationError: a placeholder names an unknown summary or path, or its
            value does not take the format.
    """
    check_notes(text, [name for name in summaries if name])

    def number(match: "re.Match[str]") -> str:
        name, path, spec = match.group(1) or "", match.group(2), match.group(3)
        where = f"discussion placeholder {match.group(0)!r}"
        try:
            value = lookup(summaries[name], path)
        except (KeyError, IndexError):
            raise EvaluationError(f"{where}: the summary has no {path!r}") from None
        if value is None:
            raise EvaluationError(f"{where}: {path!r} is not a number (n/a)")
        try:
            return format(value, spec)
        except (TypeError, ValueError) as error:
            raise EvaluationError(f"{where}: {error}") from None

    return PLACEHOLDER.sub(number, text)


def read_notes(path: str) -> str:
    """The text of a discussion file (an :class:`EvaluationError` when it cannot be
    read as UTF-8)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise EvaluationError(f"--notes {path!r}: cannot read it as UTF-8 text "
                              f"({error})") from error


def read_summaries(
    paths: Dict[str, str], claims_from: Dict[int, str]
) -> Dict[str, Summary]:
    """The summaries of other reports, name -> summary, for the placeholders of a
    discussion (``{{name:...}}``) and the claims a page borrows (``claims_from``:
    claim number -> one of their names).

    Raises:
        EvaluationError: ``claims_from`` names a claim other than 1 to 3, or a
            summary not in ``paths``; a summary cannot be read
            (:func:`~.records.read_summary`).
    """
    others = {name: read_summary(path) for name, path in paths.items()}
    for number, name in claims_from.items():
        if name not in others or number not in (1, 2, 3):
            raise EvaluationError(
                f"claims_from {number}={name!r}: give a claim 1 to 3 and the name of "
                "a --notes-summary"
            )
    return others
