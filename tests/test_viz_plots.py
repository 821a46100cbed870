"""viz/plots.py: the route graph and the aggregate graph (Agg backend, no display),
read back from the drawn figure, also on a real search of a tiny random BERT."""

from __future__ import annotations

import time
import warnings
from typing import List

import numpy as np
import pytest
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from captum_influence_patterns import (
    InfluencePatterns,
    masked_lm_logit_difference,
)
from captum_influence_patterns.testing import family_model
from captum_influence_patterns.testing.patterns import (
    OUTPUT,
    TOKENS,
    aggregate_instances,
    lines,
    make_pattern,
    make_result,
    render,
    small_result,
    texts,
)
from captum_influence_patterns.viz.edges import (
    aggregate_edges,
    instance_edges,
    mark_arrivals,
)
from captum_influence_patterns.viz.figures import DEFAULT_CMAP
from captum_influence_patterns.viz.html import pattern_html
from captum_influence_patterns.viz.panels import (
    visualize_candidates,
    visualize_token_influence,
)
from captum_influence_patterns.viz.plots import (
    visualize_pattern,
    visualize_pattern_graph,
    visualize_patterns_aggregate,
)
from captum_influence_patterns.viz.tokens import display_label

MAX_LINEWIDTH = 6.0
MIN_LINEWIDTH = 1.6  # the weakest route stays visible (issue 31)


