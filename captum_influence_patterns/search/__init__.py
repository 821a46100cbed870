"""Guided pattern refinement (docs/method.md, sections 6 and 7).

- :mod:`.state`: the decision rules and the search state every search shares;
- :mod:`.reference`: the authors' literal schedule;
- :mod:`.fast`: the fast schedule, dispatching between :mod:`.rowwise` (linearisation,
  recording and driver) and :mod:`.forward_mode`;
- :mod:`.beam`: beam routes;
- :mod:`.table`: the search table, every search above by name
  (:data:`~.table.SEARCHES`), and :func:`~.table.register_search`.
"""

from .reference import reference_nodes, reference_search
from .state import SearchState, ignore_progress
from .table import SEARCHES, Search, SearchFn, register_search

__all__ = [
    "SEARCHES",
    "Search",
    "SearchFn",
    "SearchState",
    "ignore_progress",
    "reference_nodes",
    "reference_search",
    "register_search",
]
