"""Helpers for tests of the command line: run it in-process or in a child process,
check a refused call (exit code 2, one line) and the files an ``explain`` writes, and
:class:`CliTests`, the base of test classes that run it on the tiny checkpoints.

Not imported by ``captum_influence_patterns.testing`` itself (it imports the command
line, and with it the paper's harness).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..cli import main
from ..cli.common import PROG
from ..cli.explain import JSON_FORMAT
from ..results import InfluencePatternsResult
from .checkpoints import MLM_TEXT

#: The folder that holds this package: a child process with it on PYTHONPATH
#: imports this copy.
_SOURCE_ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: How every error line of the command line starts.
PREFIX = f"{PROG}: error: "
#: Items of --input that the tiny word-level models read.
GOOD_ITEMS = (
    {"text": MLM_TEXT, "target": "is", "contrast": "are", "id": "cat",
     "roles": {"subject": 2, "attractor": 5}},
    {"text": "the dogs that the cat sees [MASK] old .", "target": "are",
     "contrast": "is", "id": "dogs"},
)
#: ``--model`` and the words of the tiny masked LM ({mlm}: its folder).
MLM_ARGS = ("--target", "is", "--contrast", "are", "--model", "{mlm}")


def run_cli(argv: List[str]) -> Tuple[int, str, str]:
    """``main(argv)`` in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def subprocess_env() -> dict:
    """The environment of a child process that imports this copy of the package."""
    return dict(
        os.environ, PYTHONPATH=_SOURCE_ROOT, OMP_NUM_THREADS="1", MPLBACKEND="Agg"
    )


def console_script() -> Optional[str]:
    """The installed ``captum-influence-patterns`` script, if there is one."""
    beside = os.path.join(os.path.dirname(sys.executable), PROG)
    return shutil.which(PROG) or (beside if os.path.exists(beside) else None)


def assert_usage_error(
    argv: List[str], expected: str, absent: Optional[str] = None
) -> str:
    """Exit code 2, one line on stderr holding ``expected``, nothing on stdout, and
    ``absent`` (a path) not created."""
    code, stdout, stderr = run_cli(argv)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(PREFIX), lines[0]
    assert expected in lines[0]
    assert "Traceback" not in stderr
    assert stdout == ""
    if absent is not None:
        assert not os.path.exists(absent), f"{absent} was created"
    return lines[0]


def assert_outputs(directory: str, stems: Tuple[str, ...] = ("pattern",)) -> None:
    """``directory`` holds exactly ``STEM.json``, a PNG and an HTML page per stem."""
    exts = ("json", "png", "html")
    expected = sorted(f"{stem}.{ext}" for stem in stems for ext in exts)
    assert sorted(os.listdir(directory)) == expected  # no temporary files
    for stem in stems:
        with open(os.path.join(directory, f"{stem}.png"), "rb") as handle:
            assert handle.read(8) == PNG_MAGIC
        with open(os.path.join(directory, f"{stem}.html"), encoding="utf-8") as h:
            assert h.read().startswith("<!DOCTYPE html>")


def load_document(path: str) -> dict:
    """The JSON an ``explain`` wrote, with every key of its format; its result part
    round-trips through :class:`InfluencePatternsResult`."""
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    for key in ("format", "text", "model", "model_kind", "qoi", "qoi_value",
                "target", "contrast", "baseline", "token_influence", "patterns",
                "output_positions", "input_ids", "convergence_delta", "tokens",
                "metadata"):
        assert key in document
    assert document["format"] == JSON_FORMAT
    InfluencePatternsResult.load_json(path)  # the result part round-trips
    return document


class CliTests:
    """Base of test classes that run the command line: the tiny checkpoints
    (``root``, ``paths``) and a folder of the test's own (``folder``), which the test
    suite's conftest sets before each test (:meth:`use`)."""

    root: str
    paths: Dict[str, str]
    folder: str

    def use(self, root: str, paths: Dict[str, str], test: str) -> None:
        """Runs on the checkpoints under ``root``; writes under a folder named for
        the class and ``test``."""
        self.root, self.paths = root, paths
        self.folder = os.path.join(root, "out", type(self).__name__, test)

    def out_dir(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def write_items(self, name: str, rows: Iterable[Any]) -> str:
        """Writes ``rows`` (dicts, or lines as they are) as a JSONL input file."""
        path = os.path.join(self.out_dir("inputs"), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("".join(
                (row if isinstance(row, str) else json.dumps(row)) + "\n"
                for row in rows
            ))
        return path

    def evaluate_args(self, items: str, output: str, *extra: str) -> List[str]:
        """``evaluate`` of the tiny masked LM on ``items``: 2 steps, the roles'
        sources, quiet."""
        return ["evaluate", "--model", self.paths["mlm"], "--input", items, "-o",
                output, "--n-steps", "2", "--sources", "roles", "-q", *extra]
