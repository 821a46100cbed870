"""The figures' common parts: Captum-style figure and axis handling, colours, sizes,
token labels on the y axis and legends under an axis, shared by the route graphs
(:mod:`.plots`) and the token and candidate panels (:mod:`.panels`)."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple, Union

from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .tokens import display_label


STAGES = ("positions", "nodes")


NORMALIZATIONS = ("global", "layer")


FigAxis = Tuple[Figure, Axes]


# Captum's default diverging map (captum/attr/_utils/visualization.py).
DEFAULT_CMAP = LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"])


# Bar colours of the token panel: g, I(pi^e), I(pi^a).
SERIES_COLORS = ("#4d4d4d", "#4c72b0", "#dd8452")


SERIES_LABELS = ("g", "I(π^e)", "I(π^a)")


#: The legend line of a token panel where a route's influence exceeds g.
ABOVE_G = (
    "I(π) above g: g sums every route, and the others cancel part of this one"
)  # inches added for the token panel beside a graph


def new_figure(
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


def figure_and_axis(
    plt_fig_axis: Optional[FigAxis], use_pyplot: bool, fig_size: Tuple[float, float]
) -> FigAxis:
    if plt_fig_axis is not None:
        return plt_fig_axis
    return new_figure(fig_size, use_pyplot)


def finish(use_pyplot: bool) -> None:
    if use_pyplot:
        plt.show()


def colormap(cmap: Union[None, str, Colormap]) -> Colormap:
    if cmap is None:
        return DEFAULT_CMAP
    return plt.get_cmap(cmap) if isinstance(cmap, str) else cmap


def sign_color(cmap: Colormap, sign: int) -> Any:
    return cmap(1.0 if sign > 0 else 0.0)


def clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def graph_fig_size(
    length: int, layers: int, extra_width: float = 0.0
) -> Tuple[float, float]:
    """A figure size that grows with the layers (width) and tokens (height)."""
    width = clamp(2.2 + 0.62 * (layers + 1), 5.5, 18.0) + extra_width
    height = clamp(2.0 + 0.3 * length, 3.5, 24.0)
    return width, height


def axis_points(ax: Axes) -> Tuple[float, float]:
    """Approximate width and height of ``ax`` in points."""
    box = ax.get_position()
    fig = ax.get_figure()
    return box.width * fig.get_figwidth() * 72, box.height * fig.get_figheight() * 72


def label_tokens(
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
    row_points = axis_points(ax)[1] / max(length, 1)
    fontsize = clamp(0.72 * row_points, 4.0, 10.0)
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


def legend_below(
    ax: Axes, handles: Sequence[Any], fontsize: float = 8.0, gap: float = 0.01
) -> None:
    """A frameless legend under ``ax``, with as many columns as its width allows."""
    ncol = _legend_columns(
        [handle.get_label() for handle in handles], fontsize, axis_points(ax)[0]
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


def outline(
    ax: Axes,
    corner: Tuple[float, float],
    size: Tuple[float, float],
    linewidth: float,
    gid: str,
    zorder: Optional[float] = None,
) -> None:
    """A black unfilled rectangle (the output marker, a chosen cell), found in an SVG
    by its ``gid``."""
    ax.add_patch(
        Rectangle(
            corner, *size, fill=False, edgecolor="black", linewidth=linewidth,
            zorder=zorder, gid=gid,
        )
    )
