"""Command-line details: help on every option, a quiet exit when the reader of stdout
goes away."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from captum_influence_patterns.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


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


def test_evaluate_estimates_its_duration_from_the_measured_seconds() -> None:
    from captum_influence_patterns.paper.settings import EvaluationSettings, estimate

    # 120 sentences x (1.45 s search + 6.1 s routes) x 20/50 steps = 362 s
    line = estimate(EvaluationSettings(n_steps=20, routes=("greedy",)), 120)
    assert line.startswith("120 item(s): about 6 min") and "(3.0 s each" in line
    line = estimate(EvaluationSettings(n_steps=50, optimality=20), 60)
    assert line.startswith("60 item(s): about 10 min")  # 60 x 10.45 s = 627 s
    # a decoder reads SmolLM2's: 600 x (12.3 + 51.4) s = 637 min
    line = estimate(EvaluationSettings(n_steps=50, routes=("alti",)), 600, "causal_lm")
    assert line.startswith("600 item(s): about 637 min") and "SmolLM2" in line
