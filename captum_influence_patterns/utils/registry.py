"""The one shape of every table of the library (the search table, the route finders,
the QoI kinds and the model families): each is a :class:`Registry`, a plain dict by
name, and its ``register_*`` function takes the entry object and ``overwrite`` by
keyword (``register_search(search, *, overwrite=False)``). An entry's ``name`` is its
key, and a name is taken once unless the caller asks to replace it."""

from __future__ import annotations

from typing import Dict, TypeVar

Entry = TypeVar("Entry")


class Registry(Dict[str, Entry]):
    """A table of entries by their ``name``: a plain dict (``del table[name]`` takes
    an entry out) whose :meth:`add` checks the entry first.

    Args:
        entry_type (type): The type of the entries.
        argument (str): The parameter of the table's ``register_*`` function that
            holds the entry (errors name it).
        what (str): An entry in words, e.g. ``"a search"`` (errors name it).
    """

    def __init__(self, entry_type: type, *, argument: str, what: str) -> None:
        super().__init__()
        self.entry_type = entry_type
        self.argument = argument
        self.what = what

    def add(self, entry: Entry, *, overwrite: bool = False) -> Entry:
        """Add ``entry`` under ``entry.name``, and return it.

        Raises:
            TypeError: naming the argument, when ``entry`` is not an ``entry_type``
                (``search: expected a Search, got str``).
            ValueError: naming ``name`` and how to replace the entry, when the name
                is taken and ``overwrite`` is False (``name: a search 'fast' is
                registered already; pass overwrite=True to replace it``).
        """
        if not isinstance(entry, self.entry_type):
            raise TypeError(
                f"{self.argument}: expected a {self.entry_type.__name__}, got "
                f"{type(entry).__name__}"
            )
        name = entry.name  # type: ignore[attr-defined]
        if name in self and not overwrite:
            raise ValueError(
                f"name: {self.what} {name!r} is registered already; pass "
                "overwrite=True to replace it"
            )
        self[name] = entry
        return entry