class TestPatternGraph:
    def teardown_method(self) -> None:
        plt.close("all")

    def test_edges_match_pattern(self) -> None:
        result = small_result()
        fig, ax = visualize_pattern(result, use_pyplot=False, sources=[0, 1])
        render(fig)
        skips = lines(ax, "skip")
        heads = lines(ax, "head")
        assert len(skips) == 5
        assert len(heads) == 3
        assert all(line.get_linestyle() == "--" for line in skips)
        assert all(line.get_linestyle() == "-" for line in heads)
        assert sorted(texts(ax, "head-label")) == ["1", "2", "3"]
        # Each edge runs from (l - 1, j_{l-1}) to (l, j_l), up to its lane offset.
        for line in skips + heads:
            x, y = line.get_data()
            assert x[1] - x[0] == 1
        head_ends = sorted(
            (int(line.get_xdata()[1]), round(line.get_ydata()[1])) for line in heads
        )
        assert head_ends == [(2, 4), (3, 4), (4, 4)]

    def test_output_position_marked(self) -> None:
        fig, ax = visualize_pattern(small_result(), use_pyplot=False)
        render(fig)
        markers = [p for p in ax.patches if p.get_gid() == "output-marker"]
        assert len(markers) == 1
        x, y = markers[0].get_xy()
        assert round(abs(x + markers[0].get_width() / 2 - 4), 7) == 0
        assert round(abs(y + markers[0].get_height() / 2 - OUTPUT), 7) == 0
        bold = [
            t.get_text() for t in ax.get_yticklabels() if t.get_fontweight() == "bold"
        ]
        assert bold == ["[MASK]"]

    def test_threshold_filters_sources(self) -> None:
        result = small_result()
        # sum |g| = 9.1: 0.05 * 9.1 = 0.455 drops source 2 (g = 0.1).
        _, ax = visualize_pattern(result, use_pyplot=False)
        assert len(ax.get_lines()) == 3 * 4
        _, ax = visualize_pattern(result, use_pyplot=False, threshold=0.0)
        assert len(ax.get_lines()) == 4 * 4
        _, ax = visualize_pattern(result, use_pyplot=False, threshold=0.5)
        assert len(ax.get_lines()) == 1 * 4
        with pytest.raises(ValueError):
            visualize_pattern(result, use_pyplot=False, sources=[4])

    def test_colour_and_width(self) -> None:
        _, ax = visualize_pattern(small_result(), use_pyplot=False, sources=[0, 1])
        colours = {tuple(line.get_color()) for line in ax.get_lines()}
        assert colours == {DEFAULT_CMAP(1.0), DEFAULT_CMAP(0.0)}
        lines = ax.get_lines()
        # Routes waiting at their last row (faint) are capped to their lane.
        widths = [line.get_linewidth() for line in lines if line.get_alpha() == 0.85]
        # Node influences are g * 0.9^l: the largest is |5 * 0.9|.
        assert round(abs(max(widths) - MAX_LINEWIDTH), 7) == 0
        # every other width is MIN + (MAX - MIN) * |g| 0.9^l / 4.5, g in {5, -3}
        weights = {round(g * 0.9**layer / 4.5, 6) for g in (5, 3) for layer in (1, 2, 3, 4)}
        for width in widths:
            weight = (width - MIN_LINEWIDTH) / (MAX_LINEWIDTH - MIN_LINEWIDTH)
            assert round(weight, 6) in weights
        assert min(line.get_linewidth() for line in lines) >= MIN_LINEWIDTH

    def test_embedding_level(self) -> None:
        _, ax = visualize_pattern(
            small_result(), use_pyplot=False, level="embedding", threshold=0
        )
        assert len(lines(ax, "position")) == 16
        assert len(ax.get_lines()) == 16
        assert texts(ax, "head-label") == []
        assert all(line.get_linestyle() == "-" for line in ax.get_lines())
        with pytest.raises(ValueError):
            visualize_pattern(small_result(), use_pyplot=False, level="heads")

    def test_core_takes_patterns_and_tokens(self) -> None:
        patterns = small_result().patterns[0][:2]
        fig, ax = visualize_pattern_graph(patterns, TOKENS, use_pyplot=False)
        assert len(ax.get_lines()) == 8
        assert len([p for p in ax.patches if p.get_gid()]) == 1
        render(fig)

    def test_deep_model_long_input(self) -> None:
        start = time.perf_counter()
        length, layers, output = 64, 24, 62
        tokens = [f"Ġtok{j}" for j in range(length)]
        patterns = []
        for source in range(length):
            if source == output:
                continue
            jump = 1 + source % (layers - 1)
            route = [
                (
                    source if layer < jump else output,
                    layer % 16 if layer == jump else None,
                )
                for layer in range(1, layers + 1)
            ]
            patterns.append(
                make_pattern(source, route, (-1) ** source * (1 + source), length, 16)
            )
        result = make_result([patterns], tokens, output)
        fig, ax = visualize_pattern(result, use_pyplot=False, threshold=0.0)
        render(fig)
        assert len(ax.get_lines()) == 63 * 24
        assert len(ax.get_yticks()) == 64
        assert ax.get_yticklabels()[0].get_text() == "tok0"
        assert ax.get_yticklabels()[0].get_fontsize() >= 6
        width, height = fig.get_size_inches()
        small_width, small_height = visualize_pattern(small_result(), use_pyplot=False)[
            0
        ].get_size_inches()
        assert width > small_width
        assert height > small_height
        assert time.perf_counter() - start < 15

    def test_very_long_input_thins_labels(self) -> None:
        length, output = 400, 200
        tokens = [f"t{j}" for j in range(length)]
        patterns = [make_pattern(7, [(7, None), (output, 1)], 1.0, length=length)]
        fig, ax = visualize_pattern_graph(patterns, tokens, output, use_pyplot=False)
        shown = list(ax.get_yticks())
        assert len(shown) < length
        assert output in shown
        assert 7 in shown

    def test_fig_axis_reuse_and_pyplot(self) -> None:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        out_fig, out_ax = visualize_pattern(
            small_result(), plt_fig_axis=(fig, ax), use_pyplot=False
        )
        assert out_fig is fig
        assert out_ax is ax
        fig, ax = visualize_pattern(small_result(), use_pyplot=True)
        assert fig.number in plt.get_fignums()

    def test_plot_method(self) -> None:
        # Example 1 keeps two of example 0's routes: the figure must draw its own.
        patterns = small_result().patterns[0]
        result = make_result([patterns, patterns[:2]], TOKENS, OUTPUT)
        fig, ax = result.plot(example=1, use_pyplot=False, level="embedding")
        assert ax.get_title().startswith("example 1: ")
        assert len(ax.get_lines()) == 2 * 4  # two routes of 4 layers
        # the edges drawn are example 1's routes: (l - 1, j_{l-1}) -> (l, j_l) for
        # each, up to the lane offset of routes that share a row
        drawn = sorted(
            (int(x[0]), round(y[0]), int(x[1]), round(y[1]))
            for x, y in (line.get_data() for line in ax.get_lines())
        )
        assert drawn == sorted(
            (layer - 1, p.positions[layer - 1], layer, p.positions[layer])
            for p in patterns[:2]
            for layer in range(1, len(p.positions))
        )
        _, first = result.plot(example=0, use_pyplot=False, level="embedding")
        assert len(first.get_lines()) == 3 * 4  # the 0.1 route is below the share
        render(fig)

    def test_token_panel_beside_graph(self) -> None:
        fig, ax = visualize_pattern(
            small_result(), use_pyplot=False, show_token_panel=True
        )
        render(fig)
        assert len(fig.axes) == 2
        assert fig.axes[0] is ax
        assert fig.axes[1].get_ylim() == ax.get_ylim()
        other = Figure()
        with pytest.raises(ValueError):
            visualize_pattern(
                small_result(),
                use_pyplot=False,
                show_token_panel=True,
                plt_fig_axis=(other, other.subplots()),
            )


