"""Screenshots of the interactive route viewer for docs/visualization.md.

Writes ``viewer_demo_6layers.png`` (the paper's plural-subject sentence on the embedded
6-layer model, the page ``demo`` writes), ``viewer_llama_30layers.png`` (a random
30-layer tiny Llama, routes that mean nothing) and ``viewer_evaluation.png`` (the
evaluation page of ``results/agreement_minilm/agreement.jsonl.gz``) into ``--out``,
in the system Chromium (Debian's ``chromium``)::

    PYTHONPATH=. python scripts/viewer_screenshots.py --out docs/_static
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import shutil
import os
import tempfile
from typing import List, Sequence

from PIL import Image

from captum_influence_patterns.cli import main as cli
from captum_influence_patterns.paper.records import load_results
from captum_influence_patterns.paper.report import patterns_page
from captum_influence_patterns.testing import family_model
from captum_influence_patterns.testing.checkpoints import WORDS, tiny_tokenizer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
#: 20 tokens of the tiny vocabulary for the 30-layer model (a causal LM: it reads on).
RESULTS = "results/agreement_minilm/agreement.jsonl.gz"
LONG_TEXT = (
    "the cats that the dog sees are old . the farmers that the cat sees was "
    "good . the movie"
)


def run_cli(argv: Sequence[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli(list(argv)) == 0, argv


def llama_checkpoint(directory: str) -> str:
    """A random 30-layer tiny Llama with the word-level tokenizer, saved."""
    model = family_model(
        "llama", seed=0, num_hidden_layers=30, hidden_size=32, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, vocab_size=len(WORDS),
        config=dict(bos_token_id=2, eos_token_id=3, pad_token_id=0),
    ).float()
    model.save_pretrained(directory)
    tiny_tokenizer(directory).save_pretrained(directory)
    return directory


def evaluation_page(directory: str) -> str:
    """The evaluation page of :data:`RESULTS`, written into ``directory``."""
    lines = os.path.join(directory, "agreement.jsonl")
    with gzip.open(RESULTS, "rb") as source, open(lines, "wb") as target:
        shutil.copyfileobj(source, target)
    path = os.path.join(directory, "evaluation.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(patterns_page(load_results([lines]), title=RESULTS))
    return path


def shoot(browser, page_path: str, png: str, clicks: Sequence[str]) -> None:
    """Open the page, hover and click (``hover:``/``click:`` selectors), save a
    small PNG."""
    page = browser.new_page(viewport={"width": 1180, "height": 640})
    page.goto("file://" + os.path.abspath(page_path))
    page.wait_for_selector("#cip-root[data-ready]")
    for action in clicks:
        what, selector = action.split(":", 1)
        getattr(page, what)(selector)
    page.screenshot(path=png)
    page.close()
    # A palette of 64 colours keeps the file small (flat colours, text).
    Image.open(png).convert("RGB").quantize(64).save(png, optimize=True)


def route_clicks(source: int, layer: int) -> List[str]:
    """Hover ``source``'s token, then click its node at ``layer``."""
    return [
        f'hover:.token[data-position="{source}"] rect.label',
        f'click:.route[data-label="guided"] .node[data-source="{source}"]'
        f'[data-layer="{layer}"]',
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/_static")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = tempfile.mkdtemp()
    run_cli(["demo", "--out", os.path.join(work, "demo"), "--quiet"])
    llama = llama_checkpoint(os.path.join(work, "llama"))
    run_cli(["explain", LONG_TEXT, "--target", "is", "--contrast", "are", "--model",
             llama, "--n-steps", "8", "--out", os.path.join(work, "llama-out"),
             "--quiet"])
    os.makedirs(args.out, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        shoot(browser, os.path.join(work, "demo", "plural-subject.html"),
              os.path.join(args.out, "viewer_demo_6layers.png"), route_clicks(2, 4))
        shoot(browser, os.path.join(work, "llama-out", "pattern.html"),
              os.path.join(args.out, "viewer_llama_30layers.png"), route_clicks(1, 8))
        shoot(browser, evaluation_page(work),
              os.path.join(args.out, "viewer_evaluation.png"),
              ['click:.groups li[data-group="2"]'])
        browser.close()


if __name__ == "__main__":
    main()
