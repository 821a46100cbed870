"""Routes as plain data: the edges the graph views draw, with no matplotlib.

A route crosses each layer once (:class:`Step`); :func:`instance_edges` turns one
example's patterns into weighted :class:`Edge` objects, and :func:`aggregate_edges`
counts how often many instances' routes use each edge. Results and pattern lists are
recognised by duck typing (``.patterns`` / ``.nodes``), so this module needs only the
types of :mod:`captum_influence_patterns.results` for its hints.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np


class PatternLike(Protocol):
    """What the views read of a :class:`~captum_influence_patterns.results.Pattern`.

    The views read results by attribute, so ``results.py`` (whose ``plot()`` draws with
    them) is the only one of the two that imports the other.
    """

    source: int
    sign: int
    token_influence: float
    positions: List[int]
    nodes: List[Any]
    embedding_influence: float
    influence: float


class ResultLike(Protocol):
    """What the views read of an
    :class:`~captum_influence_patterns.results.InfluencePatternsResult`."""

    patterns: List[List[PatternLike]]
    output_positions: List[Optional[int]]
    metadata: Dict[str, Any]

    def token_labels(self, example: int = 0) -> List[str]: ...


LEVELS = ("attention", "embedding")

ResultsOrPatterns = Union[
    ResultLike,
    Sequence[ResultLike],
    Sequence[Sequence[PatternLike]],
    Sequence[PatternLike],
]


# --------------------------------------------------------------------------------------
# Inputs: results, pattern lists, instances
# --------------------------------------------------------------------------------------


@dataclass
class Instance:
    """One explained example: its patterns, token labels and output position."""

    patterns: List[PatternLike]
    tokens: Optional[List[str]]
    output_position: Optional[int]


def is_result(value: Any) -> bool:
    """Whether ``value`` is an :class:`InfluencePatternsResult` (or looks like one)."""
    return hasattr(value, "patterns") and hasattr(value, "output_positions")


def is_pattern(value: Any) -> bool:
    """Whether ``value`` is a :class:`Pattern` (or looks like one)."""
    return hasattr(value, "nodes") and hasattr(value, "source")


def instances(results_or_patterns: ResultsOrPatterns) -> List[Instance]:
    """Flatten a result, results, a pattern list or pattern lists into instances."""
    if is_result(results_or_patterns):
        return result_instances(results_or_patterns)
    items = list(results_or_patterns)
    if not items:
        raise ValueError("nothing to draw: no results or patterns were given")
    if is_pattern(items[0]):
        return [Instance(list(items), None, pattern_output(items))]
    found: List[Instance] = []
    for item in items:
        if is_result(item):
            found.extend(result_instances(item))
        else:
            patterns = list(item)
            found.append(Instance(patterns, None, pattern_output(patterns)))
    return found


def result_instances(result: ResultLike) -> List[Instance]:
    """One instance per example of ``result``."""
    return [
        Instance(
            list(result.patterns[b]), result.token_labels(b), result.output_positions[b]
        )
        for b in range(len(result))
    ]


def pattern_output(patterns: Sequence[PatternLike]) -> Optional[int]:
    """The last position of the first pattern's route (its output position)."""
    return patterns[0].positions[-1] if patterns and patterns[0].positions else None


def check_level(level: str) -> None:
    """Raise ``ValueError`` unless ``level`` is one of :data:`LEVELS`."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def select_sources(
    influence: Dict[int, float], sources: Optional[Sequence[int]], threshold: float
) -> List[int]:
    """Sources to draw: the given ones, else those with ``|g| >= threshold * sum |g|``.

    ``influence`` maps each available source position to its (mean) ``g``.
    """
    if sources is not None:
        missing = [s for s in sources if s not in influence]
        if missing:
            raise ValueError(f"positions {missing} are not sources of the patterns")
        return sorted(set(int(s) for s in sources))
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    total = sum(abs(g) for g in influence.values())
    return sorted(s for s, g in influence.items() if abs(g) >= threshold * total)


def patterns_by_source(found: Sequence[Instance]) -> Dict[int, List[PatternLike]]:
    """Every instance's pattern of each source position, by position."""
    by_source: Dict[int, List[PatternLike]] = defaultdict(list)
    for instance in found:
        for pattern in instance.patterns:
            by_source[pattern.source].append(pattern)
    return dict(by_source)


