"""Panels beside the route graphs: the token influences ``g``, ``I(pi^e)`` and
``I(pi^a)`` per token (:func:`visualize_token_influence`) and the influences a search
chose from, per layer (:func:`visualize_candidates`), in the style of
:mod:`captum.attr.visualization`."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .edges import (
    PatternLike,
    ResultLike,
    ResultsOrPatterns,
    instances,
    is_pattern,
    pattern_output,
    select_sources,
    shared_layout,
    token_statistics,
)
from .figures import (
    ABOVE_G,
    NORMALIZATIONS,
    SERIES_COLORS,
    SERIES_LABELS,
    STAGES,
    FigAxis,
    axis_points,
    clamp,
    colormap,
    figure_and_axis,
    finish,
    graph_fig_size,
    label_tokens,
    legend_below,
    outline,
)
from .tokens import display_label, drawable


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
    default_size = (5.0, graph_fig_size(len(tokens), 0)[1])
    fig, ax = figure_and_axis(plt_fig_axis, use_pyplot, fig_size or default_size)
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
        label_tokens(ax, tokens, output_position, keep=chosen)
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
            handles.append(Line2D([], [], color="none", label=ABOVE_G))
        legend_below(ax, handles, gap=0.06)
    if title is None:
        title = (
            "token influence" if example is not None
            else f"mean over {len(found)} instances"
        )
    if title:
        ax.set_title(drawable(title), fontsize=10)
    finish(use_pyplot)
    return fig, ax


def _label_bars(
    ax: Axes, tokens: Sequence[str], chosen: Sequence[int], output: Optional[int]
) -> None:
    """Each bar group's token at the panel's right edge (the shared rows are bare)."""
    row_points = axis_points(ax)[1] / max(len(tokens), 1)
    fontsize = clamp(0.72 * row_points, 4.0, 8.0)
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
    width = clamp(2.5 + 0.55 * layers, 4.5, 16.0) + (1.2 if show_colorbar else 0.0)
    height = clamp(2.0 + 0.3 * rows, 3.0, 22.0)
    fig, ax = figure_and_axis(plt_fig_axis, use_pyplot, fig_size or (width, height))
    image = ax.imshow(
        values,
        cmap=colormap(cmap),
        vmin=-1.0,
        vmax=1.0,
        aspect="auto",
        interpolation="nearest",
        extent=(0.5, layers + 0.5, rows - 0.5, -0.5),
    )
    for layer, row in enumerate(chosen, start=1):
        outline(ax, (layer - 0.5, row - 0.5), (1.0, 1.0), 2.0, "chosen-cell")
    if annotate or (annotate is None and values.size <= 200):
        _annotate_cells(ax, values)
    if stage == "positions":
        label_tokens(ax, tokens, output_position, keep=[pattern.source])
        ax.set_ylabel("position")
    else:
        ax.set_yticks(range(rows))
        ax.set_yticklabels(
            [f"head {n}" for n in range(rows - 1)] + ["skip"], fontsize=8
        )
        ax.set_ylabel("node at the route's position")
    ax.set_xticks(range(1, layers + 1))
    ax.tick_params(axis="x", labelsize=clamp(0.4 * axis_points(ax)[0] / layers, 6, 9))
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
    finish(use_pyplot)
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
    size = clamp(0.28 * axis_points(ax)[1] / rows, 5.0, 8.0)
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
