"""Drawing influence patterns, in the style of :mod:`captum.attr.visualization`.

Every plotting function returns ``(Figure, Axes)`` and accepts ``plt_fig_axis``,
``use_pyplot``, ``fig_size``, ``title`` and ``cmap`` like Captum's helpers:

- :func:`visualize_pattern` draws one example's routes (docs/method.md, section 11):
  layers left to right, tokens top to bottom; :func:`visualize_pattern_graph` is the
  same drawing for any list of :class:`~captum_influence_patterns.Pattern` (reference
  routes too).
- :func:`visualize_patterns_aggregate` draws many instances of one task, edge width the
  fraction of instances whose route uses the edge (see :func:`aggregate_edges`).
- :func:`visualize_token_influence` draws ``g``, ``I(pi^e)`` and ``I(pi^a)`` per token.
- :func:`visualize_candidates` draws the influences a search chose from, per layer.

The route data behind the drawings is in :mod:`~captum_influence_patterns.viz.edges`,
the token labels in :mod:`~captum_influence_patterns.viz.tokens` and the HTML view in
:mod:`~captum_influence_patterns.viz.html`; :func:`aggregate_edges`,
:func:`clean_token`, :func:`pattern_html` and :func:`display_pattern_html` are
importable from here too.
"""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.patheffects import Stroke, Normal
from matplotlib.ticker import MaxNLocator

from .edges import (  # noqa: F401 (AggregateEdge is re-exported)
    AggregateEdge,
    Edge,
    PatternLike,
    ResultLike,
    ResultsOrPatterns,
    Step,
    aggregate_edges,
    check_level,
    instance_edges,
    instances,
    is_pattern,
    num_layers,
    pattern_output,
    patterns_by_source,
    row_lanes,
    select_sources,
    shared_layout,
    sign,
    token_statistics,
)

# Re-exported: the CLI and scripts import these from here.
from .html import display_pattern_html, pattern_html  # noqa: F401
from .tokens import clean_token, display_label, display_text, drawable, sentence

STAGES = ("positions", "nodes")
NORMALIZATIONS = ("global", "layer")

FigAxis = Tuple[Figure, Axes]

# Captum's default diverging map (captum/attr/_utils/visualization.py).
DEFAULT_CMAP = LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"])
# Bar colours of the token panel: g, I(pi^e), I(pi^a).
SERIES_COLORS = ("#4d4d4d", "#4c72b0", "#dd8452")
SERIES_LABELS = ("g", "I(π^e)", "I(π^a)")

# The weakest route stays visible (the paper's example subject has I/g 0.03).
_MIN_LINEWIDTH = 1.6
# A white outline this much wider than each edge keeps side-by-side routes apart.
_HALO = 1.2
_PANEL_WIDTH = 3.5
#: The legend line of a token panel where a route's influence exceeds g.
_ABOVE_G = (
    "I(π) above g: g sums every route, and the others cancel part of this one"
)  # inches added for the token panel beside a graph
# Routes waiting on their last row after arriving: fainter, one lane each.
_ARRIVED_ALPHA = 0.35

# --------------------------------------------------------------------------------------
# Figures and axes
# --------------------------------------------------------------------------------------


def _new_figure(
    fig_size: Tuple[float, float],
    use_pyplot: bool,
    ncols: int = 1,
    width_ratios: Optional[Sequence[float]] = None,
) -> Tuple[Figure, Any]:
    """A constrained-layout figure with ``ncols`` axes side by side (Captum style)."""
    gridspec = {"width_ratios": list(width_ratios)} if width_ratios else None
    if use_pyplot:
        return plt.subplots(
            1, ncols, figsize=fig_size, layout="constrained", gridspec_kw=gridspec
        )
    fig = Figure(figsize=fig_size, layout="constrained")
    return fig, fig.subplots(1, ncols, gridspec_kw=gridspec)


def _figure_and_axis(
    plt_fig_axis: Optional[FigAxis], use_pyplot: bool, fig_size: Tuple[float, float]
) -> FigAxis:
    if plt_fig_axis is not None:
        return plt_fig_axis
    return _new_figure(fig_size, use_pyplot)


