"""The one shape of every table of the library (the search table, the route finders,
the QoI kinds and the model families): ``register_x(entry, *, overwrite=False)`` adds
an entry object under its ``name``, and a name is taken once unless the caller asks to
replace it."""

from __future__ import annotations

from typing import Dict, TypeVar

Entry = TypeVar("Entry")


def add_entry(
    table: Dict[str, Entry],
    entry: Entry,
    entry_type: type,
    *,
    argument: str,
    what: str,
    overwrite: bool,
) -> Entry:
    """Add ``entry`` to ``table`` under ``entry.name``, and return it.

    Args:
        table (dict): The table, by name.
        entry: The new entry, an ``entry_type`` with a ``name``.
        entry_type (type): The type the table holds.
        argument (str): The registry's parameter that holds ``entry`` (errors name it).
        what (str): The entry in words, e.g. ``"a search"`` (errors name it).
        overwrite (bool): Replace an entry registered under the same name.

    Raises:
        TypeError: naming ``argument``, when ``entry`` is not an ``entry_type``.
        ValueError: naming ``name`` and how to replace the entry, when the name is
            taken and ``overwrite`` is False.
    """
    if not isinstance(entry, entry_type):
        raise TypeError(
            f"{argument}: expected a {entry_type.__name__}, got {type(entry).__name__}"
        )
    name = entry.name  # type: ignore[attr-defined]
    if name in table and not overwrite:
        raise ValueError(
            f"name: {what} {name!r} is registered already; pass overwrite=True to "
            "replace it"
        )
    table[name] = entry
    return entry
