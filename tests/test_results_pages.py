"""The results pages are what scripts/make_results.sh makes of the committed runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_results.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_make_results_regenerates_the_committed_pages(tmp_path):
    env = dict(
        os.environ,
        DOCS=str(tmp_path),
        PYTHON=sys.executable,
        PYTHONPATH=str(ROOT),
        MPLBACKEND="Agg",
    )
    # beside evaluation.md, as in docs/ (the pages link to it)
    shutil.copy(ROOT / "docs" / "evaluation.md", tmp_path)
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for page in ("results.md", "results_routes.md"):
        made = (tmp_path / page).read_text(encoding="utf-8")
        committed = (ROOT / "docs" / page).read_text(encoding="utf-8")
        assert made == committed, f"docs/{page} is stale: run scripts/make_results.sh"
    summary = (tmp_path / "_static" / "results" / "summary.json").read_text()
    assert '"skip_share"' in summary
    assert (tmp_path / "_static" / "results_routes" / "ablation.png").stat().st_size
