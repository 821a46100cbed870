"""The pre-registration of the language-model run is fixed: unchanged since the commit
that added it, and every commit the run's RUNS.md names contains it unchanged."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = "docs/preregistration.md"
RUN = ROOT / "results" / "agreement_smollm2"
#: The line below which dated amendments go.
AMENDMENTS_LINE = "\n---\n"
#: An amendment opens with its date, e.g. "2026-12-06:".
DATED = re.compile(r"^\*?\*?\d{4}-\d{2}-\d{2}")
#: A RUNS.md table row's commit cell: a short or full hash, "+dirty" when the working
#: tree differed from it.
COMMIT = re.compile(r"^\|[^|]*\|\s*([0-9a-f]{7,40}(?:\+dirty)?)\b")

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(),
    reason="the history is needed: run from a git clone",
)


def git(*args: str) -> Optional[str]:
    done = subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout if done.returncode == 0 else None


def added_in() -> Optional[str]:
    """The commit that added the page (None while it is not committed yet)."""
    found = git("log", "--diff-filter=A", "--format=%H", "--", PAGE)
    commits = (found or "").split()
    return commits[-1] if commits else None


def run_commits() -> List[str]:
    """The commits of the run's RUNS.md tables (none before the run)."""
    runs = RUN / "RUNS.md"
    if not runs.exists():
        return []
    lines = runs.read_text(encoding="utf-8").splitlines()
    return [m.group(1) for m in map(COMMIT.match, lines) if m]


def test_the_page_fixes_what_a_reviewer_checks() -> None:
    text = (ROOT / PAGE).read_text(encoding="utf-8")
    assert "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53" in text
    assert "n = 100 prefixes per task" in text
    assert "One look, at n = 600" in text
    for route in ("alti", "alti_logit", "attention_norm", "information_flow"):
        assert route in text


def fixed_part(text: str) -> str:
    """The plan: everything above the line that opens the amendments."""
    return text.split(AMENDMENTS_LINE)[0]


def test_unchanged_since_it_was_committed() -> None:
    """Above the line the page is as committed; below it, amendments only."""
    commit = added_in()
    if commit is None:  # the working tree before its first commit: nothing to compare
        assert not any(RUN.glob("*.jsonl*")), "run records without a pre-registration"
        return
    committed = git("show", f"{commit}:{PAGE}")
    text = (ROOT / PAGE).read_text(encoding="utf-8")
    assert AMENDMENTS_LINE in committed and AMENDMENTS_LINE in text
    assert fixed_part(committed) == fixed_part(text), (
        f"{PAGE} changed after {commit[:7]}: amend below its last line instead"
    )
    amendments = text.split(AMENDMENTS_LINE)[1].split("\n- ")[1:]
    for amendment in amendments:
        assert DATED.match(amendment), f"an amendment without its date: {amendment[:60]}"


def test_the_run_ran_at_commits_that_hold_it() -> None:
    """Every commit of the run holds the same page, amendments included (they are
    made before the first record), whose plan is the one first committed."""
    records = sorted(RUN.glob("*.jsonl*"))
    commits = run_commits()
    if not records:
        return
    assert commits, f"{RUN.name} has records but its RUNS.md names no commit"
    first = added_in()
    assert first is not None, "run records without a committed pre-registration"
    plan = fixed_part(git("show", f"{first}:{PAGE}"))
    pages = set()
    for commit in commits:
        assert not commit.endswith("+dirty"), f"{commit}: run from a changed tree"
        assert git("merge-base", "--is-ancestor", first, commit) is not None, (
            f"{commit} does not descend from the pre-registration ({first[:7]})"
        )
        page = git("show", f"{commit}:{PAGE}")
        assert fixed_part(page) == plan, f"{commit} changed {PAGE}"
        pages.add(page)
    assert len(pages) == 1, "the amendments changed during the run"


def test_the_row_pattern_reads_the_runs_tables() -> None:
    row = "| 1 process, 1 thread | 541f797 | this machine | 03:59 | 70 |"
    assert COMMIT.match(row).group(1) == "541f797"
    assert COMMIT.match("| 1 | 410980e+dirty | x |").group(1) == "410980e+dirty"
    assert COMMIT.match("| shards | commit | where |") is None
