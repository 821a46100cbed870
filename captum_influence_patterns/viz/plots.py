"""Drawing influence patterns, in the style of :mod:`captum.attr.visualization`.

Every plotting function returns ``(Figure, Axes)`` and accepts ``plt_fig_axis``,
``use_pyplot``, ``fig_size``, ``title`` and ``cmap`` like Captum's helpers:

- :func:`visualize_pattern` draws one example's routes (docs/method.md, section 11):
  layers left to right, tokens top to bottom; :func:`visualize_pattern_graph` is the
  same drawing for any list of :class:`~captum_influence_patterns.Pattern` (baselines
  too).
- :func:`visualize_patterns_aggregate` draws many instances of one task, edge width the
  fraction of instances whose route uses the edge (see :func:`aggregate_edges`).
- :func:`visualize_token_influence` draws ``g``, ``I(pi^e)`` and ``I(pi^a)`` per token.
- :func:`visualize_candidates` draws the influences a search chose from, per layer.
- :func:`pattern_html` and :func:`display_pattern_html` give a Captum-style HTML token
  heat map with the route of each token in its tooltip.
"""

from __future__ import annotations

import html
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from ..results import InfluencePatternsResult, Pattern

LEVELS = ("attention", "embedding")
STAGES = ("positions", "nodes")
NORMALIZATIONS = ("global", "layer")

FigAxis = Tuple[Figure, Axes]
ResultsOrPatterns = Union[
    InfluencePatternsResult,
    Sequence[InfluencePatternsResult],
    Sequence[Sequence[Pattern]],
    Sequence[Pattern],
]

# Captum's default diverging map (captum/attr/_utils/visualization.py).
DEFAULT_CMAP = LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"])
# Bar colours of the token panel: g, I(pi^e), I(pi^a).
SERIES_COLORS = ("#4d4d4d", "#4c72b0", "#dd8452")
SERIES_LABELS = ("g", "I(π^e)", "I(π^a)")

_MIN_LINEWIDTH = 0.6
_PANEL_WIDTH = 3.5  # inches added for the token panel beside a graph
_MAX_LABEL_CHARS = 16
_SPACE_MARKERS = ("Ġ", "▁")  # GPT-2 byte-level BPE, SentencePiece
_EMPTY_TOKEN = "␣"


# --------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------


def clean_token(token: str, mark_continuation: bool = False) -> str:
    """Remove tokenizer artefacts from a token for display.

    ``"##ing"`` (WordPiece continuation) becomes ``"ing"`` (``"-ing"`` with
    ``mark_continuation``), ``"Ġword"`` (byte-level BPE) and ``"▁word"``
    (SentencePiece) become ``"word"``, ``"Ċ"`` becomes ``"\\n"`` and a trailing
    ``"</w>"`` is dropped. A token that only held a space marker shows as ``"␣"``.

    Args:
        token (str): A token as the tokenizer spells it.
        mark_continuation (bool, optional): Prefix WordPiece continuations with "-".
            Default: False

    Returns:
        str: The cleaned token.
    """
    text = str(token)
    if text.startswith("##") and len(text) > 2:
        return ("-" if mark_continuation else "") + text[2:]
    if text.endswith("</w>") and len(text) > 4:
        text = text[:-4]
    cleaned = text.replace("Ċ", "\\n").replace("ĉ", "\\t")
    for marker in _SPACE_MARKERS:
        cleaned = cleaned.replace(marker, " ")
    cleaned = cleaned.strip(" ")
    if not cleaned and text:
        return _EMPTY_TOKEN
    return cleaned


def _display_label(token: str) -> str:
    """A cleaned, shortened token that matplotlib prints literally (no mathtext)."""
    text = clean_token(token)
    if len(text) > _MAX_LABEL_CHARS:
        text = text[: _MAX_LABEL_CHARS - 1] + "…"
    return text.replace("$", r"\$")


# --------------------------------------------------------------------------------------
# Inputs: results, pattern lists, instances
# --------------------------------------------------------------------------------------


@dataclass
class _Instance:
    """One explained example: its patterns, token labels and output position."""

    patterns: List[Pattern]
    tokens: Optional[List[str]]
    output_position: Optional[int]


def _instances(results_or_patterns: ResultsOrPatterns) -> List[_Instance]:
    """Flatten a result, results, a pattern list or pattern lists into instances."""
    if isinstance(results_or_patterns, InfluencePatternsResult):
        return _result_instances(results_or_patterns)
    items = list(results_or_patterns)
    if not items:
        raise ValueError("nothing to draw: no results or patterns were given")
    if isinstance(items[0], Pattern):
        return [_Instance(list(items), None, _pattern_output(items))]
    instances: List[_Instance] = []
    for item in items:
        if isinstance(item, InfluencePatternsResult):
            instances.extend(_result_instances(item))
        else:
            patterns = list(item)
            instances.append(_Instance(patterns, None, _pattern_output(patterns)))
    return instances