def _finish(use_pyplot: bool) -> None:
    if use_pyplot:
        plt.show()


def _colormap(cmap: Union[None, str, Colormap]) -> Colormap:
    if cmap is None:
        return DEFAULT_CMAP
    return plt.get_cmap(cmap) if isinstance(cmap, str) else cmap


def _sign_color(cmap: Colormap, sign: int) -> Any:
    return cmap(1.0 if sign > 0 else 0.0)


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _graph_fig_size(
    length: int, layers: int, extra_width: float = 0.0
) -> Tuple[float, float]:
    """A figure size that grows with the layers (width) and tokens (height)."""
    width = _clamp(2.2 + 0.62 * (layers + 1), 5.5, 18.0) + extra_width
    height = _clamp(2.0 + 0.3 * length, 3.5, 24.0)
    return width, height


def _axis_points(ax: Axes) -> Tuple[float, float]:
    """Approximate width and height of ``ax`` in points."""
    box = ax.get_position()
    fig = ax.get_figure()
    return box.width * fig.get_figwidth() * 72, box.height * fig.get_figheight() * 72


def _label_tokens(
    ax: Axes,
    tokens: Sequence[str],
    output_position: Optional[int],
    keep: Sequence[int] = (),
) -> float:
    """Token labels on the y axis (top to bottom), thinned when rows are too close.

    The output position's label is bold; positions in ``keep`` and the output position
    are always labelled. Returns the font size used.
    """
    length = len(tokens)
    row_points = _axis_points(ax)[1] / max(length, 1)
    fontsize = _clamp(0.72 * row_points, 4.0, 10.0)
    step = max(1, math.ceil(1.2 * fontsize / row_points))
    always = set(keep) | ({output_position} if output_position is not None else set())
    shown = [j for j in range(length) if j % step == 0 or j in always]
    ax.set_yticks(shown)
    labels = ax.set_yticklabels(
        [display_label(tokens[j]) for j in shown], fontsize=fontsize
    )
    for j, label in zip(shown, labels):
        if j == output_position:
            label.set_fontweight("bold")
    ax.set_ylim(length - 0.5, -0.5)
    ax.tick_params(axis="y", length=0)
    return fontsize


def _legend_below(
    ax: Axes, handles: Sequence[Any], fontsize: float = 8.0, gap: float = 0.01
) -> None:
    """A frameless legend under ``ax``, with as many columns as its width allows."""
    ncol = _legend_columns(
        [handle.get_label() for handle in handles], fontsize, _axis_points(ax)[0]
    )
    ax.legend(
        handles=list(handles),
        loc="upper center",
        bbox_to_anchor=(0.5, -gap),
        ncol=ncol,
        frameon=False,
        fontsize=fontsize,
        handlelength=1.6,
        columnspacing=1.2,
    )


def _legend_columns(labels: Sequence[str], fontsize: float, width: float) -> int:
    """The most legend columns (filled top to bottom) that fit in ``width`` points."""
    entries = [fontsize * (4.0 + 0.55 * len(label)) for label in labels]
    for ncol in range(len(entries), 1, -1):
        rows = math.ceil(len(entries) / ncol)
        columns = [entries[c * rows : (c + 1) * rows] for c in range(ncol)]
        if sum(max(column) for column in columns if column) <= 1.1 * width:
            return ncol
    return 1


# --------------------------------------------------------------------------------------
# The route graph
# --------------------------------------------------------------------------------------