def shared_layout(
    found: Sequence[Instance],
    tokens: Optional[Sequence[str]],
    output_position: Optional[int],
) -> Tuple[List[str], Optional[int]]:
    """The tokens and output position shared by all instances (checked)."""
    outputs = {i.output_position for i in found if i.output_position is not None}
    if output_position is None and len(outputs) > 1:
        raise ValueError(f"instances have different output positions {sorted(outputs)}")
    if output_position is None and outputs:
        output_position = outputs.pop()
    lengths = {len(i.tokens) for i in found if i.tokens is not None}
    if len(lengths) > 1:
        raise ValueError(f"instances have different lengths {sorted(lengths)}")
    if tokens is None:
        known = [i.tokens for i in found if i.tokens is not None]
        if not known:
            raise ValueError("tokens are needed to draw patterns without a result")
        tokens = known[0]
    return list(tokens), output_position


def token_statistics(found: Sequence[Instance]) -> Dict[int, np.ndarray]:
    """Per source position, the mean of ``(g, I(pi^e), I(pi^a))`` over instances."""
    return {
        source: np.mean(
            [[p.token_influence, p.embedding_influence, p.influence] for p in patterns],
            axis=0,
        )
        for source, patterns in patterns_by_source(found).items()
    }


# --------------------------------------------------------------------------------------
# Routes as edges
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """A route crossing one layer: ``(layer - 1, start)`` to ``(layer, end)``."""

    layer: int
    start: int
    end: int
    kind: str  # "skip", "head" or "position" (embedding level)
    head: Optional[int]
    influence: float


def route_steps(pattern: PatternLike, level: str) -> List[Step]:
    """The route of ``pattern`` at ``level`` as one step per layer."""
    if level == "embedding":
        positions = pattern.positions
        return [
            Step(layer, positions[layer - 1], positions[layer], "position", None, value)
            for layer, value in enumerate(pattern.position_influence, start=1)
        ]
    steps = []
    previous = pattern.source
    for node in pattern.nodes:
        steps.append(
            Step(
                node.layer,
                previous,
                node.position,
                node.kind,
                node.head,
                node.influence,
            )
        )
        previous = node.position
    return steps


@dataclass
class Edge:
    """An edge to draw; ``weight`` in [0, 1] sets its width, ``sign`` its colour.

    ``arrived`` marks an edge along the output row after the route has reached it (the
    rest of the route only waits there); the views draw such edges fainter.
    """

    step: Step
    weight: float
    sign: int
    source: int
    label: Optional[str]
    arrived: bool = False


def instance_edges(patterns: Sequence[PatternLike], level: str) -> List[Edge]:
    """One edge per layer per pattern, width by ``|influence|`` over the largest."""
    steps = [(p, step) for p in patterns for step in route_steps(p, level)]
    largest = max([abs(step.influence) for _, step in steps] + [0.0])
    return mark_arrivals(
        [
            Edge(
                step=step,
                weight=abs(step.influence) / largest if largest > 0 else 0.0,
                sign=sign(p.token_influence),
                source=p.source,
                label=None if step.head is None else str(step.head),
            )
            for p, step in steps
        ]
    )


def mark_arrivals(edges: Sequence[Edge]) -> List[Edge]:
    """Set ``arrived`` on the edges a route draws along its final row after reaching it.

    A route that reaches the output position at layer ``l`` and stays there adds one
    edge per later layer along that row; those edges are marked. A route that never
    leaves its row (the output token's own) has no arrival and no marked edge.
    """
    by_source: Dict[int, List[Edge]] = defaultdict(list)
    for edge in edges:
        by_source[edge.source].append(edge)
    for route in by_source.values():
        route.sort(key=lambda e: e.step.layer)
        final = route[-1].step.end
        moves = [k for k, edge in enumerate(route) if edge.step.start != final]
        if moves:
            for edge in route[moves[-1] + 1 :]:
                edge.arrived = True
    return list(edges)


