"""cli/__init__.py: the command line as a whole: its help, and its entry points as a
user runs them (``python -m``, the console script, a closed pipe)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from captum_influence_patterns.cli import build_parser
from captum_influence_patterns.paper.records import read_records
from captum_influence_patterns.testing import MLM_TEXT
from captum_influence_patterns.testing.cli import (
    CliTests,
    assert_outputs,
    console_script,
    run_cli,
    subprocess_env,
)

ROOT = Path(__file__).resolve().parents[1]


class TestHelp(CliTests):
    """``--help`` of the whole command line."""

    def test_top_level_help_lists_every_command(self) -> None:
        code, stdout, _ = run_cli(["--help"])
        assert code == 0
        for command in ("explain", "demo", "evaluate", "report", "--version"):
            assert command in stdout


def test_every_option_of_every_command_has_help() -> None:
    parser = build_parser()
    commands = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    missing = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, command in commands.choices.items()
        for action in command._actions
        if not action.help and action.help != argparse.SUPPRESS
    ]
    assert missing == []
    assert len(commands.choices) == 4


def test_closed_pipe_exits_quietly_and_writes_the_files(tmp_path) -> None:
    """``explain ... | head -0``: the reader is gone before the table is printed."""
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "captum_influence_patterns", "explain",
         "the farmers that the assistant loves [MASK] old .", "--target", "are",
         "--contrast", "is", "--n-steps", "2", "-q", "-o", str(out)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
    )
    process.stdout.close()  # the reader leaves at once
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "pattern.html", "pattern.json", "pattern.png"
    ]


needs_console_script = pytest.mark.skipif(
    console_script() is None, reason="the console script is not installed"
)


class TestProcesses(CliTests):
    """The entry points as a user runs them, in child processes."""

    def run_process(self, argv: List[str]) -> subprocess.CompletedProcess:
        done = subprocess.run(
            argv, env=subprocess_env(), capture_output=True, text=True,
            timeout=300, cwd=self.root,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    def test_python_m_explain(self) -> None:
        out = self.out_dir("module")
        done = self.run_process([
            sys.executable, "-m", "captum_influence_patterns", "explain", MLM_TEXT,
            "--target", "is", "--contrast", "are", "--model", self.paths["mlm"],
            "--n-steps", "2", "-o", out, "-q",
        ])
        assert "pattern.json" in done.stdout
        assert_outputs(out)

    @needs_console_script
    def test_console_script_evaluate_and_report_on_the_embedded_model(self) -> None:
        script = console_script()
        folder = self.out_dir("script")
        os.makedirs(folder)
        output = os.path.join(folder, "results.jsonl")
        done = self.run_process([
            script, "evaluate", "--tasks", "sva_obj_rc", "--n-per-task", "4",
            "--n-steps", "2", "--routes", "greedy", "-o", output, "-q",
        ])
        assert f"results: {output}" in done.stdout
        records = read_records(output)
        assert len(records) == 4
        assert all(r["task"] == "sva_obj_rc" for r in records)
        done = self.run_process([script, "report", output, "-q"])
        assert "report: " in done.stdout
        assert os.path.isfile(os.path.join(folder, "report", "results.md"))


class TestConsoleScript(CliTests):
    """From the installed console script (issue 19, items 11, 12 and 13)."""

    def run_script(self, *argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [console_script(), *argv], env=subprocess_env(), capture_output=True,
            text=True, timeout=300, cwd=self.root,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    @needs_console_script
    def test_explain_with_the_authors_rule(self) -> None:
        out = self.out_dir("authors")
        self.run_script("explain", MLM_TEXT, "--target", "is", "--contrast", "are",
                        "--model", self.paths["mlm"], "--method", "authors",
                        "--n-steps", "3", "-o", out, "-q")
        with open(os.path.join(out, "pattern.json"), encoding="utf-8") as handle:
            metadata = json.load(handle)["metadata"]
        assert metadata["method"] == "authors"
        # The convergence check starts at --n-steps and doubles from there.
        check = metadata["convergence"][0]
        assert check["tried"][0][0] == 3
        assert metadata["n_steps"] == check["n_steps"]

    @needs_console_script
    def test_evaluate_glue_file_into_a_new_folder(self) -> None:
        tsv = os.path.join(self.out_dir("inputs"), "dev.tsv")
        os.makedirs(os.path.dirname(tsv))
        with open(tsv, "w", encoding="utf-8") as handle:
            handle.write("sentence\tlabel\nthe movie was good .\t1\n")
        output = os.path.join(self.out_dir("new"), "folder", "r.jsonl")
        done = self.run_script("evaluate", "--input", tsv, "--model",
                               self.paths["classifier"], "-o", output,
                               "--n-steps", "2", "-q")
        assert f"results: {output}" in done.stdout
        assert [r["correct"] for r in read_records(output)] == ["1"]