def _draw_graph(
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
    label_size = _label_tokens(ax, tokens, output_position, keep=_edge_sources(edges))
    width_points, height_points = _axis_points(ax)
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
    text_size = _clamp(min(0.33 * column_points, 0.55 * row_points), 5.0, 8.0)
    _draw_edges(ax, edges, cmap, max_linewidth, text_size, row_points, column_points)
    if output_position is not None:
        _mark_output(ax, num_layers, output_position, text_size)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    if show_legend:
        _legend_below(
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
    fontsize = _clamp(0.45 * column_points, 6.0, 9.0)
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
                color=_sign_color(cmap, edge.sign),
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
    ax.add_patch(
        Rectangle(
            (num_layers - 0.22, output_position - 0.4),
            0.44,
            0.8,
            fill=False,
            edgecolor="black",
            linewidth=1.6,
            zorder=6,
            gid="output-marker",
        )
    )
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
        Line2D([], [], color=_sign_color(cmap, 1), linewidth=3, label="g > 0"),
        Line2D([], [], color=_sign_color(cmap, -1), linewidth=3, label="g < 0"),
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


def visualize_pattern_graph(
    patterns: Sequence[PatternLike],
    tokens: Sequence[str],
    output_position: Optional[int] = None,
    level: str = "attention",
    title: Optional[str] = None,
    plt_fig_axis: Optional[FigAxis] = None,
    use_pyplot: bool = True,
    fig_size: Optional[Tuple[float, float]] = None,
    cmap: Union[None, str, Colormap] = None,
    max_linewidth: float = 6.0,
    show_legend: bool = True,
) -> FigAxis:
    """Draw the routes of some patterns of one input (the core of the graph views).

    Layers run left to right (embedding column, then one column per layer), tokens top
    to bottom. Each pattern gives one edge per layer from ``(l-1, j_{l-1})`` to
    ``(l, j_l)``: dashed for the skip connection, solid for a head (labelled with its
    number); green when ``g > 0``, red when ``g < 0``; width by the ``|influence|`` of
    the node (normalised to the largest in the figure).

    Args:
        patterns (sequence of Pattern): The patterns to draw (any route source:
            the search or a baseline).
        tokens (sequence of str): Token strings of the input, one per position.
        output_position (int, optional): Position read by the QoI, marked with a box.
            Default: the last position of the first pattern.
        level (str, optional): ``"attention"`` (skip or head per layer) or
            ``"embedding"`` (the positions only, solid and unlabelled).
            Default: ``"attention"``
        title (str, optional): Axis title. Default: None
        plt_fig_axis (tuple, optional): ``(fig, ax)`` to draw on. Default: None (a new
            figure)
        use_pyplot (bool, optional): Create the figure with pyplot and call
            ``plt.show()``. Default: True
        fig_size (tuple, optional): Figure size in inches. Default: grows with the
            number of layers and tokens.
        cmap (str or Colormap, optional): Diverging map; its ends colour positive and
            negative routes. Default: red-white-green
        max_linewidth (float, optional): Width of the most influential edge.
            Default: 6.0
        show_legend (bool, optional): Draw the legend below the graph. Default: True

    Returns:
        tuple: ``(Figure, Axes)``.
    """
    check_level(level)
    patterns = list(patterns)
    layers = num_layers(patterns)
    if output_position is None:
        output_position = pattern_output(patterns)
    fig, ax = _figure_and_axis(
        plt_fig_axis, use_pyplot, fig_size or _graph_fig_size(len(tokens), layers)
    )
    _draw_graph(
        ax,
        instance_edges(patterns, level),
        tokens,
        output_position,
        layers,
        level,
        _colormap(cmap),
        max_linewidth,
        show_legend,
        title,
        "|influence|",
    )
    _finish(use_pyplot)
    return fig, ax


def visualize_pattern(
    result: ResultLike,
    example: int = 0,
    sources: Optional[Sequence[int]] = None,
    level: str = "attention",
    threshold: float = 0.05,
    title: Optional[str] = None,
    plt_fig_axis: Optional[Union[FigAxis, Tuple[Figure, Sequence[Axes]]]] = None,
    use_pyplot: bool = True,
    fig_size: Optional[Tuple[float, float]] = None,
    cmap: Union[None, str, Colormap] = None,
    show_token_panel: bool = False,
    max_linewidth: float = 6.0,
    show_legend: bool = True,
    qoi: Optional[str] = None,
) -> FigAxis:
    """Draw the influence patterns of one example of a result.

    See :func:`visualize_pattern_graph` for the drawing. This is what
    :meth:`InfluencePatternsResult.plot` calls. The default title names the sentence
    and the quantity of interest; when sources under ``threshold`` are left out of the
    drawing, the legend says how many (the token panel still shows their bars).

    Args:
        result (InfluencePatternsResult): What :meth:`InfluencePatterns.attribute`
            returned.
        example (int, optional): Example index in the batch. Default: 0
        sources (sequence of int, optional): Source positions to draw. Default: those
            with ``|g| >= threshold * sum |g|`` over the example's patterns.
        level (str, optional): ``"attention"`` or ``"embedding"``.
            Default: ``"attention"``
        threshold (float, optional): Share of the total ``|g|`` a source needs to be
            drawn when ``sources`` is None; 0 draws all. Default: 0.05
        title (str, optional): Axis title. Default: the sentence, then the QoI.
        plt_fig_axis (tuple, optional): ``(fig, ax)`` to draw on, or
            ``(fig, (graph_ax, panel_ax))`` with ``show_token_panel``. Default: None
        use_pyplot (bool, optional): Create the figure with pyplot and call
            ``plt.show()``. Default: True
        fig_size (tuple, optional): Figure size in inches. Default: grows with the
            number of layers and tokens.
        cmap (str or Colormap, optional): Diverging map for the sign colours.
            Default: red-white-green
        show_token_panel (bool, optional): Add :func:`visualize_token_influence` (bars
            of every source, drawn or not) as a panel to the right, sharing the token
            rows. Default: False
        max_linewidth (float, optional): Width of the most influential edge.
            Default: 6.0
        show_legend (bool, optional): Draw the legend below the graph. Default: True
        qoi (str, optional): The quantity of interest in words, for the default
            title. Default: ``result.metadata["qoi"]`` (set by
            :func:`~captum_influence_patterns.models.loading.explain`), else the
            output position and its token.

    Returns:
        tuple: ``(Figure, Axes)``, the graph's axes (the panel is ``fig.axes[1]``).
    """
    check_level(level)
    patterns = result.patterns[example]
    tokens = result.token_labels(example)
    output = result.output_positions[example]
    chosen = select_sources(
        {p.source: p.token_influence for p in patterns}, sources, threshold
    )
    drawn = [p for p in patterns if p.source in chosen]
    layers = num_layers(patterns)
    if title is None:
        title = _example_title(result, example, qoi)
    fig_size = fig_size or _graph_fig_size(
        len(tokens), layers, _PANEL_WIDTH if show_token_panel else 0
    )
    fig, graph_ax, panel_ax = _graph_and_panel(
        plt_fig_axis, use_pyplot, fig_size, show_token_panel
    )
    _draw_graph(
        graph_ax,
        instance_edges(drawn, level),
        tokens,
        output,
        num_layers(drawn),
        level,
        _colormap(cmap),
        max_linewidth,
        show_legend,
        title,
        "|influence|",
        _left_out_note(len(patterns) - len(drawn), sources, threshold),
    )
    if panel_ax is not None:
        visualize_token_influence(
            result,
            example=example,
            plt_fig_axis=(fig, panel_ax),
            use_pyplot=False,
            show_token_labels=False,
            title="token influence",
        )
    _finish(use_pyplot)
    return fig, graph_ax


def _example_title(result: ResultLike, example: int, qoi: Optional[str]) -> str:
    """The sentence of one example (its index in a batch), then the QoI."""
    tokens = result.token_labels(example)
    output = result.output_positions[example]
    if qoi is None:
        qoi = result.metadata.get("qoi")
    if qoi is None:
        qoi = (
            "pooled over positions"
            if output is None
            else f"read at position {output} ({clean_token(tokens[output])})"
        )
    text = result.metadata.get("text") or sentence(tokens)
    if len(result) > 1:
        text = f"example {example}: {text}"
    lines = [textwrap.shorten(text, 90, placeholder=" …")]
    lines += textwrap.wrap(f"QoI: {qoi}", 90)
    return display_text("\n".join(lines))


def _left_out_note(
    left_out: int, sources: Optional[Sequence[int]], threshold: float
) -> List[str]:
    """The legend line saying how many sources the drawing leaves out, if any."""
    if left_out == 0:
        return []
    plural = "s" if left_out > 1 else ""
    if sources is not None:
        return [f"{left_out} source{plural} not drawn (not in sources)"]
    return [
        f"{left_out} source{plural} with |g| < {threshold:.0%} of sum |g| not drawn"
    ]


def _graph_and_panel(
    plt_fig_axis: Optional[Any],
    use_pyplot: bool,
    fig_size: Tuple[float, float],
    show_token_panel: bool,
) -> Tuple[Figure, Axes, Optional[Axes]]:
    """The figure, the graph axis and (with a token panel) the panel axis."""
    if plt_fig_axis is not None:
        fig, axes = plt_fig_axis
        if not show_token_panel:
            return fig, axes, None
        if isinstance(axes, Axes):
            raise ValueError(
                "show_token_panel needs plt_fig_axis=(fig, (graph_ax, panel_ax))"
            )
        graph_ax, panel_ax = axes
        return fig, graph_ax, panel_ax
    if not show_token_panel:
        fig, ax = _new_figure(fig_size, use_pyplot)
        return fig, ax, None
    graph_width = max(fig_size[0] - _PANEL_WIDTH, 1.0)
    fig, (graph_ax, panel_ax) = _new_figure(
        fig_size, use_pyplot, ncols=2, width_ratios=(graph_width, _PANEL_WIDTH)
    )
    panel_ax.sharey(graph_ax)
    return fig, graph_ax, panel_ax


def visualize_patterns_aggregate(
    results_or_patterns: ResultsOrPatterns,
    tokens: Optional[Sequence[str]] = None,
    output_position: Optional[int] = None,
    level: str = "attention",
    sources: Optional[Sequence[int]] = None,
    threshold: float = 0.05,
    min_fraction: float = 0.0,
    title: Optional[str] = None,
    plt_fig_axis: Optional[FigAxis] = None,
    use_pyplot: bool = True,
    fig_size: Optional[Tuple[float, float]] = None,
    cmap: Union[None, str, Colormap] = None,
    max_linewidth: float = 6.0,
    show_legend: bool = True,
) -> FigAxis:
    """Draw the routes of many instances of one task in one graph.

    All instances must have the same length and output position (a task of
    equal-length sentences). For each source position and each edge, the width is the
    fraction of instances whose route uses the edge (:func:`aggregate_edges`); a head
    edge is labelled with its most frequent head when more than half of the instances
    using the edge use that head; colour by the sign of the source's mean ``g``.

    Args:
        results_or_patterns (InfluencePatternsResult, list): The instances: one result
            (every example of it), a list of results, or a list of pattern lists (one
            list per instance).
        tokens (sequence of str, optional): Row labels, e.g. one instance's tokens or
            role names. Default: the first instance's tokens (required for patterns).
        output_position (int, optional): The shared output position. Default: the
            instances' own.
        level (str, optional): ``"attention"`` or ``"embedding"``.
            Default: ``"attention"``
        sources (sequence of int, optional): Source positions to draw. Default: those
            with mean ``|g| >= threshold * sum`` of mean ``|g|``.
        threshold (float, optional): See ``sources``. Default: 0.05
        min_fraction (float, optional): Leave out edges used by a smaller fraction of
            a source's instances (rare detours). Default: 0.0
        title (str, optional): Axis title. Default: the number of instances.
        plt_fig_axis (tuple, optional): ``(fig, ax)`` to draw on. Default: None
        use_pyplot (bool, optional): Create the figure with pyplot and call
            ``plt.show()``. Default: True
        fig_size (tuple, optional): Figure size in inches. Default: grows with the
            number of layers and tokens.
        cmap (str or Colormap, optional): Diverging map for the sign colours.
            Default: red-white-green
        max_linewidth (float, optional): Width of an edge that every instance uses.
            Default: 6.0
        show_legend (bool, optional): Draw the legend below the graph. Default: True

    Returns:
        tuple: ``(Figure, Axes)``.
    """
    check_level(level)
    found = instances(results_or_patterns)
    tokens, output_position = shared_layout(found, tokens, output_position)
    by_source = patterns_by_source(found)
    mean_g = {
        s: float(np.mean([p.token_influence for p in ps]))
        for s, ps in by_source.items()
    }
    chosen = select_sources(mean_g, sources, threshold)
    edges = [
        Edge(
            step=Step(e.layer, e.start, e.end, e.kind, e.head, e.fraction),
            weight=e.fraction,
            sign=sign(e.mean_token_influence),
            source=e.source,
            label=None if e.head is None else str(e.head),
        )
        for e in aggregate_edges([i.patterns for i in found], level, chosen)
        if e.fraction >= min_fraction
    ]
    layers = max(num_layers(ps) for ps in by_source.values())
    if title is None:
        title = f"Influence patterns ({level} level) of {len(found)} instances"
    fig, ax = _figure_and_axis(
        plt_fig_axis, use_pyplot, fig_size or _graph_fig_size(len(tokens), layers)
    )
    _draw_graph(
        ax,
        edges,
        tokens,
        output_position,
        layers,
        level,
        _colormap(cmap),
        max_linewidth,
        show_legend,
        title,
        "share of instances",
    )
    _finish(use_pyplot)
    return fig, ax


# --------------------------------------------------------------------------------------
# Token panel
# --------------------------------------------------------------------------------------


def visualize_token_influence(
    results_or_patterns: ResultsOrPatterns,
    example: Optional[int] = 0,
    tokens: Optional[Sequence[str]] = None,
    sources: Optional[Sequence[int]] = None,
    title: Optional[str] = None,
    plt_fig_axis: Optional[FigAxis] = None,
    use_pyplot: bool = True,
    fig_size: Optional[Tuple[float, float]] = None,
    show_token_labels: bool = True,
    show_legend: bool = True,
) -> FigAxis:
    """Bars of ``g``, ``I(pi^e)`` and ``I(pi^a)`` per token, one row per position.

    The rows match :func:`visualize_pattern`'s (token 0 at the top), so the panel can
    sit beside the graph on an axis of its own (``plt_fig_axis``) or stand alone.

    Args:
        results_or_patterns (InfluencePatternsResult, list): A result, a list of
            results, a list of pattern lists (one per instance) or one pattern list.
        example (int, optional): Instance to draw (the index into all examples of the
            input); None averages each position's values over all instances that
            have it as a source. Default: 0
        tokens (sequence of str, optional): Row labels. Default: the instance's tokens
            (required for patterns without a result).
        sources (sequence of int, optional): Positions to draw bars for. Default: all
            sources.
        title (str, optional): Axis title. Default: "token influence" ("mean over N
            instances" with ``example=None``)
        plt_fig_axis (tuple, optional): ``(fig, ax)`` to draw on. Default: None
        use_pyplot (bool, optional): Create the figure with pyplot and call
            ``plt.show()``. Default: True
        fig_size (tuple, optional): Figure size in inches. Default: grows with the
            number of tokens.
        show_token_labels (bool, optional): Label the rows (off when the panel shares
            the graph's rows). Default: True
        show_legend (bool, optional): Draw the legend below the bars. Default: True

    Returns:
        tuple: ``(Figure, Axes)``.
    """
    found = instances(results_or_patterns)
    if example is not None:
        found = [found[example]]
    tokens, output_position = shared_layout(found, tokens, None)
    stats = token_statistics(found)
    chosen = (
        sorted(stats)
        if sources is None
        else select_sources({s: v[0] for s, v in stats.items()}, sources, 0.0)
    )
    default_size = (5.0, _graph_fig_size(len(tokens), 0)[1])
    fig, ax = _figure_and_axis(plt_fig_axis, use_pyplot, fig_size or default_size)
    height = 0.27
    for k, (color, label) in enumerate(zip(SERIES_COLORS, SERIES_LABELS)):
        ax.barh(
            [s + (k - 1) * height for s in chosen],
            [float(stats[s][k]) for s in chosen],
            height=height,
            color=color,
            label=label,
            gid=f"bar-{k}",
        )
    ax.axvline(0.0, color="black", linewidth=0.8)
    if show_token_labels:
        _label_tokens(ax, tokens, output_position, keep=chosen)
    else:
        ax.set_ylim(len(tokens) - 0.5, -0.5)
        ax.tick_params(axis="y", left=False, labelleft=False)
        _label_bars(ax, tokens, chosen, output_position)
    if output_position is not None:
        ax.axhspan(
            output_position - 0.5, output_position + 0.5, color="#eeeeee", zorder=0
        )
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, symmetric=False))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    ax.tick_params(axis="x", labelsize=7)
    ax.xaxis.get_offset_text().set_fontsize(7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel("influence on the QoI", fontsize=7)
    if show_legend:
        handles = [
            Patch(color=c, label=lbl) for c, lbl in zip(SERIES_COLORS, SERIES_LABELS)
        ]
        if any(abs(float(stats[s][k])) > abs(float(stats[s][0])) for s in chosen
               for k in (1, 2)):
            handles.append(Line2D([], [], color="none", label=_ABOVE_G))
        _legend_below(ax, handles, gap=0.06)
    if title is None:
        title = (
            "token influence" if example is not None
            else f"mean over {len(found)} instances"
        )
    if title:
        ax.set_title(drawable(title), fontsize=10)
    _finish(use_pyplot)
    return fig, ax


def _label_bars(
    ax: Axes, tokens: Sequence[str], chosen: Sequence[int], output: Optional[int]
) -> None:
    """Each bar group's token at the panel's right edge (the shared rows are bare)."""
    row_points = _axis_points(ax)[1] / max(len(tokens), 1)
    fontsize = _clamp(0.72 * row_points, 4.0, 8.0)
    for source in chosen:
        ax.text(
            1.01,
            source,
            display_label(tokens[source]),
            transform=ax.get_yaxis_transform(),
            fontsize=fontsize,
            ha="left",
            va="center",
            fontweight="bold" if source == output else "normal",
            clip_on=False,
            gid="bar-label",
        )


# --------------------------------------------------------------------------------------
# Candidate heat maps
# --------------------------------------------------------------------------------------


def _candidate_matrix(pattern: PatternLike, stage: str) -> Tuple[np.ndarray, List[int]]:
    """Rows x layers candidate influences and the chosen row at each layer."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    candidates = (
        pattern.position_candidates if stage == "positions" else pattern.node_candidates
    )
    if not candidates:
        raise ValueError(
            f"pattern of source {pattern.source} has no {stage} candidates "
            "(routes from baselines have none)"
        )
    matrix = np.asarray(candidates, dtype=float).T
    if stage == "positions":
        chosen = list(pattern.positions[1 : matrix.shape[1] + 1])
    else:
        heads = matrix.shape[0] - 1
        chosen = [heads if node.head is None else node.head for node in pattern.nodes]
    return matrix, chosen


def _normalized(matrix: np.ndarray, normalize: str) -> np.ndarray:
    """Divide by the largest ``|value|`` overall or per layer (column)."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}"
        )
    axis = 0 if normalize == "layer" else None
    scale = np.abs(matrix).max(axis=axis, keepdims=True)
    return np.divide(matrix, scale, out=np.zeros_like(matrix), where=scale > 0)


