"""Render example figures of :mod:`captum_influence_patterns.viz.plots`.

Writes PNGs and an HTML page into an output folder (default ``gallery/``, git-ignored)
from tiny random BERT models (real searches, meaningless routes) and from hand-built
patterns (exact control, e.g. 24 layers and 64 tokens)::

    PYTHONPATH=. python scripts/make_gallery.py --out gallery
"""

from __future__ import annotations

import argparse
import os
import random
from typing import List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from torch import nn  # noqa: E402

from captum_influence_patterns import (  # noqa: E402
    InfluencePatterns,
    InfluencePatternsResult,
    Pattern,
    PatternNode,
    masked_lm_logit_difference,
)
from captum_influence_patterns.viz.html import pattern_html  # noqa: E402
from captum_influence_patterns.viz.panels import (  # noqa: E402
    visualize_candidates,
    visualize_token_influence,
)
from captum_influence_patterns.viz.plots import (  # noqa: E402
    visualize_pattern,
    visualize_patterns_aggregate,
)
from captum_influence_patterns.testing import family_model  # noqa: E402
from captum_influence_patterns.testing.patterns import make_result  # noqa: E402

# A toy vocabulary: ids 0..4 are special, the rest words (some with tokenizer marks).
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the author that guard likes young old farmers assistant loves is are "
    "##s ##ing Ġsaid ▁next to near <script> $5 a an .".split()
)
VOCAB = SPECIALS + WORDS + [f"w{k}" for k in range(60 - len(SPECIALS) - len(WORDS))]
MASK_ID = VOCAB.index("[MASK]")


def _ids(words: Sequence[str]) -> List[int]:
    return [VOCAB.index(w) for w in words]


def tiny_bert(layers: int, seed: int = 0) -> nn.Module:
    """A random float64 BERT for masked LM with the toy vocabulary (default init)."""
    return family_model(
        "bert",
        seed,
        weight_scale=1.0,
        vocab_size=len(VOCAB),
        hidden_size=48,
        num_hidden_layers=layers,
        intermediate_size=96,
        max_position_embeddings=64,
    )


def random_model_result(
    layers: int, sentences: List[List[str]]
) -> InfluencePatternsResult:
    """Run the search on a tiny random BERT; the [MASK] position must be shared."""
    model = tiny_bert(layers)
    inputs = torch.tensor([_ids(s) for s in sentences])
    output = sentences[0].index("[MASK]")
    explainer = InfluencePatterns(masked_lm_logit_difference(model), model)
    result = explainer.attribute(
        inputs,
        baselines=MASK_ID,
        additional_forward_args=(output, VOCAB.index("is"), VOCAB.index("are")),
        output_position=output,
        n_steps=8,
    )
    result.tokens = [[VOCAB[i] for i in row] for row in inputs.tolist()]
    return result


Route = List[Tuple[int, Optional[int]]]


def random_route(
    rng: random.Random, source: int, output: int, length: int, layers: int, heads: int
) -> Route:
    """``(position, head or None)`` per layer: skips, a head where the route moves."""
    jump = rng.randrange(1, layers)
    middle = rng.choice([output, rng.randrange(length)])
    route: Route = []
    position = source
    for layer in range(1, layers + 1):
        target = output if layer == layers else middle if layer == jump else position
        moved = target != position
        head = rng.randrange(heads) if moved or rng.random() < 0.1 else None
        route.append((target, head))
        position = target
    return route


def handmade_pattern(
    rng: random.Random, source: int, route: Route, g: float, length: int, heads: int
) -> Pattern:
    """A pattern along ``route`` with plausible influences and candidates."""
    sign = -1 if g < 0 else 1
    positions = [source] + [position for position, _ in route]
    nodes, values = [], []
    share = abs(g) * rng.uniform(0.6, 1.2)
    for layer, (position, head) in enumerate(route, start=1):
        share *= rng.uniform(0.9, 1.0)
        values.append(sign * share)
        nodes.append(
            PatternNode(
                layer=layer,
                position=position,
                kind="skip" if head is None else "head",
                head=head,
                influence=sign * share,
            )
        )
    position_candidates, node_candidates = [], []
    for layer, node in enumerate(nodes, start=1):
        row = [rng.gauss(0.0, 0.2 * abs(g)) for _ in range(length)]
        row[node.position] = values[layer - 1] * 1.2
        position_candidates.append(row)
        cands = [rng.gauss(0.0, 0.15 * abs(g)) for _ in range(heads + 1)]
        cands[heads if node.head is None else node.head] = values[layer - 1]
        node_candidates.append(cands)
    return Pattern(
        source=source,
        sign=sign,
        token_influence=g,
        positions=positions,
        position_influence=[v * 1.2 for v in values],
        embedding_influence=values[-1] * 1.2,
        nodes=nodes,
        influence=values[-1],
        position_candidates=position_candidates,
        node_candidates=node_candidates,
    )