def _result_instances(result: InfluencePatternsResult) -> List[_Instance]:
    return [
        _Instance(
            list(result.patterns[b]), result.token_labels(b), result.output_positions[b]
        )
        for b in range(len(result))
    ]


def _pattern_output(patterns: Sequence[Pattern]) -> Optional[int]:
    return patterns[0].positions[-1] if patterns and patterns[0].positions else None


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def _select_sources(
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


# --------------------------------------------------------------------------------------
# Routes as edges
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    """A route crossing one layer: ``(layer - 1, start)`` to ``(layer, end)``."""

    layer: int
    start: int
    end: int
    kind: str  # "skip", "head" or "position" (embedding level)
    head: Optional[int]
    influence: float


def _route_steps(pattern: Pattern, level: str) -> List[_Step]:
    """The route of ``pattern`` at ``level`` as one step per layer."""
    if level == "embedding":
        positions = pattern.positions
        return [
            _Step(
                layer, positions[layer - 1], positions[layer], "position", None, value
            )
            for layer, value in enumerate(pattern.position_influence, start=1)
        ]
    steps = []
    previous = pattern.source
    for node in pattern.nodes:
        steps.append(
            _Step(
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
class _Edge:
    """An edge to draw; ``weight`` in [0, 1] sets its width, ``sign`` its colour."""

    step: _Step
    weight: float
    sign: int
    source: int
    label: Optional[str]


def _instance_edges(patterns: Sequence[Pattern], level: str) -> List[_Edge]:
    """One edge per layer per pattern, width by ``|influence|`` over the largest."""
    steps = [(p, step) for p in patterns for step in _route_steps(p, level)]
    largest = max([abs(step.influence) for _, step in steps] + [0.0])
    return [
        _Edge(
            step=step,
            weight=abs(step.influence) / largest if largest > 0 else 0.0,
            sign=_sign(p.token_influence),
            source=p.source,
            label=None if step.head is None else str(step.head),
        )
        for p, step in steps
    ]


def _num_layers(patterns: Sequence[Pattern]) -> int:
    return max([len(p.positions) - 1 for p in patterns] + [0])


def _sign(value: float) -> int:
    return -1 if value < 0 else 1


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
    _check_level(level)
    by_source = _patterns_by_source(_instances(results_or_patterns))
    chosen = set(by_source) if sources is None else set(sources)
    edges: List[AggregateEdge] = []
    for source in sorted(chosen & set(by_source)):
        patterns = by_source[source]
        mean_g = float(np.mean([p.token_influence for p in patterns]))
        heads: Dict[Tuple[int, int, int, str], Counter] = defaultdict(Counter)
        for pattern in patterns:
            for step in _route_steps(pattern, level):
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


def _patterns_by_source(instances: Sequence[_Instance]) -> Dict[int, List[Pattern]]:
    by_source: Dict[int, List[Pattern]] = defaultdict(list)
    for instance in instances:
        for pattern in instance.patterns:
            by_source[pattern.source].append(pattern)
    return dict(by_source)


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
        [_display_label(tokens[j]) for j in shown], fontsize=fontsize
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
    edges: Sequence[_Edge],
    tokens: Sequence[str],
    output_position: Optional[int],
    num_layers: int,
    level: str,
    cmap: Colormap,
    max_linewidth: float,
    show_legend: bool,
    title: Optional[str],
    width_legend: str,
) -> None:
    """Draw route edges on ``ax``: x = layer 0..L, y = token position."""
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
    _draw_edges(ax, edges, cmap, max_linewidth, text_size)
    if output_position is not None:
        _mark_output(ax, num_layers, output_position, text_size)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    if show_legend:
        _legend_below(
            ax, _graph_legend(level, cmap, width_legend), max(label_size, 7.0)
        )
    if title:
        ax.set_title(title, fontsize=11)


def _edge_sources(edges: Sequence[_Edge]) -> List[int]:
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


def _draw_edges(
    ax: Axes,
    edges: Sequence[_Edge],
    cmap: Colormap,
    max_linewidth: float,
    text_size: float,
) -> None:
    """Edges side by side where routes share one, widest first; head labels on top."""
    groups: Dict[Tuple[int, int, int], List[_Edge]] = defaultdict(list)
    for edge in edges:
        groups[(edge.step.layer, edge.step.start, edge.step.end)].append(edge)
    nodes: Dict[Tuple[int, int], int] = {}
    for (layer, start, end), group in sorted(groups.items()):
        group.sort(key=lambda e: (e.source, e.step.kind))
        spacing = min(0.12, 0.5 / max(len(group) - 1, 1))
        for lane, edge in enumerate(group):
            offset = (lane - (len(group) - 1) / 2) * spacing
            ax.plot(
                [layer - 1, layer],
                [start + offset, end + offset],
                linestyle="--" if edge.step.kind == "skip" else "-",
                color=_sign_color(cmap, edge.sign),
                linewidth=_linewidth(edge.weight, max_linewidth),
                alpha=0.85,
                solid_capstyle="round",
                dash_capstyle="round",
                zorder=2 + (1.0 - edge.weight),
                gid=f"edge-{edge.step.kind}",
            )
            nodes[(layer - 1, start)] = nodes.get((layer - 1, start), edge.sign)
            nodes[(layer, end)] = nodes.get((layer, end), edge.sign)
        heads = sorted({e.label for e in group if e.label is not None}, key=_head_order)
        if heads:
            ax.text(
                layer - 0.5,
                (start + end) / 2,
                ",".join(heads),
                fontsize=text_size,
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


def _graph_legend(level: str, cmap: Colormap, width_legend: str) -> List[Any]:
    if level == "embedding":
        handles = [Line2D([], [], color="black", label="route (positions)")]
    else:
        handles = [
            Line2D([], [], color="black", linestyle="--", label="skip"),
            Line2D([], [], color="black", label="head n"),
        ]
    return handles + [
        Line2D([], [], color=_sign_color(cmap, 1), linewidth=3, label="g > 0"),
        Line2D([], [], color=_sign_color(cmap, -1), linewidth=3, label="g < 0"),
        Patch(fill=False, edgecolor="black", label="output position"),
        Line2D([], [], color="none", label=f"width: {width_legend}"),
    ]


def visualize_pattern_graph(
    patterns: Sequence[Pattern],
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
    _check_level(level)
    patterns = list(patterns)
    layers = _num_layers(patterns)
    if output_position is None:
        output_position = _pattern_output(patterns)
    fig, ax = _figure_and_axis(
        plt_fig_axis, use_pyplot, fig_size or _graph_fig_size(len(tokens), layers)
    )
    _draw_graph(
        ax,
        _instance_edges(patterns, level),
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
    result: InfluencePatternsResult,
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
) -> FigAxis:
    """Draw the influence patterns of one example of a result.

    See :func:`visualize_pattern_graph` for the drawing. This is what
    :meth:`InfluencePatternsResult.plot` calls.

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
        title (str, optional): Axis title. Default: the example and its output token.
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

    Returns:
        tuple: ``(Figure, Axes)``, the graph's axes (the panel is ``fig.axes[1]``).
    """
    _check_level(level)
    patterns = result.patterns[example]
    tokens = result.token_labels(example)
    output = result.output_positions[example]
    chosen = _select_sources(
        {p.source: p.token_influence for p in patterns}, sources, threshold
    )
    drawn = [p for p in patterns if p.source in chosen]
    layers = _num_layers(patterns)
    if title is None:
        title = (
            f"Influence patterns ({level} level), example {example}: "
            f"output at {output} ({clean_token(tokens[output])})"
        )
    fig_size = fig_size or _graph_fig_size(
        len(tokens), layers, _PANEL_WIDTH if show_token_panel else 0
    )
    fig, graph_ax, panel_ax = _graph_and_panel(
        plt_fig_axis, use_pyplot, fig_size, show_token_panel
    )
    visualize_pattern_graph(
        drawn,
        tokens,
        output,
        level=level,
        title=title,
        plt_fig_axis=(fig, graph_ax),
        use_pyplot=False,
        cmap=cmap,
        max_linewidth=max_linewidth,
        show_legend=show_legend,
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
    _check_level(level)
    instances = _instances(results_or_patterns)
    tokens, output_position = _shared_layout(instances, tokens, output_position)
    by_source = _patterns_by_source(instances)
    mean_g = {
        s: float(np.mean([p.token_influence for p in ps]))
        for s, ps in by_source.items()
    }
    chosen = _select_sources(mean_g, sources, threshold)
    edges = [
        _Edge(
            step=_Step(e.layer, e.start, e.end, e.kind, e.head, e.fraction),
            weight=e.fraction,
            sign=_sign(e.mean_token_influence),
            source=e.source,
            label=None if e.head is None else str(e.head),
        )
        for e in aggregate_edges(_pattern_lists(instances), level, chosen)
        if e.fraction >= min_fraction
    ]
    layers = max(_num_layers(ps) for ps in by_source.values())
    if title is None:
        title = f"Influence patterns ({level} level) of {len(instances)} instances"
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


def _pattern_lists(instances: Sequence[_Instance]) -> List[List[Pattern]]:
    return [instance.patterns for instance in instances]


def _shared_layout(
    instances: Sequence[_Instance],
    tokens: Optional[Sequence[str]],
    output_position: Optional[int],
) -> Tuple[List[str], Optional[int]]:
    """The tokens and output position shared by all instances (checked)."""
    outputs = {i.output_position for i in instances if i.output_position is not None}
    if output_position is None and len(outputs) > 1:
        raise ValueError(f"instances have different output positions {sorted(outputs)}")
    if output_position is None and outputs:
        output_position = outputs.pop()
    lengths = {len(i.tokens) for i in instances if i.tokens is not None}
    if len(lengths) > 1:
        raise ValueError(f"instances have different lengths {sorted(lengths)}")
    if tokens is None:
        known = [i.tokens for i in instances if i.tokens is not None]
        if not known:
            raise ValueError("tokens are needed to draw patterns without a result")
        tokens = known[0]
    return list(tokens), output_position


# --------------------------------------------------------------------------------------
# Token panel
# --------------------------------------------------------------------------------------


def _token_statistics(instances: Sequence[_Instance]) -> Dict[int, np.ndarray]:
    """Per source position, the mean of ``(g, I(pi^e), I(pi^a))`` over instances."""
    return {
        source: np.mean(
            [[p.token_influence, p.embedding_influence, p.influence] for p in patterns],
            axis=0,
        )
        for source, patterns in _patterns_by_source(instances).items()
    }


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
        title (str, optional): Axis title. Default: None
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
    instances = _instances(results_or_patterns)
    if example is not None:
        instances = [instances[example]]
    tokens, output_position = _shared_layout(instances, tokens, None)
    stats = _token_statistics(instances)
    chosen = (
        sorted(stats)
        if sources is None
        else _select_sources({s: v[0] for s, v in stats.items()}, sources, 0.0)
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
    if show_legend:
        handles = [
            Patch(color=c, label=lbl) for c, lbl in zip(SERIES_COLORS, SERIES_LABELS)
        ]
        _legend_below(ax, handles, gap=0.06)
    if title is None and example is None:
        title = f"mean over {len(instances)} instances"
    if title:
        ax.set_title(title, fontsize=10)
    _finish(use_pyplot)
    return fig, ax


# --------------------------------------------------------------------------------------
# Candidate heat maps
# --------------------------------------------------------------------------------------


def _candidate_matrix(pattern: Pattern, stage: str) -> Tuple[np.ndarray, List[int]]:
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
    result: Union[InfluencePatternsResult, Pattern],
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
        label = clean_token(tokens[pattern.source]) if tokens else str(pattern.source)
        title = (
            f"Stage {'A (positions)' if stage == 'positions' else 'B (nodes)'}: "
            f"source {pattern.source} ({label})"
        )
    ax.set_title(title, fontsize=10)
    _finish(use_pyplot)
    return fig, ax


def _candidate_pattern(
    result: Union[InfluencePatternsResult, Pattern],
    example: int,
    source: Optional[int],
    tokens: Optional[Sequence[str]],
) -> Tuple[Pattern, List[str], Optional[int]]:
    """The pattern to show, its row labels and the output position."""
    if isinstance(result, Pattern):
        pattern = result
        length = (
            len(pattern.position_candidates[0]) if pattern.position_candidates else 0
        )
        labels = (
            list(tokens) if tokens is not None else [f"#{j}" for j in range(length)]
        )
        return pattern, labels, _pattern_output([pattern])
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


# --------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------


def _html_color(value: float) -> str:
    """Captum's ``visualize_text`` colour of a value in [-1, 1] (green +, red -)."""
    value = _clamp(value, -1.0, 1.0)
    if value > 0:
        return f"hsl(120, 75%, {100 - int(50 * value)}%)"
    return f"hsl(0, 75%, {100 - int(-40 * value)}%)"


def _tooltip(
    position: int, token: str, pattern: Optional[Pattern], output: bool
) -> str:
    lines = [f"position {position}: {token}"]
    if output:
        lines.append("output position (read by the QoI)")
    if pattern is not None:
        lines += [
            f"g = {pattern.token_influence:.4g}",
            f"I(pi^e)/g = {pattern.embedding_sufficiency:.3f}",
            f"I(pi^a)/g = {pattern.sufficiency:.3f}",
            f"route: {pattern.route_description() or '-'}",
        ]
    return "&#10;".join(html.escape(line, quote=True) for line in lines)


def pattern_html(
    result: InfluencePatternsResult,
    example: int = 0,
    title: Optional[str] = None,
    show_table: bool = True,
    full_document: bool = False,
) -> str:
    """A self-contained HTML token heat map, like Captum's ``visualize_text``.

    Each token is shaded green (``g > 0``) or red (``g < 0``) by ``g / max |g|``; its
    tooltip gives ``g``, the sufficiencies ``I(pi^e)/g`` and ``I(pi^a)/g`` and the route
    (:meth:`Pattern.route_description`). The output position is outlined. All text is
    HTML-escaped.

    Args:
        result (InfluencePatternsResult): The result.
        example (int, optional): Example index. Default: 0
        title (str, optional): Heading. Default: the example and its output token.
        show_table (bool, optional): Add a table of the same values below the tokens.
            Default: True
        full_document (bool, optional): Wrap in ``<!DOCTYPE html><html>...``, e.g. to
            write a file. Default: False (a ``<div>`` fragment for notebooks)

    Returns:
        str: The HTML.
    """
    tokens = result.token_labels(example)
    output = result.output_positions[example]
    patterns = {p.source: p for p in result.patterns[example]}
    scale = max([abs(p.token_influence) for p in patterns.values()] + [0.0])
    if title is None:
        title = f"Example {example}: output at {output} ({clean_token(tokens[output])})"
    marks = []
    for j, token in enumerate(tokens):
        pattern = patterns.get(j)
        value = (
            pattern.token_influence / scale if pattern is not None and scale else 0.0
        )
        outline = "outline: 2px solid #222; font-weight: bold; " if j == output else ""
        marks.append(
            f'<mark title="{_tooltip(j, token, pattern, j == output)}" '
            f'style="background-color: {_html_color(value)}; {outline}'
            'padding: 1px 3px; margin: 0 2px; border-radius: 3px; line-height: 2;">'
            f"{html.escape(clean_token(token))}</mark>"
        )
    parts = [
        '<div class="influence-patterns" style="font-family: sans-serif;">',
        f'<p style="font-weight: bold; margin: 4px 0;">{html.escape(title)}</p>',
        f'<div style="margin: 4px 0;">{" ".join(marks)}</div>',
        '<p style="font-size: 80%; color: #555; margin: 4px 0;">'
        "green: g &gt; 0, red: g &lt; 0 (shade: g / max |g|); outlined: output "
        "position; hover a token for its route.</p>",
    ]
    if show_table:
        parts.append(_html_table(tokens, patterns))
    parts.append("</div>")
    body = "\n".join(parts)
    if not full_document:
        return body
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def _html_table(tokens: Sequence[str], patterns: Dict[int, Pattern]) -> str:
    header = "".join(
        f'<th style="text-align: left; padding: 2px 8px;">{name}</th>'
        for name in (
            "pos",
            "token",
            "g",
            "I(&pi;<sup>e</sup>)/g",
            "I(&pi;<sup>a</sup>)/g",
            "route",
        )
    )
    rows = []
    for source in sorted(patterns):
        p = patterns[source]
        cells = (
            str(source),
            html.escape(clean_token(tokens[source])),
            f"{p.token_influence:.4g}",
            f"{p.embedding_sufficiency:.3f}",
            f"{p.sufficiency:.3f}",
            html.escape(p.route_description() or "-"),
        )
        rows.append(
            "<tr>"
            + "".join(f'<td style="padding: 2px 8px;">{cell}</td>' for cell in cells)
            + "</tr>"
        )
    return (
        '<table style="border-collapse: collapse; font-size: 85%;">\n'
        f"<tr>{header}</tr>\n" + "\n".join(rows) + "\n</table>"
    )


def display_pattern_html(
    result: InfluencePatternsResult, example: int = 0, **kwargs: Any
) -> Any:
    """Show :func:`pattern_html` in a notebook when IPython is installed.

    Args:
        result (InfluencePatternsResult): The result.
        example (int, optional): Example index. Default: 0
        **kwargs: Passed to :func:`pattern_html`.

    Returns:
        ``IPython.display.HTML`` (after displaying it) when IPython can be imported,
        else the HTML string.
    """
    text = pattern_html(result, example=example, **kwargs)
    try:
        from IPython.display import HTML, display
    except ImportError:
        return text
    obj = HTML(text)
    display(obj)
    return obj