def visualize_candidates(
    result: Union[ResultLike, PatternLike],
    example: int = 0,
    source: Optional[int] = None,
    stage: str = "positions",
    normalize: str = "global",
    annotate: Optional[bool] = None,
    tokens: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
    plt_fig_axis: Optional[FigAxis] = None,
    use_pyplot: bool = True,
    fig_size: Optional[Tuple[float, float]] = None,
    cmap: Union[None, str, Colormap] = None,
    show_colorbar: bool = True,
) -> FigAxis:
    """Heat map of the influences the search chose from, the chosen cells boxed.

    ``stage="positions"`` shows stage A: ``I(h^l_j)`` for every layer (columns) and
    position (rows, tokens top to bottom). ``stage="nodes"`` shows stage B: every head
    at ``j_l`` and the skip (last row) per layer.

    Args:
        result (InfluencePatternsResult or Pattern): A result, or one pattern.
        example (int, optional): Example index of a result. Default: 0
        source (int, optional): Source position of a result. Default: the source with
            the largest ``|g|``.
        stage (str, optional): ``"positions"`` or ``"nodes"``. Default: ``"positions"``
        normalize (str, optional): Divide by the largest ``|value|`` of the whole map
            (``"global"``) or of each layer (``"layer"``). Default: ``"global"``
        annotate (bool, optional): Print the normalised values in the cells.
            Default: when the map has at most 200 cells.
        tokens (sequence of str, optional): Row labels of the positions stage.
            Default: the result's tokens, or ``"#j"``.
        title (str, optional): Axis title. Default: the source and the stage.
        plt_fig_axis (tuple, optional): ``(fig, ax)`` to draw on. Default: None
        use_pyplot (bool, optional): Create the figure with pyplot and call
            ``plt.show()``. Default: True
        fig_size (tuple, optional): Figure size in inches. Default: grows with the map.
        cmap (str or Colormap, optional): Diverging colour map. Default: red-white-green
        show_colorbar (bool, optional): Draw a colour bar. Default: True

    Returns:
        tuple: ``(Figure, Axes)``.
    """
    pattern, tokens, output_position = _candidate_pattern(
        result, example, source, tokens
    )
    matrix, chosen = _candidate_matrix(pattern, stage)
    values = _normalized(matrix, normalize)
    rows, layers = values.shape
    width = _clamp(2.5 + 0.55 * layers, 4.5, 16.0) + (1.2 if show_colorbar else 0.0)
    height = _clamp(2.0 + 0.3 * rows, 3.0, 22.0)
    fig, ax = _figure_and_axis(plt_fig_axis, use_pyplot, fig_size or (width, height))
    image = ax.imshow(
        values,
        cmap=_colormap(cmap),
        vmin=-1.0,
        vmax=1.0,
        aspect="auto",
        interpolation="nearest",
        extent=(0.5, layers + 0.5, rows - 0.5, -0.5),
    )
    for layer, row in enumerate(chosen, start=1):
        ax.add_patch(
            Rectangle(
                (layer - 0.5, row - 0.5),
                1.0,
                1.0,
                fill=False,
                edgecolor="black",
                linewidth=2.0,
                gid="chosen-cell",
            )
        )
    if annotate or (annotate is None and values.size <= 200):
        _annotate_cells(ax, values)
    if stage == "positions":
        _label_tokens(ax, tokens, output_position, keep=[pattern.source])
        ax.set_ylabel("position")
    else:
        ax.set_yticks(range(rows))
        ax.set_yticklabels(
            [f"head {n}" for n in range(rows - 1)] + ["skip"], fontsize=8
        )
        ax.set_ylabel("node at the route's position")
    ax.set_xticks(range(1, layers + 1))
    ax.tick_params(axis="x", labelsize=_clamp(0.4 * _axis_points(ax)[0] / layers, 6, 9))
    ax.set_xlabel("layer")
    if show_colorbar:
        fig.colorbar(
            image, ax=ax, shrink=0.6, label=f"influence / max |influence| ({normalize})"
        )
    if title is None:
        label = display_label(tokens[pattern.source]) if tokens else str(pattern.source)
        title = (
            f"Stage {'A (positions)' if stage == 'positions' else 'B (nodes)'}: "
            f"source {pattern.source} ({label})"
        )
    ax.set_title(drawable(title), fontsize=10)
    _finish(use_pyplot)
    return fig, ax


