"""Hand-made patterns and results for tests of the figures and pages, with numbers
small enough to work out by hand, and helpers that read a drawn figure back.

:func:`small_result`: four layers over :data:`TOKENS`, output at :data:`OUTPUT` (the
[MASK]), three sources above the default threshold and one below.
"""

from __future__ import annotations

import io
from typing import List, Optional, Sequence, Tuple

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..results import InfluencePatternsResult, Pattern, PatternNode

#: ``(position, head or None for the skip)`` per layer.
Route = Sequence[Tuple[int, Optional[int]]]
#: The tokens of :func:`small_result`: word pieces and markup that labels must clean
#: and escape.
TOKENS = ["[CLS]", "the", "##s", "<script>", "[MASK]", "[SEP]"]
OUTPUT = 4


def make_pattern(
    source: int, route: Route, g: float, length: int = 6, heads: int = 4
) -> Pattern:
    """A pattern along ``route`` (``(position, head or None)`` per layer)."""
    sign = -1 if g < 0 else 1
    values = [g * 0.9**layer for layer in range(1, len(route) + 1)]
    nodes = [
        PatternNode(
            layer=layer,
            position=position,
            kind="skip" if head is None else "head",
            head=head,
            influence=value,
        )
        for layer, ((position, head), value) in enumerate(zip(route, values), start=1)
    ]
    position_candidates = []
    node_candidates = []
    for layer, (position, head) in enumerate(route, start=1):
        row = [0.01 * (j + layer) * sign for j in range(length)]
        row[position] = values[layer - 1]
        position_candidates.append(row)
        cands = [0.02 * n * sign for n in range(heads + 1)]
        cands[heads if head is None else head] = values[layer - 1]
        node_candidates.append(cands)
    # I(e) and the position influences are 1.1 times the node influences
    return Pattern(
        source=source, sign=sign, token_influence=g,
        positions=[source] + [position for position, _ in route],
        position_influence=[v * 1.1 for v in values],
        embedding_influence=values[-1] * 1.1, nodes=nodes, influence=values[-1],
        position_candidates=position_candidates, node_candidates=node_candidates,
    )


def make_result(
    examples: List[List[Pattern]],
    tokens: Sequence[str],
    output: int,
    input_ids: Optional[List[int]] = None,
) -> InfluencePatternsResult:
    """A result of ``examples`` (rows of patterns) over ``tokens`` (ids: ``input_ids``,
    default 0, 1, ...); each source's g is its pattern's token influence."""
    token_influence = torch.zeros(len(examples), len(tokens), dtype=torch.float64)
    for b, patterns in enumerate(examples):
        for p in patterns:
            token_influence[b, p.source] = p.token_influence
    return InfluencePatternsResult(
        token_influence=token_influence,
        patterns=examples,
        output_positions=[output] * len(examples),
        input_ids=[input_ids or list(range(len(tokens)))] * len(examples),
        tokens=[list(tokens)] * len(examples),
    )


def small_result() -> InfluencePatternsResult:
    """Four layers, output 4: three sources above the threshold, one below."""
    patterns = [
        make_pattern(0, [(0, None), (0, None), (4, 2), (4, None)], 5.0),
        make_pattern(1, [(1, None), (4, 1), (4, None), (4, 3)], -3.0),
        make_pattern(2, [(2, 0), (2, None), (2, None), (4, 0)], 0.1),
        make_pattern(3, [(4, 3), (4, None), (4, None), (4, None)], 1.0),
    ]
    return make_result([patterns], TOKENS, OUTPUT)


def aggregate_instances() -> List[List[Pattern]]:
    """Four instances of source 0 (output 4, three layers)."""
    routes = [
        [(0, None), (4, 1), (4, None)],
        [(0, None), (4, 1), (4, None)],
        [(0, None), (4, 1), (4, 2)],
        [(4, 2), (4, 3), (4, 3)],
    ]
    gs = [1.0, 2.0, 0.5, -0.5]
    return [
        [make_pattern(0, route, g), make_pattern(1, [(1, None), (1, None), (4, 0)], -1)]
        for route, g in zip(routes, gs)
    ]


def lines(ax: Axes, kind: str) -> list:
    """The edges of ``kind`` (skip, head, position) drawn on ``ax``."""
    return [line for line in ax.get_lines() if line.get_gid() == f"edge-{kind}"]


def texts(ax: Axes, gid: str) -> List[str]:
    """The texts with ``gid`` drawn on ``ax``."""
    return [t.get_text() for t in ax.texts if t.get_gid() == gid]


def render(fig: Figure) -> None:
    """Draws ``fig`` (to PNG, in memory), so that layout runs and errors surface."""
    fig.savefig(io.BytesIO(), format="png", dpi=40)