def handmade_result(
    length: int,
    layers: int,
    heads: int,
    examples: int = 1,
    seed: int = 0,
    consistency: float = 0.75,
) -> InfluencePatternsResult:
    """A result of hand-built patterns, e.g. for a deep model and a long input.

    Each source has a typical route and sign; an instance follows that route with
    probability ``consistency`` and a random one otherwise.
    """
    rng = random.Random(seed)
    output = length - 2
    words = ["[CLS]"] + [rng.choice(WORDS) for _ in range(length - 3)]
    words += ["[MASK]", "[SEP]"]
    sources = [j for j in range(length) if j != output]
    typical = {
        j: (random_route(rng, j, output, length, layers, heads), rng.gauss(0.0, 1.0))
        for j in sources
    }
    patterns = []
    for _ in range(examples):
        row = []
        for j in sources:
            route, g = typical[j]
            if rng.random() >= consistency:
                route = random_route(rng, j, output, length, layers, heads)
            row.append(
                handmade_pattern(
                    rng, j, route, g * rng.uniform(0.5, 1.5), length, heads
                )
            )
        patterns.append(row)
    return make_result(patterns, words, output, input_ids=_ids(words))


def save(fig: plt.Figure, out: str, name: str) -> None:
    path = os.path.join(out, name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gallery", help="output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)  # tiny models: more threads only contend

    sentence = "[CLS] the farmers that the assistant loves [MASK] old ##s . [SEP]"
    words = [w if w in VOCAB else "near" for w in sentence.split()]
    six = random_model_result(6, [words])
    fig, _ = visualize_pattern(six, use_pyplot=False, threshold=0.0)
    save(fig, args.out, "pattern_6layers.png")
    fig, _ = visualize_pattern(six, use_pyplot=False, show_token_panel=True)
    save(fig, args.out, "pattern_6layers_panel.png")
    fig, _ = visualize_pattern(six, use_pyplot=False, level="embedding", threshold=0.0)
    save(fig, args.out, "pattern_6layers_embedding.png")

    deep = handmade_result(length=64, layers=24, heads=16)
    fig, _ = visualize_pattern(deep, use_pyplot=False, threshold=0.025)
    save(fig, args.out, "pattern_24layers_64tokens.png")
    fig, _ = visualize_candidates(deep, use_pyplot=False, stage="positions")
    save(fig, args.out, "candidates_positions_24x64.png")

    rng = random.Random(1)
    batch = [
        [
            "[CLS]",
            "the",
            rng.choice(["author", "farmers"]),
            "that",
            "the",
            rng.choice(["guard", "assistant"]),
            "likes",
            "[MASK]",
            "young",
            ".",
            "[SEP]",
        ]
        for _ in range(6)
    ]
    many = random_model_result(4, batch)
    fig, _ = visualize_patterns_aggregate(many, use_pyplot=False)
    save(fig, args.out, "aggregate_random_4layers.png")
    synthetic = handmade_result(length=12, layers=6, heads=8, examples=20, seed=3)
    fig, _ = visualize_patterns_aggregate(synthetic, use_pyplot=False, min_fraction=0.2)
    save(fig, args.out, "aggregate_handmade_6layers.png")
    fig, _ = visualize_token_influence(many, example=None, use_pyplot=False)
    save(fig, args.out, "token_panel_mean.png")
    fig, _ = visualize_candidates(six, use_pyplot=False, stage="positions")
    save(fig, args.out, "candidates_positions.png")
    fig, _ = visualize_candidates(six, use_pyplot=False, stage="nodes")
    save(fig, args.out, "candidates_nodes.png")

    path = os.path.join(args.out, "pattern.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(pattern_html(six, full_document=True))
    print(path)


if __name__ == "__main__":
    main()
