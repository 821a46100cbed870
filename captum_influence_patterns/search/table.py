"""The search table (:data:`SEARCHES`): every way to run the refinement on one
example, by the name that ``attribute(schedule=...)`` takes, with the stages it
reports. The built-in searches are registered here, by name; :func:`register_search`
adds others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Sequence, Tuple

from torch import Tensor

from ..utils.registry import check_free
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
        stages (Callable): ``stages(num_layers)``: the names ``run`` passes to
            ``done``, in order (progress bars count them).
        options (tuple of str): Keyword arguments of ``attribute`` that ``run`` takes
            as well (e.g. ``beam_width``).
    """

    name: str
    run: SearchFn
    stages: Callable[[int], Tuple[str, ...]]
    options: Tuple[str, ...] = ()


#: The search table, by name.
SEARCHES: Dict[str, Search] = {}


def register_search(
    name: str,
    stages: Callable[[int], Sequence[str]],
    *,
    options: Sequence[str] = (),
    overwrite: bool = False,
) -> Callable[[SearchFn], SearchFn]:
    """Decorator: add the decorated search to :data:`SEARCHES` under ``name``.

    Example::

        @register_search("my-search", stages=lambda num_layers: ("all",))
        def my_search(problem, sources, output_position, done=ignore_progress):
            ...
            done("all")
            return state, g

    Raises:
        ValueError: when ``name`` is taken and ``overwrite`` is False.
    """
    check_free(SEARCHES, name, argument="name", what="a search", overwrite=overwrite)

    def register(run: SearchFn) -> SearchFn:
        SEARCHES[name] = Search(
            name, run, lambda num_layers: tuple(stages(num_layers)), tuple(options)
        )
        return run

    return register


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


for _name, _run, _stages, _options in (
    ("reference", reference_search, reference_stages, ()),
    ("fast", fast_search, fast_stages, ()),
    ("row-wise", rowwise_search, fast_stages, ()),
    ("forward-mode", forward_mode_search, fast_stages, ()),
    ("beam", beam_schedule, fast_stages, ("beam_width",)),
):
    register_search(_name, _stages, options=_options)(_run)
