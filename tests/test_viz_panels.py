"""viz/panels.py: the token-influence panel and the candidate panels, read back from
the drawn figure."""

from __future__ import annotations

from typing import List

import numpy as np
import pytest
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from captum_influence_patterns.testing.patterns import (
    TOKENS,
    aggregate_instances,
    make_pattern,
    render,
    small_result,
)
from captum_influence_patterns.viz.panels import (
    visualize_candidates,
    visualize_token_influence,
)


class TestTokenPanel:
    def teardown_method(self) -> None:
        plt.close("all")

    @staticmethod
    def bars(ax, k: int) -> List[float]:
        return [p.get_width() for p in ax.patches if p.get_gid() == f"bar-{k}"]

    def test_single_instance(self) -> None:
        result = small_result()
        fig, ax = visualize_token_influence(result, use_pyplot=False)
        render(fig)
        patterns = result.patterns[0]
        assert self.bars(ax, 0) == [p.token_influence for p in patterns]
        assert self.bars(ax, 1) == [p.embedding_influence for p in patterns]
        assert self.bars(ax, 2) == [p.influence for p in patterns]
        assert ax.get_ylim() == (5.5, -0.5)

    def test_mean_over_instances_on_given_axis(self) -> None:
        fig = Figure()
        ax = fig.subplots()
        out = visualize_token_influence(
            aggregate_instances(),
            example=None,
            tokens=TOKENS,
            plt_fig_axis=(fig, ax),
            use_pyplot=False,
        )
        assert out[1] is ax
        assert self.bars(ax, 0) == [0.75, -1.0]


class TestCandidates:
    def teardown_method(self) -> None:
        plt.close("all")

    def test_positions_stage(self) -> None:
        result = small_result()
        fig, ax = visualize_candidates(result, source=1, use_pyplot=False)
        render(fig)
        pattern = result.pattern(0, 1)
        matrix = np.array(pattern.position_candidates).T
        image = ax.get_images()[0].get_array()
        np.testing.assert_allclose(image, matrix / np.abs(matrix).max())
        cells = [p for p in ax.patches if p.get_gid() == "chosen-cell"]
        chosen = [(round(p.get_x() + 0.5), round(p.get_y() + 0.5)) for p in cells]
        assert chosen == list(zip(range(1, 5), pattern.positions[1:]))

    def test_nodes_stage_and_layer_normalisation(self) -> None:
        result = small_result()
        fig, ax = visualize_candidates(
            result, stage="nodes", normalize="layer", use_pyplot=False
        )
        pattern = result.pattern(0, 0)  # default: the largest |g|
        image = ax.get_images()[0].get_array()
        assert image.shape == (5, 4)
        np.testing.assert_allclose(np.abs(image).max(axis=0), 1.0)
        cells = [p for p in ax.patches if p.get_gid() == "chosen-cell"]
        rows = [round(p.get_y() + 0.5) for p in cells]
        assert rows == [4 if n.head is None else n.head for n in pattern.nodes]
        assert ax.get_yticklabels()[-1].get_text() == "skip"

    def test_pattern_without_candidates(self) -> None:
        pattern = make_pattern(0, [(0, None), (4, 1)], 1.0)
        pattern.node_candidates = []
        visualize_candidates(pattern, stage="positions", use_pyplot=False)
        with pytest.raises(ValueError):
            visualize_candidates(pattern, stage="nodes", use_pyplot=False)
