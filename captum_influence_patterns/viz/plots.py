"""Drawing influence patterns, in the style of :mod:`captum.attr.visualization`.

Every plotting function returns ``(Figure, Axes)`` and accepts ``plt_fig_axis``,
``use_pyplot``, ``fig_size``, ``title`` and ``cmap`` like Captum's helpers:

- :func:`visualize_pattern` draws one example's routes (docs/method.md, section 11):
  layers left to right, tokens top to bottom; :func:`visualize_pattern_graph` is the
  same drawing for any list of :class:`~captum_influence_patterns.Pattern` (reference
  routes too).
- :func:`visualize_patterns_aggregate` draws many instances of one task, edge width the
  fraction of instances whose route uses the edge (see :func:`aggregate_edges`).
- :func:`~.panels.visualize_token_influence` draws ``g``, ``I(pi^e)`` and ``I(pi^a)``
  per token, and :func:`~.panels.visualize_candidates` the influences a search chose
  from, per layer (:mod:`.panels`; importable from here too).

The route data behind the drawings is in :mod:`~captum_influence_patterns.viz.edges`,
the token labels in :mod:`~captum_influence_patterns.viz.tokens` and the HTML view in
:mod:`~captum_influence_patterns.viz.html`; :func:`aggregate_edges`,
:func:`clean_token`, :func:`pattern_html` and :func:`display_pattern_html` are
importable from here too.
"""

from __future__ import annotations

import textwrap
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

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
    num_layers,
    pattern_output,
    patterns_by_source,
    select_sources,
    shared_layout,
    sign,
)
from .figures import DEFAULT_CMAP, FigAxis, colormap, figure_and_axis  # noqa: F401
from .figures import finish, graph_fig_size, new_figure
from .graph import draw_graph

# Re-exported: the CLI and scripts import these from here, as before the panels had
# their own module.
from .html import display_pattern_html, pattern_html  # noqa: F401
from .panels import visualize_candidates, visualize_token_influence  # noqa: F401
from .tokens import clean_token, display_text, sentence


_PANEL_WIDTH = 3.5

# --------------------------------------------------------------------------------------
# Figures and axes
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# The route graph
# --------------------------------------------------------------------------------------


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
    fig, ax = figure_and_axis(
        plt_fig_axis, use_pyplot, fig_size or graph_fig_size(len(tokens), layers)
    )
    draw_graph(
        ax,
        instance_edges(patterns, level),
        tokens,
        output_position,
        layers,
        level,
        colormap(cmap),
        max_linewidth,
        show_legend,
        title,
        "|influence|",
    )
    finish(use_pyplot)
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
    fig_size = fig_size or graph_fig_size(
        len(tokens), layers, _PANEL_WIDTH if show_token_panel else 0
    )
    fig, graph_ax, panel_ax = _graph_and_panel(
        plt_fig_axis, use_pyplot, fig_size, show_token_panel
    )
    draw_graph(
        graph_ax,
        instance_edges(drawn, level),
        tokens,
        output,
        num_layers(drawn),
        level,
        colormap(cmap),
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
    finish(use_pyplot)
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
        fig, ax = new_figure(fig_size, use_pyplot)
        return fig, ax, None
    graph_width = max(fig_size[0] - _PANEL_WIDTH, 1.0)
    fig, (graph_ax, panel_ax) = new_figure(
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
    fig, ax = figure_and_axis(
        plt_fig_axis, use_pyplot, fig_size or graph_fig_size(len(tokens), layers)
    )
    draw_graph(
        ax,
        edges,
        tokens,
        output_position,
        layers,
        level,
        colormap(cmap),
        max_linewidth,
        show_legend,
        title,
        "share of instances",
    )
    finish(use_pyplot)
    return fig, ax


# --------------------------------------------------------------------------------------
# Token panel
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Candidate heat maps
# --------------------------------------------------------------------------------------


