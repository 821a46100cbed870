"""The documentation cannot rot: its Python examples run, its API page names every
public object, and the Sphinx build passes with warnings as errors (when Sphinx is
installed)."""

from __future__ import annotations

import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import List

import matplotlib

matplotlib.use("Agg")

import captum_influence_patterns  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Pages whose ```python blocks are executed, each page in one namespace, in order.
EXECUTED_PAGES = ("overview.md", "installation.md", "method.md", "own_model.md",
                  "changelog.md", "troubleshooting.md", "visualization.md")
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(path: Path) -> List[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def run_blocks(test: unittest.TestCase, path: Path) -> None:
    namespace = {"__name__": f"docs_{path.stem}"}
    for number, block in enumerate(python_blocks(path), start=1):
        with test.subTest(page=path.name, block=number):
            code = compile(block, f"{path.name}[block {number}]", "exec")
            exec(code, namespace)  # noqa: S102


class TestDocExamples(unittest.TestCase):
    def test_pages_exist(self) -> None:
        for name in EXECUTED_PAGES + ("index.rst", "api.rst", "conf.py"):
            self.assertTrue((DOCS / name).is_file(), name)

    def test_own_model_examples(self) -> None:
        self.assertGreaterEqual(len(python_blocks(DOCS / "own_model.md")), 5)
        run_blocks(self, DOCS / "own_model.md")

    def test_overview_example_on_the_embedded_model(self) -> None:
        run_blocks(self, DOCS / "overview.md")

    def test_other_pages_examples(self) -> None:
        for name in ("installation.md", "method.md", "changelog.md"):
            run_blocks(self, DOCS / name)

    def test_visualization_examples(self) -> None:
        import matplotlib.pyplot as plt

        self.assertGreaterEqual(len(python_blocks(DOCS / "visualization.md")), 7)
        try:
            run_blocks(self, DOCS / "visualization.md")
        finally:
            plt.close("all")

    def test_troubleshooting_examples(self) -> None:
        self.assertGreaterEqual(len(python_blocks(DOCS / "troubleshooting.md")), 4)
        run_blocks(self, DOCS / "troubleshooting.md")


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
