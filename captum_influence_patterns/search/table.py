"""The search table (:data:`SEARCHES`): every way to run the refinement on one
example, by the name that ``attribute(schedule=...)`` takes, with the stages it
reports. The built-in searches are registered here; :func:`register_search` adds
others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple

from torch import Tensor

from ..utils.registry import Registry
from .beam import beam_schedule
from .fast import fast_search
from .forward_mode import forward_mode_search
from .reference import reference_search
from .rowwise.driver import rowwise_search
from .state import SearchState

#: A search: ``run(problem, sources, output_position, done, **options)`` returns the
#: state and g (T,) for one example, calling ``done(stage)`` after each of its stages.
SearchFn = Callable[..., Tuple[SearchState, Tensor]]


@dataclass(frozen=True)
class Search:
    """One entry of the search table.

    Attributes:
        name (str): The name ``attribute(schedule=...)`` takes, and the results'
            ``metadata["schedule"]``.
        run (SearchFn): The search (see :data:`SearchFn`).
        stages (Callable): ``stages(num_layers)``: the tuple of names ``run`` passes
            to ``done``, in order (progress bars count them).
        options (tuple of str): Keyword arguments of ``attribute`` that ``run`` takes
            as well (e.g. ``beam_width``).
    """

    name: str
    run: SearchFn
    stages: Callable[[int], Tuple[str, ...]]
    options: Tuple[str, ...] = ()


#: The search table, by name.
SEARCHES: Registry[Search] = Registry(Search, argument="search", what="a search")


def register_search(search: Search, *, overwrite: bool = False) -> Search:
    """Add ``search`` to :data:`SEARCHES`.

    Example::

        def my_search(problem, sources, output_position, done=ignore_progress):
            ...
            done("all")
            return state, g

        register_search(Search("my-search", my_search, lambda num_layers: ("all",)))

    Args:
        search (Search): The new search; ``search.name`` is its key.
        overwrite (bool, optional): Replace a search of the same name,
            which raises a ValueError otherwise. Default: False

    Returns:
        Search: ``search``; ``attribute(..., schedule=search.name)`` now runs it.
    """
    return SEARCHES.add(search, overwrite=overwrite)


def fast_stages(num_layers: int) -> Tuple[str, ...]:
    """The fast schedule's stages (both implementations, and the beam)."""
    return (
        "stage A gradients",
        "stage A tangents",
        "stage B gradients",
        "stage B tangents",
    )


def reference_stages(num_layers: int) -> Tuple[str, ...]:
    """The reference schedule's stages: g, then one per layer and stage."""
    layers = range(1, num_layers + 1)
    return (
        "token influence",
        *(f"stage A layer {layer}" for layer in layers),
        *(f"stage B layer {layer}" for layer in layers),
    )


for _search in (
    Search("reference", reference_search, reference_stages),
    Search("fast", fast_search, fast_stages),
    Search("row-wise", rowwise_search, fast_stages),
    Search("forward-mode", forward_mode_search, fast_stages),
    Search("beam", beam_schedule, fast_stages, options=("beam_width",)),
):
    register_search(_search)
