"""The rule every table of the library follows when an entry is added (the search
table, the route finders, the QoI kinds and the model families): a name is taken once,
unless the caller asks to replace it."""

from __future__ import annotations

from typing import Any, Dict


def check_free(
    table: Dict[str, Any], name: str, *, argument: str, what: str, overwrite: bool
) -> None:
    """Refuse ``name`` when ``table`` holds it and ``overwrite`` is False.

    Raises:
        ValueError: naming ``argument`` and how to replace the entry.
    """
    if name in table and not overwrite:
        raise ValueError(
            f"{argument}: {what} {name!r} is registered already; pass "
            "overwrite=True to replace it"
        )
