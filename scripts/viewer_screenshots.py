"""Screenshots of the interactive route viewer for docs/visualization.md.

Writes ``viewer_demo_6layers.png`` (the paper's plural-subject sentence on the embedded
6-layer model, the page ``demo`` writes) and ``viewer_llama_30layers.png`` (a random
30-layer tiny Llama, routes that mean nothing) into ``--out``, from pages written by
the CLI, in the system Chromium (Debian's ``chromium``)::

    PYTHONPATH=. python scripts/viewer_screenshots.py --out docs/_static
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
from typing import Sequence

from PIL import Image

from captum_influence_patterns.cli import main as cli
from captum_influence_patterns.testing import family_model
from captum_influence_patterns.testing.checkpoints import WORDS, tiny_tokenizer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
#: 20 tokens of the tiny vocabulary for the 30-layer model (a causal LM: it reads on).
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


def shoot(browser, page_path: str, png: str, source: int, layer: int) -> None:
    """Hover ``source``'s token, click its node at ``layer``, save a small PNG."""
    page = browser.new_page(viewport={"width": 1180, "height": 640})
    page.goto("file://" + os.path.abspath(page_path))
    page.wait_for_selector("#cip-root[data-ready]")
    page.hover(f'.token[data-position="{source}"] rect.label')
    page.click(
        f'.route[data-label="guided"] .node[data-source="{source}"]'
        f'[data-layer="{layer}"]'
    )
    page.screenshot(path=png)
    page.close()
    # A palette of 64 colours keeps the file small (flat colours, text).
    Image.open(png).convert("RGB").quantize(64).save(png, optimize=True)


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
              os.path.join(args.out, "viewer_demo_6layers.png"), source=2, layer=4)
        shoot(browser, os.path.join(work, "llama-out", "pattern.html"),
              os.path.join(args.out, "viewer_llama_30layers.png"), source=1, layer=30)
        browser.close()


if __name__ == "__main__":
    main()
