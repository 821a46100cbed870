"""The documentation cannot rot: its Python examples run, its API page names every
public object, and the Sphinx build passes with warnings as errors (when Sphinx is
installed)."""

from __future__ import annotations

import functools
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import List, Optional, Tuple
from unittest import mock

import pytest

import matplotlib
import pytest

matplotlib.use("Agg")

import captum_influence_patterns  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Every page whose ```python blocks the tests run: README.md and docs/*.md.
PAGES = ("README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md")))
#: The marker, on the line just before a ```python fence, of a block that needs a
#: user's checkpoint (an HTML comment: invisible on the Sphinx site and on a code
#: host). Such a block is not run by the page runner; keep it rare.
NEEDS_CHECKPOINT = "<!-- docs-test: needs your checkpoint -->"
#: Marked blocks that another test runs anyway, with a stand-in checkpoint.
MARKED_BUT_RUN = {("README.md", 2): "TestReadmeExample (a tiny masked LM)"}
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
_MARKED = re.compile(
    r"^(<!--[^\n]*-->)\n```python\n(.*?)^```", re.DOTALL | re.MULTILINE
)


def python_blocks(path: Path) -> List[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def page_blocks(path: Path) -> List[Tuple[int, Optional[str], str]]:
    """``(number, marker or None, code)`` of every ```python block of a page."""
    text = path.read_text(encoding="utf-8")
    marked = {code: marker for marker, code in _MARKED.findall(text)}
    return [
        (number, marked.get(code), code)
        for number, code in enumerate(BLOCK.findall(text), start=1)
    ]


@pytest.fixture(scope="module")
def embedded_once():
    """The embedded model loads once for all pages (each page still calls
    ``load_model()``/``load_embedded_model()`` as a reader would)."""
    from captum_influence_patterns.models import embedded, loading

    cached = functools.lru_cache(maxsize=None)(embedded.load_embedded_model)
    with mock.patch.object(embedded, "load_embedded_model", cached), \
            mock.patch.object(loading, "load_embedded_model", cached):
        yield


@pytest.mark.parametrize("page", PAGES)
def test_page_examples(page: str, embedded_once, tmp_path, monkeypatch) -> None:
    """The page's Python blocks, in order, in one namespace, in an empty working
    directory, as a reader runs them; blocks marked as needing a checkpoint are left
    out."""
    import matplotlib.pyplot as plt

    path = ROOT / page
    text = path.read_text(encoding="utf-8")
    blocks = page_blocks(path)
    assert len(blocks) == text.count("```python"), "a ```python fence not closed"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{path.stem}"}
    skipped = []
    try:
        for number, marker, code in blocks:
            if marker is not None:
                assert marker == NEEDS_CHECKPOINT, f"{page} block {number}: {marker}"
                skipped.append(number)
                continue
            code_object = compile(code, f"{page}[block {number}]", "exec")
            exec(code_object, namespace)  # noqa: S102
    finally:
        plt.close("all")
    if not blocks:
        pytest.skip(f"{page} has no Python block")
    if skipped and len(skipped) == len(blocks):
        pytest.skip(f"{page}: every block needs your checkpoint")


def test_checkpoint_markers_are_rare_and_run_elsewhere() -> None:
    """Only README's own-checkpoint block is marked, and TestReadmeExample runs it
    with a stand-in; a marker sits right before a ```python fence."""
    marked = {
        (page, number)
        for page in PAGES
        for number, marker, _ in page_blocks(ROOT / page)
        if marker is not None
    }
    assert marked == set(MARKED_BUT_RUN)
    for page in PAGES:
        text = (ROOT / page).read_text(encoding="utf-8")
        for match in re.finditer(re.escape(NEEDS_CHECKPOINT), text):
            after = text[match.end():match.end() + 11]
            assert after == "\n```python\n", f"{page}: a marker not before a fence"


class TestDocText(unittest.TestCase):
    """Issue 19, item 17: the pages read the same on the Sphinx site and on a code
    host, and state what the code does."""

    def test_no_myst_roles(self) -> None:
        """A MyST role such as {class}`X` shows as literal text on a code host."""
        role = re.compile(r"\{[a-z:]+\}`")
        found = [
            f"{page}:{number}"
            for page in PAGES
            for number, line in enumerate(
                (ROOT / page).read_text(encoding="utf-8").splitlines(), start=1)
            if role.search(line)
        ]
        self.assertEqual(found, [])

    def test_package_paths_exist(self) -> None:
        """Every ``captum_influence_patterns/...`` file a page names exists."""
        missing = [
            (page, name)
            for page in PAGES
            for name in re.findall(r"captum_influence_patterns/[\w/]+\.\w+",
                                   (ROOT / page).read_text(encoding="utf-8"))
            if not (ROOT / name).exists()
        ]
        self.assertEqual(missing, [])

    def test_ratio_of_sums_is_the_one_computed(self) -> None:
        """method.md, section 9 defines the ratio of sums as the metrics compute it:
        sum sign(g) I / sum |g| (checked on two patterns where it differs from
        sum I / sum g)."""
        from captum_influence_patterns.experiments.metrics import sufficiency

        def pattern(g: float, influence: float) -> dict:
            return {"source": 1, "sign": 1, "positions": [1, 2],
                    "position_influence": [influence], "nodes": [],
                    "token_influence": g, "influence": influence,
                    "embedding_influence": influence}

        record = {"patterns": [pattern(2.0, 1.0), pattern(-1.0, -1.0)],
                  "token_influence": [0.0, 2.0, -1.0]}
        ratio = sufficiency([record])["attention_ratio"]
        self.assertAlmostEqual(ratio, (1.0 + 1.0) / (2.0 + 1.0))  # not 0/1
        section = (DOCS / "method.md").read_text(encoding="utf-8").split(
            "## 9.")[1].split("## 10.")[0]
        self.assertIn(r"\sum \mathrm{sign}(g)\, I(\pi) / \sum |g|", section)


class TestReadmeExample(unittest.TestCase):
    """README's own-checkpoint example, as written, with its placeholder checkpoint path
    ("path/to/bert") served by a tiny masked LM and a tokenizer built locally."""

    PLACEHOLDER = "path/to/bert"

    def test_readme_python_example(self) -> None:
        import torch
        from transformers import (
            AutoModelForMaskedLM,
            AutoTokenizer,
            BertConfig,
            BertForMaskedLM,
            BertTokenizer,
        )

        blocks = python_blocks(ROOT / "README.md")
        self.assertTrue(blocks, "README.md has no ```python block")
        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        for block in blocks:
            for sentence in re.findall(r'"([^"]*\[MASK\][^"]*)"', block):
                words += [w for w in sentence.split() if w not in words]
            for listed in re.findall(r"convert_tokens_to_ids\(\[([^\]]*)\]\)", block):
                words += [w for w in re.findall(r'"(\w+)"', listed) if w not in words]
        vocab_dir = tempfile.mkdtemp()
        vocab_file = os.path.join(vocab_dir, "vocab.txt")
        with open(vocab_file, "w", encoding="utf-8") as handle:
            handle.write("\n".join(words) + "\n")
        torch.manual_seed(0)
        tiny = BertForMaskedLM(BertConfig(
            vocab_size=len(words), hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=64,
        ))
        tokenizer = BertTokenizer.from_pretrained(vocab_dir)
        placeholder = self.PLACEHOLDER

        def model_loader(original):
            def load(name, *args, **kwargs):
                return tiny if name == placeholder else original(name, *args, **kwargs)
            return load

        def tokenizer_loader(original):
            def load(name, *args, **kwargs):
                if name == placeholder:
                    return tokenizer
                return original(name, *args, **kwargs)
            return load

        originals = (
            AutoModelForMaskedLM.from_pretrained, AutoTokenizer.from_pretrained
        )
        AutoModelForMaskedLM.from_pretrained = model_loader(originals[0])
        AutoTokenizer.from_pretrained = tokenizer_loader(originals[1])
        cwd = os.getcwd()
        try:
            os.chdir(tempfile.mkdtemp())  # blocks may write files (pattern.png)
            namespace = {"__name__": "docs_readme"}
            # Block 1 runs the embedded model: TestReadmeFirstExample runs it as a
            # script, as a new user would.
            for number, block in enumerate(blocks[1:], start=2):
                exec(compile(block, f"README.md[block {number}]", "exec"), namespace)
        finally:
            os.chdir(cwd)
            AutoModelForMaskedLM.from_pretrained = originals[0]
            AutoTokenizer.from_pretrained = originals[1]
        import matplotlib.pyplot as plt

        plt.close("all")


@pytest.mark.slow
class TestReadmeFirstExample(unittest.TestCase):
    """README's first Python block, saved to a file and run offline in an empty folder
    (a fresh process, no network, no files around it), succeeds."""

    def test_runs_offline_in_an_empty_folder(self) -> None:
        block = python_blocks(ROOT / "README.md")[0]
        self.assertIn("load_model()", block)
        self.assertNotIn("path/to", block)
        with tempfile.TemporaryDirectory() as script_dir, \
                tempfile.TemporaryDirectory() as empty:
            script = os.path.join(script_dir, "readme_example.py")
            with open(script, "w", encoding="utf-8") as handle:
                handle.write(block)
            env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                       MPLBACKEND="Agg")
            env["PYTHONPATH"] = os.pathsep.join(
                [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
            )
            done = subprocess.run(
                [sys.executable, script], cwd=empty, env=env, capture_output=True,
                text=True, timeout=900,
            )
            self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
            self.assertIn("route: ", done.stdout)
            self.assertIn("I(e)/g", done.stdout)
            with open(os.path.join(empty, "pattern.png"), "rb") as handle:
                self.assertEqual(handle.read(8), b"\x89PNG\r\n\x1a\n")


class TestReadmeTestCommand(unittest.TestCase):
    def test_readme_runs_what_ci_runs(self) -> None:
        """The README's test command is .ci/run's, line for line (offline variables
        included)."""
        ci = [
            line.strip()
            for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
            if line.strip()
            and not line.startswith(("#", "set ", "cd "))
        ]
        offline = "export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg"
        self.assertIn(offline, ci)
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        blocks = re.findall(r"^```bash\n(.*?)^```", readme, re.DOTALL | re.MULTILINE)
        self.assertIn(ci, [
            [line.strip() for line in block.splitlines() if line.strip()]
            for block in blocks
        ])


class TestApiPage(unittest.TestCase):
    def test_every_public_name_is_in_api_rst(self) -> None:
        text = (DOCS / "api.rst").read_text(encoding="utf-8")
        missing = [
            name for name in captum_influence_patterns.__all__
            if not re.search(rf"\b{re.escape(name)}\b", text)
        ]
        self.assertEqual(missing, [], "names in __all__ missing from docs/api.rst")

    def test_every_public_module_is_documented(self) -> None:
        text = (DOCS / "api.rst").read_text(encoding="utf-8")
        package_path = captum_influence_patterns.__path__
        modules = [
            info.name
            for info in pkgutil.walk_packages(package_path)
            if not info.ispkg and not any(
                part.startswith("_") for part in info.name.split(".")
            )
        ]
        missing = [
            name for name in modules
            if f".. automodule:: captum_influence_patterns.{name}" not in text
        ]
        self.assertEqual(missing, [], "modules without an automodule in docs/api.rst")


@unittest.skipUnless(
    importlib.util.find_spec("sphinx") and importlib.util.find_spec("myst_parser"),
    "sphinx and myst-parser are not installed (pip install -e '.[docs]')",
)
@pytest.mark.slow
class TestSphinxBuild(unittest.TestCase):
    def test_html_build_has_no_warnings(self) -> None:
        with tempfile.TemporaryDirectory() as out:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
            )
            done = subprocess.run(
                [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q",
                 "-b", "html", "-d", os.path.join(out, "doctrees"), str(DOCS),
                 os.path.join(out, "html")],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
            )
            self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
            self.assertTrue(os.path.isfile(os.path.join(out, "html", "api.html")))
