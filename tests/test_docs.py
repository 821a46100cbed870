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
from pathlib import Path
from typing import List, Optional, Tuple
from unittest import mock

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
MARKED_BUT_RUN = {("README.md", 2): "test_readme_python_example (a tiny masked LM)"}
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


@pytest.fixture
def tables_kept():
    """The registries as they were before a page (extending.md adds to them; a page
    that fails half-way leaves no entry behind)."""
    from captum_influence_patterns.graph import MODEL_FAMILIES
    from captum_influence_patterns.models.qoi_kinds import QOI_KINDS
    from captum_influence_patterns.routes.finders import ROUTE_FINDERS
    from captum_influence_patterns.search import SEARCHES

    tables = (MODEL_FAMILIES, QOI_KINDS, ROUTE_FINDERS, SEARCHES)
    saved = [dict(table) for table in tables]
    yield
    for table, entries in zip(tables, saved):
        table.clear()
        table.update(entries)


@pytest.mark.parametrize("page", PAGES)
def test_page_examples(
    page: str, embedded_once, tables_kept, tmp_path, monkeypatch
) -> None:
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
    """Only README's own-checkpoint block is marked, and
    test_readme_python_example runs it
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


# Issue 19, item 17: the pages read the same on the Sphinx site and on a code host,
# and state what the code does.
def test_no_myst_roles() -> None:
    """A MyST role such as {class}`X` shows as literal text on a code host."""
    role = re.compile(r"\{[a-z:]+\}`")
    found = [
        f"{page}:{number}"
        for page in PAGES
        for number, line in enumerate(
            (ROOT / page).read_text(encoding="utf-8").splitlines(), start=1)
        if role.search(line)
    ]
    assert found == []


def test_package_paths_exist() -> None:
    """Every ``captum_influence_patterns/...`` file a page names exists."""
    missing = [
        (page, name)
        for page in PAGES
        for name in re.findall(r"captum_influence_patterns/[\w/]+\.\w+",
                               (ROOT / page).read_text(encoding="utf-8"))
        if not (ROOT / name).exists()
    ]
    assert missing == []


def test_ratio_of_sums_is_the_one_computed() -> None:
    """method.md, section 9 defines the ratio of sums as the metrics compute it:
    sum sign(g) I / sum |g| (checked on two patterns where it differs from
    sum I / sum g)."""
    from captum_influence_patterns.paper.metrics import sufficiency

    def pattern(g: float, influence: float) -> dict:
        return {"source": 1, "sign": 1, "positions": [1, 2],
                "position_influence": [influence], "nodes": [],
                "token_influence": g, "influence": influence,
                "embedding_influence": influence}

    record = {"patterns": [pattern(2.0, 1.0), pattern(-1.0, -1.0)],
              "token_influence": [0.0, 2.0, -1.0]}
    ratio = sufficiency([record])["attention_ratio"]
    assert ratio == pytest.approx((1.0 + 1.0) / (2.0 + 1.0), abs=5e-8)  # not 0/1
    section = (DOCS / "method.md").read_text(encoding="utf-8").split(
        "## 9.")[1].split("## 10.")[0]
    assert r"\sum \mathrm{sign}(g)\, I(\pi) / \sum |g|" in section


#: The checkpoint path README's own-checkpoint example names.
README_PLACEHOLDER = "path/to/bert"


def test_readme_python_example(tmp_path, monkeypatch) -> None:
    """README's own-checkpoint example, as written, with its placeholder checkpoint
    path ("path/to/bert") served by a tiny masked LM and a tokenizer built locally."""
    import torch
    from transformers import (
        AutoModelForMaskedLM,
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        BertTokenizer,
    )

    blocks = python_blocks(ROOT / "README.md")
    assert blocks, "README.md has no ```python block"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for block in blocks:
        for sentence in re.findall(r'"([^"]*\[MASK\][^"]*)"', block):
            words += [w for w in sentence.split() if w not in words]
        for listed in re.findall(r"convert_tokens_to_ids\(\[([^\]]*)\]\)", block):
            words += [w for w in re.findall(r'"(\w+)"', listed) if w not in words]
    vocab_dir = tmp_path / "vocab"
    vocab_dir.mkdir()
    (vocab_dir / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    tiny = BertForMaskedLM(BertConfig(
        vocab_size=len(words), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64,
    ))
    tokenizer = BertTokenizer.from_pretrained(str(vocab_dir))

    def loader(original, stand_in):
        def load(name, *args, **kwargs):
            if name == README_PLACEHOLDER:
                return stand_in
            return original(name, *args, **kwargs)
        return load

    for auto, stand_in in ((AutoModelForMaskedLM, tiny), (AutoTokenizer, tokenizer)):
        monkeypatch.setattr(
            auto, "from_pretrained", loader(auto.from_pretrained, stand_in)
        )
    run_in = tmp_path / "run"
    run_in.mkdir()
    monkeypatch.chdir(run_in)  # blocks may write files (pattern.png)
    namespace = {"__name__": "docs_readme"}
    import matplotlib.pyplot as plt

    try:
        # Block 1 runs the embedded model:
        # test_readme_first_example_runs_offline_in_an_empty_folder runs it as a
        # script, as a new user would.
        for number, block in enumerate(blocks[1:], start=2):
            exec(compile(block, f"README.md[block {number}]", "exec"), namespace)
    finally:
        plt.close("all")


@pytest.mark.slow
def test_readme_first_example_runs_offline_in_an_empty_folder(tmp_path) -> None:
    """README's first Python block, saved to a file and run offline in an empty folder
    (a fresh process, no network, no files around it), succeeds."""
    block = python_blocks(ROOT / "README.md")[0]
    assert "load_model()" in block
    assert "path/to" not in block
    script, empty = tmp_path / "readme_example.py", tmp_path / "empty"
    script.write_text(block, encoding="utf-8")
    empty.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    done = subprocess.run(
        [sys.executable, str(script)], cwd=empty, env=env, capture_output=True,
        text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "route: " in done.stdout
    assert "I(e)/g" in done.stdout
    assert (empty / "pattern.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_readme_runs_what_ci_runs() -> None:
    """The README's test command is .ci/run's, line for line (offline variables
    included)."""
    ci = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip()
        and not line.startswith(("#", "set ", "cd "))
    ]
    offline = "export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg"
    assert offline in ci
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```bash\n(.*?)^```", readme, re.DOTALL | re.MULTILINE)
    assert ci in [
        [line.strip() for line in block.splitlines() if line.strip()]
        for block in blocks
    ]


def test_every_public_name_is_in_api_rst() -> None:
    text = (DOCS / "api.rst").read_text(encoding="utf-8")
    missing = [
        name for name in captum_influence_patterns.__all__
        if not re.search(rf"\b{re.escape(name)}\b", text)
    ]
    assert missing == [], "names in __all__ missing from docs/api.rst"


def test_every_public_module_is_documented() -> None:
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
    assert missing == [], "modules without an automodule in docs/api.rst"


@pytest.mark.skipif(
    not (
        importlib.util.find_spec("sphinx") and importlib.util.find_spec("myst_parser")
    ),
    reason="sphinx and myst-parser are not installed (pip install -e '.[docs]')",
)
@pytest.mark.slow
def test_html_build_has_no_warnings(tmp_path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q",
         "-b", "html", "-d", str(tmp_path / "doctrees"), str(DOCS),
         str(tmp_path / "html")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "html" / "api.html").is_file()
