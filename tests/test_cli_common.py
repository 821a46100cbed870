"""cli/common.py: the options every command shares (model, integration, output,
``--threads``) and their parsing."""

from __future__ import annotations

import os
from typing import List
from unittest import mock

import pytest
import torch

from captum_influence_patterns import __version__
from captum_influence_patterns.cli import build_parser
from captum_influence_patterns.cli import common as cli_common
from captum_influence_patterns.cli.common import PROG, set_threads
from captum_influence_patterns.quadrature import DEFAULT_N_STEPS
from captum_influence_patterns.routes.compare import DEFAULT_METHODS
from captum_influence_patterns.testing.cli import (
    CliTests,
    assert_usage_error,
    run_cli,
)


def _subcommands() -> dict:
    """name -> parser of every subcommand (argparse's registry)."""
    return build_parser()._subparsers._group_actions[0].choices


class TestSharedOptions(CliTests):
    def test_version(self) -> None:
        code, stdout, _ = run_cli(["--version"])
        assert (code, stdout.strip()) == (0, f"{PROG} {__version__}")

    def test_the_subcommands(self) -> None:
        assert set(_subcommands()) == {"explain", "demo", "evaluate", "report"}

    @pytest.mark.parametrize("name", ["explain", "demo", "evaluate", "report"])
    def test_every_subcommand_has_the_shared_options(self, name: str) -> None:
        model_options = ("--model", "--dtype", "--n-steps", "--steps", "--method",
                         "--internal-batch-size", "--baseline", "--threads")
        sub = _subcommands()[name]
        options = {o for action in sub._actions for o in action.option_strings}
        for option in ("--quiet", "-q", "--no-progress", "-o", "--output", "--out"):
            assert option in options
        for option in model_options:
            assert (option in options) == (name != "report"), option
        defaults = sub.parse_args(
            {"explain": ["t"], "report": ["r"], "evaluate": ["-o", "x"]}.get(name, [])
        )
        if name != "report":
            assert defaults.n_steps == DEFAULT_N_STEPS
            assert defaults.method == "gausslegendre"
            assert defaults.threads == "auto"

    @pytest.mark.parametrize(
        "command", [["explain", "t"], ["demo"], ["evaluate", "-o", "x"]],
        ids=lambda command: command[0],
    )
    def test_threads_option(self, command: List[str]) -> None:
        """Issue 19 item 15, issue 20 item 4: --threads on every computing
        subcommand."""
        parser = build_parser()
        assert parser.parse_args([*command, "--threads", "3"]).threads == 3
        assert_usage_error([*command, "--threads", "0"], "--threads")
        assert_usage_error([*command, "--threads", "many"], "--threads")

    def test_routes_default_within_a_list(self) -> None:
        parser = build_parser()
        routes = parser.parse_args(["evaluate", "-o", "x", "--routes", "default,alti"])
        assert routes.routes == (*DEFAULT_METHODS, "alti")
        routes = parser.parse_args(["evaluate", "-o", "x", "--routes", "rollout,default"])
        assert routes.routes[0] == "rollout"
        assert sorted(routes.routes) == sorted(DEFAULT_METHODS)
        assert_usage_error(["evaluate", "-o", "x", "--routes", "default,nosuch"], "nosuch")

    def test_threads_auto(self) -> None:
        """'auto' leaves a set OMP_NUM_THREADS alone, else measures."""
        parser = build_parser()
        before = torch.get_num_threads()
        args = parser.parse_args(["demo", "-q"])
        try:
            with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "1"}):
                torch.set_num_threads(2)
                set_threads(args)  # auto with OMP_NUM_THREADS: as torch has it
                assert torch.get_num_threads() == 2
                args.threads = 1
                set_threads(args)
                assert torch.get_num_threads() == 1
            measure = mock.patch.object(
                cli_common, "fastest_threads", return_value={"threads": 2, "seconds": {}}
            )
            unset = mock.patch.dict(os.environ, {"OMP_NUM_THREADS": ""})
            with unset, measure as measured:
                args.threads = "auto"
                set_threads(args)
                assert torch.get_num_threads() == 2
                measured.assert_called_once()
        finally:
            torch.set_num_threads(before)

    def test_aliases(self) -> None:
        parser = build_parser()
        new = parser.parse_args([
            "evaluate", "-o", "x.jsonl", "--n-steps", "3", "--quiet", "--routes",
            "greedy,rollout",
        ])
        old = parser.parse_args([
            "evaluate", "--out", "x.jsonl", "--steps", "3", "--no-progress",
            "--baselines", "greedy,rollout",
        ])
        assert vars(new) == vars(old)
        assert new.routes == ("greedy", "rollout")