def num_layers(patterns: Sequence[PatternLike]) -> int:
    """The number of layers the patterns' routes cross."""
    return max([len(p.positions) - 1 for p in patterns] + [0])


def sign(value: float) -> int:
    """-1 for negative values, else +1."""
    return -1 if value < 0 else 1


def row_lanes(
    edges: Sequence[Edge], spacing: float = 0.12, band: float = 0.7
) -> Dict[int, Tuple[float, float]]:
    """A fixed vertical lane per source for its ``arrived`` edges.

    Routes that wait on the same row would otherwise be re-laned at every layer as
    others join them; a fixed lane per source keeps each one a straight, traceable
    line. Lanes are centred on the row and fit in ``band`` rows.

    Returns:
        dict: Source position -> (offset, gap between lanes on its row), in rows, for
        every source with arrived edges.
    """
    rows: Dict[int, List[int]] = defaultdict(list)
    for edge in edges:
        if edge.arrived and edge.source not in rows[edge.step.end]:
            rows[edge.step.end].append(edge.source)
    lanes: Dict[int, Tuple[float, float]] = {}
    for sources in rows.values():
        sources.sort()
        gap = min(spacing, band / max(len(sources) - 1, 1))
        for lane, source in enumerate(sources):
            lanes[source] = ((lane - (len(sources) - 1) / 2) * gap, gap)
    return lanes


@dataclass(frozen=True)
class AggregateEdge:
    """How often the routes of one source position use one edge, over many instances.

    Attributes:
        source (int): Source position.
        layer (int): Layer crossed, 1..L.
        start (int): Position at layer ``layer - 1``.
        end (int): Position at layer ``layer``.
        kind (str): ``"skip"``, ``"head"`` (any head) or ``"position"`` (embedding
            level).
        count (int): Instances whose route of ``source`` uses the edge.
        instances (int): Instances that have ``source`` as a source.
        fraction (float): ``count / instances``.
        head (int or None): For head edges, the most frequent head when more than half
            of the ``count`` instances use it; else None.
        mean_token_influence (float): Mean ``g`` of ``source`` over the instances.
    """

    source: int
    layer: int
    start: int
    end: int
    kind: str
    count: int
    instances: int
    fraction: float
    head: Optional[int]
    mean_token_influence: float


def aggregate_edges(
    results_or_patterns: ResultsOrPatterns,
    level: str = "attention",
    sources: Optional[Sequence[int]] = None,
) -> List[AggregateEdge]:
    """Count, per source position, how many instances' routes use each edge.

    Args:
        results_or_patterns (InfluencePatternsResult, list): The instances: one
            result (every example), a list of results, a list of pattern lists (one
            per instance) or one pattern list.
        level (str, optional): ``"attention"`` (skip and head edges apart) or
            ``"embedding"`` (positions only). Default: ``"attention"``
        sources (sequence of int, optional): Source positions to count. Default: all.

    Returns:
        list of AggregateEdge: Sorted by source, layer, start, end and kind.
    """
    check_level(level)
    by_source = patterns_by_source(instances(results_or_patterns))
    chosen = set(by_source) if sources is None else set(sources)
    edges: List[AggregateEdge] = []
    for source in sorted(chosen & set(by_source)):
        patterns = by_source[source]
        mean_g = float(np.mean([p.token_influence for p in patterns]))
        heads: Dict[Tuple[int, int, int, str], Counter] = defaultdict(Counter)
        for pattern in patterns:
            for step in route_steps(pattern, level):
                key = (step.layer, step.start, step.end, step.kind)
                heads[key][step.head] += 1
        for (layer, start, end, kind), counter in sorted(heads.items()):
            count = sum(counter.values())
            head, used = counter.most_common(1)[0]
            edges.append(
                AggregateEdge(
                    source=source,
                    layer=layer,
                    start=start,
                    end=end,
                    kind=kind,
                    count=count,
                    instances=len(patterns),
                    fraction=count / len(patterns),
                    head=head if kind == "head" and used > count / 2 else None,
                    mean_token_influence=mean_g,
                )
            )
    return edges