def _candidate_pattern(
    result: Union[ResultLike, PatternLike],
    example: int,
    source: Optional[int],
    tokens: Optional[Sequence[str]],
) -> Tuple[PatternLike, List[str], Optional[int]]:
    """The pattern to show, its row labels and the output position."""
    if is_pattern(result):
        pattern = result
        length = (
            len(pattern.position_candidates[0]) if pattern.position_candidates else 0
        )
        labels = (
            list(tokens) if tokens is not None else [f"#{j}" for j in range(length)]
        )
        return pattern, labels, pattern_output([pattern])
    patterns = result.patterns[example]
    if source is None:
        pattern = max(patterns, key=lambda p: abs(p.token_influence))
    else:
        pattern = result.pattern(example, source)
    labels = list(tokens) if tokens is not None else result.token_labels(example)
    return pattern, labels, result.output_positions[example]


def _annotate_cells(ax: Axes, values: np.ndarray) -> None:
    rows, layers = values.shape
    size = _clamp(0.28 * _axis_points(ax)[1] / rows, 5.0, 8.0)
    for row in range(rows):
        for column in range(layers):
            value = values[row, column]
            ax.text(
                column + 1,
                row,
                f"{value:.2f}".replace("-0.00", "0.00"),
                ha="center",
                va="center",
                fontsize=size,
                color="white" if abs(value) > 0.6 else "black",
                gid="cell-value",
            )
