"""Figures stay readable (issue 31): the weakest route is visible, head labels never
overlap, neighbouring routes keep a white outline between them, the token panel says
why a route's influence can exceed g, and every chart has a title and axis labels."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from captum_influence_patterns.viz.panels import (
    visualize_candidates,
    visualize_token_influence,
)
from captum_influence_patterns.viz.plots import (
    visualize_pattern,
    visualize_patterns_aggregate,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gallery():
    spec = importlib.util.spec_from_file_location(
        "make_gallery", ROOT / "scripts" / "make_gallery.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def crowded(gallery):
    """Hand-made routes, 24 layers over 64 tokens, 16 heads: many labels per layer."""
    return gallery.handmade_result(length=64, layers=24, heads=16)


@pytest.fixture(scope="module")
def six(gallery):
    words = "[CLS] the farmers that the assistant loves [MASK] old . [SEP]".split()
    return gallery.random_model_result(6, [[w if w in gallery.VOCAB else "near"
                                            for w in words]])


def _overlaps(boxes):
    return [
        (a, b) for a, b in itertools.combinations(boxes, 2)
        if a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1
    ]


@pytest.mark.parametrize("name", ["crowded", "six"])
def test_head_labels_never_overlap(name, request):
    result = request.getfixturevalue(name)
    fig, ax = visualize_pattern(result, use_pyplot=False, threshold=0.0)
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_gid() == "head-label"]
    assert len(labels) > 5
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert _overlaps(boxes) == []


def test_weakest_route_is_visible_and_routes_keep_an_outline(six):
    fig, ax = visualize_pattern(six, use_pyplot=False, threshold=0.0)
    edges = [line for line in ax.get_lines() if str(line.get_gid()).startswith("edge")]
    assert min(line.get_linewidth() for line in edges) >= 1.6
    for line in edges:
        outline = line.get_path_effects()[0]
        assert outline._gc["foreground"] == "white"


def test_every_chart_has_a_title_and_axis_labels(six, crowded):
    charts = [
        visualize_pattern(six, use_pyplot=False, show_token_panel=True),
        visualize_patterns_aggregate(crowded, use_pyplot=False),
        visualize_token_influence(six, use_pyplot=False),
        visualize_candidates(six, use_pyplot=False, stage="positions"),
        visualize_candidates(six, use_pyplot=False, stage="nodes"),
    ]
    for fig, _ in charts:
        for ax in fig.axes:
            if not ax.get_visible() or ax.get_label() == "<colorbar>":
                continue
            assert ax.get_title(), ax
            assert ax.get_xlabel(), ax.get_title()
            assert ax.get_ylabel() or not ax.get_yticklabels() or ax.get_title() == (
                "token influence"
            ), ax.get_title()


def test_the_legend_says_why_influence_exceeds_g(six):
    fig, ax = visualize_token_influence(six, use_pyplot=False)
    patterns = six.patterns[0]
    above = any(abs(p.influence) > abs(p.token_influence) for p in patterns) or any(
        abs(p.embedding_influence) > abs(p.token_influence) for p in patterns
    )
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("above g" in t for t in texts) == above
