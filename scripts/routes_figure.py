"""docs/routes.md's figure: one sentence's route of one source from every method.

On the embedded model, the subject "farmers" of "the farmers that the assistant loves
[MASK] old ." (QoI: are - is): the guided pattern and the routes of rollout, attention
flow, ALTI, ALTI-Logit, attention-norm rollout and information flow, one panel each,
drawn by ``visualize_pattern_graph`` with widths by each route's own I(pi^a).

Run: ``python scripts/routes_figure.py [docs/_static/routes/peer_routes.png]``
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from captum_influence_patterns import (  # noqa: E402
    InfluencePatterns,
    load_model,
    prepare_explanation,
)
from captum_influence_patterns.routes.compare import compare  # noqa: E402
from captum_influence_patterns.viz.plots import visualize_pattern_graph  # noqa: E402

METHODS = (
    "rollout",
    "flow",
    "alti",
    "alti_logit",
    "attention_norm",
    "information_flow",
)
SUBJECT = 2


def main(path: str = "docs/_static/routes/peer_routes.png") -> None:
    loaded = load_model()
    ex = prepare_explanation(
        loaded,
        "the farmers that the assistant loves [MASK] old .",
        target="are",
        contrast="is",
    )
    ip = InfluencePatterns(ex.forward_func, loaded.model)
    result = compare(
        ip, ex.request(ip, n_steps=20), methods=METHODS, sources=[SUBJECT]
    )
    panels = ("guided",) + METHODS
    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5))
    for ax, name in zip(axes.flat, panels):
        (pattern,) = result.patterns[0][name]
        ratio = pattern.influence / pattern.token_influence
        visualize_pattern_graph(
            [pattern],
            ex.tokens,
            output_position=ex.output_position,
            title=f"{name}: I(pi^a)/g = {ratio:.2f}",
            plt_fig_axis=(fig, ax),
            use_pyplot=False,
            show_legend=False,
        )
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    print(path)
    print(result.table())


if __name__ == "__main__":
    main(*sys.argv[1:])