class TestAggregate:
    def teardown_method(self) -> None:
        plt.close("all")

    def test_usage_fractions(self) -> None:
        edges = {
            (e.layer, e.start, e.end, e.kind): e
            for e in aggregate_edges(aggregate_instances(), sources=[0])
        }
        assert edges[(1, 0, 0, "skip")].fraction == 0.75
        assert edges[(1, 0, 4, "head")].fraction == 0.25
        assert edges[(1, 0, 4, "head")].head == 2
        assert edges[(2, 0, 4, "head")].fraction == 0.75
        assert edges[(2, 0, 4, "head")].head == 1
        # Layer 2 at 4 -> 4 by head 3 once; layer 3 heads 2 and 3 split 1:1.
        assert edges[(3, 4, 4, "skip")].fraction == 0.5
        assert edges[(3, 4, 4, "head")].fraction == 0.5
        assert edges[(3, 4, 4, "head")].head is None
        assert round(abs(edges[(3, 4, 4, "head")].mean_token_influence - 0.75), 7) == 0

    def test_drawn_widths_equal_fractions(self) -> None:
        instances = aggregate_instances()
        fig, ax = visualize_patterns_aggregate(
            instances, TOKENS, OUTPUT, sources=[0], use_pyplot=False
        )
        render(fig)
        expected = sorted(
            MIN_LINEWIDTH + (MAX_LINEWIDTH - MIN_LINEWIDTH) * e.fraction
            for e in aggregate_edges(instances, sources=[0])
        )
        drawn = sorted(line.get_linewidth() for line in ax.get_lines())
        np.testing.assert_allclose(drawn, expected)
        # Head labels only where one head has a majority: layer 1 at 0 -> 4 (2),
        # layer 2 at 0 -> 4 (1) and 4 -> 4 (3), not layer 3 at 4 -> 4 (2 or 3).
        assert sorted(texts(ax, "head-label")) == ["1", "2", "3"]
        assert len(lines(ax, "skip")) == 2

    def test_results_input_and_checks(self) -> None:
        result = make_result(aggregate_instances(), TOKENS, OUTPUT)
        fig, ax = visualize_patterns_aggregate([result], use_pyplot=False)
        assert "4 instances" in ax.get_title()
        _, ax = visualize_patterns_aggregate(
            result, use_pyplot=False, level="embedding", min_fraction=0.5
        )
        assert all(line.get_gid() == "edge-position" for line in ax.lines)
        shifted = make_result(aggregate_instances(), TOKENS, OUTPUT)
        shifted.output_positions = [3] * len(shifted)
        with pytest.raises(ValueError):
            visualize_patterns_aggregate([result, shifted], use_pyplot=False)
        with pytest.raises(ValueError):
            visualize_patterns_aggregate(aggregate_instances(), use_pyplot=False)


class TestTinyBert:
    """The helpers on a real search of a tiny random BERT."""

    @classmethod
    def setup_class(cls) -> None:
        model = family_model(
            "bert",
            weight_scale=1.0,
            hidden_size=32,
            num_hidden_layers=2,
            intermediate_size=64,
            max_position_embeddings=16,
        )
        inputs = torch.randint(5, 60, (2, 7))
        inputs[:, 5] = 4
        explainer = InfluencePatterns(masked_lm_logit_difference(model), model)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny tensors: threads only contend
        try:
            cls.result = explainer.attribute(
                inputs,
                baselines=4,
                additional_forward_args=(5, 10, 11),
                output_position=5,
                n_steps=4,
            )
        finally:
            torch.set_num_threads(threads)

    def teardown_method(self) -> None:
        plt.close("all")

    def test_all_views_render(self) -> None:
        result = self.result
        for level in ("attention", "embedding"):
            fig, ax = result.plot(example=1, level=level, use_pyplot=False)
            render(fig)
            assert ax.get_yticklabels()[0].get_text() == "#0"
        fig, _ = visualize_pattern(result, use_pyplot=False, show_token_panel=True)
        render(fig)
        for stage in ("positions", "nodes"):
            render(visualize_candidates(result, stage=stage, use_pyplot=False)[0])
        render(visualize_patterns_aggregate(result, use_pyplot=False)[0])
        render(visualize_token_influence(result, example=None, use_pyplot=False)[0])
        assert "<mark" in pattern_html(result, example=1)


