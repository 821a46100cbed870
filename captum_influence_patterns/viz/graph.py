"""Drawing one route graph on an axis (docs/method.md, section 11): layers left to
right, tokens top to bottom, each route an edge per layer (width by its influence,
colour by its sign, heads labelled), the output position marked and a legend below.
:mod:`.plots` builds the figures around it."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.patheffects import Normal, Stroke

from .edges import Edge, row_lanes
from .figures import (
    axis_points,
    clamp,
    label_tokens,
    legend_below,
    outline,
    sign_color,
)
from .tokens import display_text, drawable


# The weakest route stays visible (the paper's example subject has I/g 0.03).
_MIN_LINEWIDTH = 1.6


# A white outline this much wider than each edge keeps side-by-side routes apart.
_HALO = 1.2


# Routes waiting on their last row after arriving: fainter, one lane each.
_ARRIVED_ALPHA = 0.35


def draw_graph(
    ax: Axes,
    edges: Sequence[Edge],
    tokens: Sequence[str],
    output_position: Optional[int],
    num_layers: int,
    level: str,
    cmap: Colormap,
    max_linewidth: float,
    show_legend: bool,
    title: Optional[str],
    width_legend: str,
    legend_notes: Sequence[str] = (),
) -> None:
    """Draw route edges on ``ax``: x = layer 0..L, y = token position.

    ``legend_notes`` are extra legend lines (e.g. which sources were left out).
    """
    length = len(tokens)
    ax.set_xlim(-0.45, num_layers + 0.85)
    label_size = label_tokens(ax, tokens, output_position, keep=_edge_sources(edges))
    width_points, height_points = axis_points(ax)
    column_points = width_points / (num_layers + 1.2)
    row_points = height_points / max(length, 1)
    _layer_ticks(ax, num_layers, column_points)
    grid_x, grid_y = np.meshgrid(np.arange(num_layers + 1), np.arange(length))
    ax.scatter(
        grid_x.ravel(),
        grid_y.ravel(),
        s=4,
        color="#d0d0d0",
        zorder=1,
        gid="grid",
        linewidths=0,
    )
    text_size = clamp(min(0.33 * column_points, 0.55 * row_points), 5.0, 8.0)
    _draw_edges(ax, edges, cmap, max_linewidth, text_size, row_points, column_points)
    if output_position is not None:
        _mark_output(ax, num_layers, output_position, text_size)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    if show_legend:
        legend_below(
            ax,
            _graph_legend(level, cmap, width_legend, edges, legend_notes),
            max(label_size, 7.0),
        )
    if title:
        ax.set_title(drawable(title), fontsize=11)


def _edge_sources(edges: Sequence[Edge]) -> List[int]:
    return sorted({edge.source for edge in edges})


def _layer_ticks(ax: Axes, num_layers: int, column_points: float) -> None:
    """Layer numbers on top: ``emb`` for the embedding column, then 1..L."""
    fontsize = clamp(0.45 * column_points, 6.0, 9.0)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xticks(range(num_layers + 1))
    ax.set_xticklabels(
        ["emb"] + [str(layer) for layer in range(1, num_layers + 1)],
        fontsize=fontsize,
        rotation=90 if column_points < 2.2 * fontsize else 0,
    )
    ax.tick_params(axis="x", length=0)
    ax.set_xlabel("layer", fontsize=fontsize)
    ax.set_ylabel("token (position)", fontsize=fontsize)


def _draw_edges(
    ax: Axes,
    edges: Sequence[Edge],
    cmap: Colormap,
    max_linewidth: float,
    text_size: float,
    row_points: float,
    column_points: float,
) -> None:
    """Edges side by side where routes share one; head labels on top.

    A route that has reached its final row keeps one lane of its own there, drawn
    faint and no wider than its lane (``row_points``: points per row), so routes
    arriving at the output early do not merge into one band; a white outline keeps
    neighbouring lanes apart. Head labels of one layer are spread so that none
    overlaps another, and shrunk to fit their column (``column_points`` wide).
    """
    groups: Dict[Tuple[int, int, int], List[Edge]] = defaultdict(list)
    for edge in edges:
        groups[(edge.step.layer, edge.step.start, edge.step.end)].append(edge)
    lanes = row_lanes(edges)
    nodes: Dict[Tuple[int, int], int] = {}
    labels: Dict[int, List[Tuple[float, str]]] = defaultdict(list)
    for (layer, start, end), group in sorted(groups.items()):
        group.sort(key=lambda e: (e.source, e.step.kind))
        moving = [edge for edge in group if not edge.arrived]
        spacing = min(0.12, 0.5 / max(len(moving) - 1, 1))
        offsets = {
            id(edge): (lane - (len(moving) - 1) / 2) * spacing
            for lane, edge in enumerate(moving)
        }
        for edge in group:
            width = _linewidth(edge.weight, max_linewidth)
            if edge.arrived:
                offset, gap = lanes[edge.source]
                width = max(_MIN_LINEWIDTH, min(width, 0.8 * gap * row_points))
            else:
                offset = offsets[id(edge)]
            ax.plot(
                [layer - 1, layer],
                [start + offset, end + offset],
                linestyle="--" if edge.step.kind == "skip" else "-",
                color=sign_color(cmap, edge.sign),
                linewidth=width,
                alpha=_ARRIVED_ALPHA if edge.arrived else 0.85,
                solid_capstyle="round",
                dash_capstyle="round",
                zorder=2 + (1.0 - edge.weight),
                gid=f"edge-{edge.step.kind}",
                path_effects=[
                    Stroke(linewidth=width + _HALO, foreground="white"),
                    Normal(),
                ],
            )
            nodes[(layer - 1, start)] = nodes.get((layer - 1, start), edge.sign)
            nodes[(layer, end)] = nodes.get((layer, end), edge.sign)
        heads = sorted({e.label for e in group if e.label is not None}, key=_head_order)
        if heads:
            labels[layer].append(((start + end) / 2, ",".join(heads)))
    for layer, placed in labels.items():
        _head_labels(ax, layer, placed, text_size, row_points, column_points)
    if nodes:
        points = np.array(list(nodes))
        ax.scatter(
            points[:, 0],
            points[:, 1],
            s=14,
            color="#303030",
            zorder=4,
            gid="route-node",
            linewidths=0,
        )


def _head_labels(
    ax: Axes,
    layer: int,
    placed: List[Tuple[float, str]],
    text_size: float,
    row_points: float,
    column_points: float,
) -> None:
    """The head labels of one layer's edges, at their edges' middles, moved down
    (keeping their order) until each is a text line's height below the one above,
    and shrunk so that the longest fits in its column."""
    longest = max(len(text) for _, text in placed)
    size = min(text_size, 0.85 * column_points / (0.62 * longest + 0.6))
    gap = 1.45 * size / max(row_points, 1e-9)  # rows per label line, with its box
    placed = sorted(placed)
    ys = [y for y, _ in placed]
    for k in range(1, len(ys)):
        ys[k] = max(ys[k], ys[k - 1] + gap)
    for y, (_, text) in zip(ys, placed):
        ax.text(
            layer - 0.5,
            y,
            text,
            fontsize=size,
            ha="center",
            va="center",
            zorder=5,
            gid="head-label",
            bbox={
                "boxstyle": "round,pad=0.15",
                "fc": "white",
                "ec": "none",
                "alpha": 0.85,
            },
        )


def _head_order(label: str) -> Tuple[int, str]:
    return (int(label), label) if label.isdigit() else (10**9, label)


def _linewidth(weight: float, max_linewidth: float) -> float:
    """Line width of an edge of weight ``weight`` in [0, 1]."""
    return _MIN_LINEWIDTH + (max_linewidth - _MIN_LINEWIDTH) * weight


def _mark_output(
    ax: Axes, num_layers: int, output_position: int, text_size: float
) -> None:
    outline(ax, (num_layers - 0.22, output_position - 0.4), (0.44, 0.8), 1.6,
            "output-marker", zorder=6)
    ax.text(
        num_layers + 0.3,
        output_position,
        "output",
        fontsize=text_size,
        ha="left",
        va="center",
        fontweight="bold",
        gid="output-label",
    )


def _graph_legend(
    level: str,
    cmap: Colormap,
    width_legend: str,
    edges: Sequence[Edge],
    notes: Sequence[str],
) -> List[Any]:
    if level == "embedding":
        handles = [Line2D([], [], color="black", label="route (positions)")]
    else:
        handles = [
            Line2D([], [], color="black", linestyle="--", label="skip"),
            Line2D([], [], color="black", label="head n"),
        ]
    handles += [
        Line2D([], [], color=sign_color(cmap, 1), linewidth=3, label="g > 0"),
        Line2D([], [], color=sign_color(cmap, -1), linewidth=3, label="g < 0"),
        Patch(fill=False, edgecolor="black", label="output position"),
        Line2D([], [], color="none", label=f"width: {width_legend}"),
    ]
    if any(edge.arrived for edge in edges):
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                alpha=_ARRIVED_ALPHA,
                linewidth=2,
                label="faint: route already at its last row",
            )
        )
    return handles + [
        Line2D([], [], color="none", label=display_text(note)) for note in notes
    ]