FAINT = 0.35  # alpha of edges after a route reached its last row


def legend_texts(ax) -> List[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


class TestFigureExplainsItself:
    """Title, legend and bar labels say what the figure shows (issue 13, item 4)."""

    def teardown_method(self) -> None:
        plt.close("all")

    def test_default_title_names_sentence_and_qoi(self) -> None:
        result = small_result()
        _, ax = visualize_pattern(result, use_pyplot=False)
        assert ax.get_title() == \
            "[CLS] thes <script> [MASK] [SEP]\nQoI: read at position " "4 ([MASK])"
        result.metadata.update(text="the keys are here", qoi="logit(are) - logit(is)")
        _, ax = result.plot(use_pyplot=False)
        assert ax.get_title() == "the keys are here\nQoI: logit(are) - logit(is)"
        _, ax = result.plot(use_pyplot=False, qoi="my QoI costs $5")
        assert ax.get_title() == "the keys are here\nQoI: my QoI costs \\$5"
        _, ax = result.plot(use_pyplot=False, title="mine")
        assert ax.get_title() == "mine"

    def test_legend_says_which_sources_are_left_out(self) -> None:
        note = "1 source with |g| < 5% of sum |g| not drawn"
        _, ax = visualize_pattern(small_result(), use_pyplot=False)
        assert note in legend_texts(ax)  # source 2: |g| = 0.1 < 0.05 * 9.1
        _, ax = visualize_pattern(small_result(), use_pyplot=False, threshold=0.0)
        assert not [t for t in legend_texts(ax) if "not drawn" in t]
        _, ax = visualize_pattern(small_result(), use_pyplot=False, sources=[0])
        assert "3 sources not drawn (not in sources)" in legend_texts(ax)

    def test_bars_are_labelled_with_their_tokens(self) -> None:
        fig, _ = visualize_pattern(
            small_result(), use_pyplot=False, show_token_panel=True
        )
        panel = fig.axes[1]
        labels = {
            round(t.get_position()[1]): t.get_text()
            for t in panel.texts
            if t.get_gid() == "bar-label"
        }
        assert labels == {0: "[CLS]", 1: "the", 2: "s", 3: "<script>"}
        render(fig)

    def test_routes_at_the_output_keep_one_faint_lane_each(self) -> None:
        _, ax = visualize_pattern(small_result(), use_pyplot=False, threshold=0.0)
        faint = [line for line in ax.get_lines() if line.get_alpha() == FAINT]
        # After arriving at row 4: source 0 crosses 1 more layer, 1 two, 3 three;
        # source 2 arrives at the last layer.
        assert len(faint) == 1 + 2 + 3
        assert len(ax.get_lines()) - len(faint) == 16 - 6
        for line in faint:
            y = line.get_ydata()
            assert y[0] == y[1]  # along the row
            assert abs(float(y[0]) - OUTPUT) <= 0.4
        offsets = sorted({round(float(line.get_ydata()[0]), 6) for line in faint})
        assert len(offsets) == 3  # one lane per source, the same per layer
        legend = legend_texts(ax)
        assert "faint: route already at its last row" in legend

    def test_arrivals_are_marked_after_reaching_the_last_row(self) -> None:
        patterns = small_result().patterns[0]
        arrived = {
            (e.source, e.step.layer)
            for e in instance_edges(patterns, "attention")
            if e.arrived
        }
        assert arrived == {(0, 4), (1, 3), (1, 4), (3, 2), (3, 3), (3, 4)}
        # The output token's own route never leaves its row: nothing arrives.
        own = make_pattern(4, [(4, None), (4, 1), (4, None), (4, None)], 1.0)
        edges = mark_arrivals(instance_edges([own], "attention"))
        assert not any(edge.arrived for edge in edges)

    def test_undrawable_tokens_save_without_glyph_warnings(self) -> None:
        tokens = ["[CLS]", "猫", "🙂", "$x$", "[MASK]", "[SEP]"]
        result = make_result(small_result().patterns, tokens, OUTPUT)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fig, ax = visualize_pattern(
                result, use_pyplot=False, show_token_panel=True, threshold=0.0
            )
            render(fig)
        glyphs = [w for w in caught if "Glyph" in str(w.message)]
        assert glyphs == []
        assert display_label("猫🙂") == "??"
        assert display_label("$x$") == "\\$x\\$"
        assert "?" in ax.get_title()


