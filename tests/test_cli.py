"""The command line, end to end: tiny local checkpoints, and once the embedded model."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from typing import List, Optional, Tuple
from unittest import mock

import pytest
import torch

from captum_influence_patterns import __version__
from captum_influence_patterns.cli import build_parser, main
from captum_influence_patterns.cli import common as cli_common
from captum_influence_patterns.cli import explain as cli_explain
from captum_influence_patterns.cli.common import PROG, set_threads
from captum_influence_patterns.cli.explain import JSON_FORMAT
from captum_influence_patterns.quadrature import DEFAULT_N_STEPS
from captum_influence_patterns.routes.compare import DEFAULT_METHODS
from captum_influence_patterns.paper.records import load_results, read_records
from captum_influence_patterns.paper.run_files import lock_path, meta_path
from captum_influence_patterns.results import InfluencePatternsResult
from captum_influence_patterns.testing import MLM_TEXT, broken_checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("pattern.json", "pattern.png", "pattern.html")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PREFIX = "captum-influence-patterns: error: "
#: Items of --input that the tiny word-level models read.
GOOD_ITEMS = (
    {"text": MLM_TEXT, "target": "is", "contrast": "are", "id": "cat",
     "roles": {"subject": 2, "attractor": 5}},
    {"text": "the dogs that the cat sees [MASK] old .", "target": "are",
     "contrast": "is", "id": "dogs"},
)
NO_MASK = {
    "text": "the cat is old .", "target": "is", "contrast": "are", "id": "nomask"
}


#: ``--model`` and the words of the tiny masked LM ({mlm}: its folder).
MLM_ARGS = ("--target", "is", "--contrast", "are", "--model", "{mlm}")
#: name -> (argv, what the error line says) of an ``explain`` refused with exit code
#: 2; ``{root}``, ``{mlm}`` and ``{classifier}`` stand for the tiny checkpoints.
BAD_ARGUMENTS = {
    "no mask": (["explain", "the cat is old .", *MLM_ARGS], "no mask token"),
    "several pieces": (
        ["explain", MLM_TEXT, "--target", "farmers", "--contrast", "is",
         "--model", "{mlm}"], "2 word pieces",
    ),
    "unknown model": (
        ["explain", MLM_TEXT, "--target", "is", "--contrast", "are",
         "--model", "no-such-org/no-such-model-xyz"],
        "huggingface-cli download",
    ),
    "missing directory": (
        ["explain", MLM_TEXT, "--target", "is", "--contrast", "are",
         "--model", "{root}/nowhere"], "does not exist",
    ),
    "class out of range": (
        ["explain", "the movie was good .", "--class", "5", "--model",
         "{classifier}"], "out of range",
    ),
    "words for a classifier": (
        ["explain", "the movie was good .", "--target", "is", "--contrast",
         "are", "--model", "{classifier}"], "needs classes",
    ),
    "missing contrast": (
        ["explain", MLM_TEXT, "--target", "is", "--model", "{mlm}"],
        "--target WORD --contrast WORD",
    ),
    "missing target on embedded": (["explain", MLM_TEXT], "--contrast"),
    "steps": (["explain", MLM_TEXT, *MLM_ARGS, "--steps", "0"], "--steps"),
    "baseline": (["explain", MLM_TEXT, *MLM_ARGS, "--baseline", "x"], "--baseline"),
    "no command": ([], "COMMAND"),
    "no text": (["explain", *MLM_ARGS], "TEXT"),
}


def run_cli(argv: List[str]) -> Tuple[int, str, str]:
    """``main(argv)`` in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def subprocess_env() -> dict:
    """The environment of a child process that imports this checkout."""
    return dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", MPLBACKEND="Agg")


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
    exts = ("json", "png", "html")
    expected = sorted(f"{stem}.{ext}" for stem in stems for ext in exts)
    assert sorted(os.listdir(directory)) == expected  # no temporary files
    for stem in stems:
        with open(os.path.join(directory, f"{stem}.png"), "rb") as handle:
            assert handle.read(8) == PNG_MAGIC
        with open(os.path.join(directory, f"{stem}.html"), encoding="utf-8") as h:
            assert h.read().startswith("<!DOCTYPE html>")


def load_document(path: str) -> dict:
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
    """The tiny checkpoints (``root``, ``paths``) and a folder of the test's own."""

    @pytest.fixture(autouse=True)
    def _checkpoints(self, tiny_checkpoints, request) -> None:
        self.root, self.paths = tiny_checkpoints
        self.folder = os.path.join(
            self.root, "out", type(self).__name__, request.node.name
        )

    def out_dir(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def write_items(self, name: str, rows) -> str:
        path = os.path.join(self.out_dir("inputs"), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("".join(
                (row if isinstance(row, str) else json.dumps(row)) + "\n"
                for row in rows
            ))
        return path


class TestExplainTinyModels(CliTests):
    def test_causal_lm_next_token(self) -> None:
        out = self.out_dir("causal")
        text = "the cats that the dog sees"
        code, stdout, stderr = run_cli([
            "explain", text, "--target", "are", "--contrast", "is",
            "--model", self.paths["causal"], "--baseline", "zero", "--steps", "4",
            "--internal-batch-size", "4", "--out", out,
        ])
        assert code == 0, stderr
        assert_outputs(out)
        document = load_document(os.path.join(out, "pattern.json"))
        assert document["model_kind"] == "causal_lm"
        last = len(document["tokens"][0]) - 1
        assert document["output_positions"] == [last]
        sources = [p["source"] for p in document["patterns"][0]]
        assert sources == list(range(last + 1))  # up to the last token
        for pattern in document["patterns"][0]:
            assert pattern["positions"] == sorted(pattern["positions"])
        assert "next token" in stdout

    def test_masked_lm(self) -> None:
        out = self.out_dir("mlm")
        code, stdout, stderr = run_cli([
            "explain", MLM_TEXT, "--target", "is", "--contrast", "are",
            "--model", self.paths["mlm"], "--n-steps", "4", "-o", out,
        ])
        assert code == 0, stderr
        assert_outputs(out)
        document = load_document(os.path.join(out, "pattern.json"))
        assert document["text"] == MLM_TEXT
        assert document["model_kind"] == "masked_lm"
        assert document["output_positions"] == [7]
        assert document["tokens"][0][7] == "[MASK]"
        sources = [p["source"] for p in document["patterns"][0]]
        assert sources == [j for j in range(11) if j != 7]
        for pattern in document["patterns"][0]:
            assert len(pattern["positions"]) == 3  # L + 1 for two layers
            assert len(pattern["nodes"]) == 2
        assert document["metadata"]["n_steps"] == 4
        # The table goes to stdout, progress bars to stderr.
        assert "I(a)/g" in stdout
        assert "logit('is') - logit('are')" in stdout
        assert "pattern.json" in stdout
        assert "influence patterns" in stderr
        assert "influence patterns:" not in stdout

    def test_classifier_and_baselines(self) -> None:
        out = self.out_dir("classifier")
        code, stdout, stderr = run_cli([
            "explain", "the movie was good .", "--class", "positive",
            "--contrast-class", "0", "--model", self.paths["classifier"],
            "--baseline", "zero", "--steps", "4", "--out", out, "--quiet",
        ])
        assert code == 0, stderr
        assert stderr == ""  # --quiet: no progress bars or status lines
        assert_outputs(out)
        document = load_document(os.path.join(out, "pattern.json"))
        assert document["output_positions"] == [0]
        assert document["baseline"] == "zero"
        assert document["metadata"]["target_class"] == 1
        assert len(document["patterns"][0]) == 7  # [CLS] != zero baseline
        code, _, stderr = run_cli([
            "explain", MLM_TEXT, "--target", "is", "--contrast", "are", "--model",
            self.paths["mlm"], "--baseline", "pad", "--steps", "2", "--out", out, "-q",
        ])
        assert code == 0, stderr
        document = load_document(os.path.join(out, "pattern.json"))
        assert (document["baseline"], document["model_kind"]) == ("pad", "masked_lm")


class TestBadArguments(CliTests):
    """Each bad argument: exit code 2, one line on stderr, no files written."""

    @pytest.mark.parametrize("name", BAD_ARGUMENTS)
    def test_bad_arguments(self, name: str) -> None:
        argv, expected = BAD_ARGUMENTS[name]
        argv = [arg.format(root=self.root, **self.paths) for arg in argv]
        out = self.out_dir("out")
        assert_usage_error([*argv, "--out", out, "-q"] if argv else argv, expected, out)

    def test_output_folder_that_cannot_be_one(self, subtests) -> None:
        blocker = os.path.join(self.folder, "a-file")
        os.makedirs(self.folder)
        with open(blocker, "w") as handle:
            handle.write("not a directory")
        mlm_args = [arg.format(**self.paths) for arg in MLM_ARGS]
        with subtests.test("output directory is a file"):
            assert_usage_error(
                ["explain", MLM_TEXT, *mlm_args, "-o", blocker, "-q"], "is a file"
            )
            with open(blocker) as handle:
                assert handle.read() == "not a directory"
        out = os.path.join(blocker, "sub")
        with subtests.test("unwritable output directory"):
            assert_usage_error(
                ["explain", MLM_TEXT, *mlm_args, "--out", out, "-q"], "not writable",
                out,
            )

    def test_help(self) -> None:
        code, stdout, _ = run_cli(["explain", "--help"])
        assert code == 0
        assert "--contrast-class" in stdout

    def test_top_level_help_lists_every_command(self) -> None:
        code, stdout, _ = run_cli(["--help"])
        assert code == 0
        for command in ("explain", "demo", "evaluate", "report", "--version"):
            assert command in stdout


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


class TestDollarInText(CliTests):
    TEXT = "the cat $ ^ ^ $ that the dogs see [MASK] old ."

    def test_explain_with_dollars(self) -> None:
        out = self.out_dir("dollar")
        code, stdout, stderr = run_cli([
            "explain", self.TEXT, "--target", "is", "--contrast", "are", "--model",
            self.paths["mlm"], "--n-steps", "2", "-o", out, "-q",
        ])
        assert code == 0, stderr
        assert_outputs(out)
        document = load_document(os.path.join(out, "pattern.json"))
        assert document["text"] == self.TEXT
        assert "$" in document["tokens"][0]

    def test_json_is_written_before_drawing(self) -> None:
        out = self.out_dir("draw-fails")
        with mock.patch.object(cli_explain, "_render_png", side_effect=RuntimeError("draw")):
            with pytest.raises(RuntimeError, match="draw"):
                run_cli([
                    "explain", MLM_TEXT, "--target", "is", "--contrast", "are",
                    "--model", self.paths["mlm"], "--n-steps", "2", "-o", out, "-q",
                ])
        assert os.listdir(out) == ["pattern.json"]
        load_document(os.path.join(out, "pattern.json"))


class TestEvaluateAndReport(CliTests):
    """``evaluate`` and ``report`` end to end through ``main`` on a tiny checkpoint."""

    def evaluate_args(self, items: str, output: str, *extra: str) -> List[str]:
        return ["evaluate", "--model", self.paths["mlm"], "--input", items, "-o",
                output, "--n-steps", "2", "--sources", "roles", "-q", *extra]

    def test_evaluate_resume_and_report(self) -> None:
        items = self.write_items("good.jsonl", GOOD_ITEMS)
        folder = self.out_dir("run")
        os.makedirs(folder)
        output = os.path.join(folder, "results.jsonl")
        argv = self.evaluate_args(items, output, "--routes", "greedy", "--ablation")
        code, stdout, stderr = run_cli(argv)
        assert code == 0, stderr
        assert stderr == ""
        assert f"results: {output}" in stdout
        records = read_records(output)
        assert [r["id"] for r in records] == ["cat", "dogs"]
        assert records[0]["sources"] == [2, 5]
        assert set(records[0]["routes"]) == {"greedy"}
        assert "ablation" in records[0]
        with open(meta_path(output), encoding="utf-8") as handle:
            assert json.load(handle)["settings"]["n_steps"] == 2
        # a rerun resumes: nothing left to do, nothing duplicated
        assert run_cli(argv)[0] == 0
        assert len(read_records(output)) == 2
        # the report goes beside the results, never into the working directory
        cwd = self.out_dir("cwd")
        os.makedirs(os.path.join(cwd, "docs"))
        with open(os.path.join(cwd, "docs", "results.md"), "w") as handle:
            handle.write("the repository's page")
        previous = os.getcwd()
        os.chdir(cwd)
        try:
            code, stdout, stderr = run_cli(["report", output, "-q"])
        finally:
            os.chdir(previous)
        assert code == 0, stderr
        page = os.path.join(folder, "report", "results.md")
        assert f"report: {page}" in stdout
        with open(page, encoding="utf-8") as handle:
            assert "# Evaluation results" in handle.read()
        plots = os.path.join(folder, "report", "_static", "results")
        assert "task_metrics.png" in os.listdir(plots)
        assert os.listdir(cwd) == ["docs"]
        with open(os.path.join(cwd, "docs", "results.md")) as handle:
            assert handle.read() == "the repository's page"
        # an explicit --output puts the plots beside it
        page = os.path.join(self.out_dir("explicit"), "page.md")
        code, _, stderr = run_cli(["report", output, "-o", page, "--title", "T"])
        assert code == 0, stderr
        assert os.path.isfile(page)
        assert os.path.isdir(os.path.join(os.path.dirname(page), "_static"))

    def test_evaluate_contribution_routes_and_faithfulness_then_report(self) -> None:
        """``--routes`` with the contribution routes and ``--faithfulness``; the
        report then has the faithfulness section and its figure."""
        items = self.write_items("good.jsonl", GOOD_ITEMS)
        folder = self.out_dir("faithful_run")
        os.makedirs(folder)
        output = os.path.join(folder, "results.jsonl")
        routes = "alti,alti_logit,attention_norm,information_flow"
        argv = self.evaluate_args(
            items, output, "--routes", routes, "--faithfulness"
        )
        code, _, stderr = run_cli(argv)
        assert code == 0, stderr
        records = read_records(output)
        assert set(records[0]["routes"]) == set(routes.split(","))
        faithful = records[0]["faithfulness"]
        assert set(faithful["spearman"]) == {"unk", "mask"}
        assert faithful["positions"] == [2, 5]
        page = os.path.join(folder, "page.md")
        code, _, stderr = run_cli(["report", output, "-o", page, "-q"])
        assert code == 0, stderr
        with open(page, encoding="utf-8") as handle:
            assert "## Faithfulness of token attributions" in handle.read()
        assert "faithfulness.png" in os.listdir(
            os.path.join(folder, "_static", "results")
        )

    def test_evaluate_faithfulness_on_a_causal_lm(self) -> None:
        """A decoder: removal by deletion and by replacement, before the output."""
        items = self.write_items("causal.jsonl", [
            {"text": "the cats that the dog sees", "target": "are",
             "contrast": "is", "id": "cats"},
        ])
        output = os.path.join(self.out_dir("causal_run"), "r.jsonl")
        code, _, stderr = run_cli([
            "evaluate", "--model", self.paths["causal"], "--input", items, "-o",
            output, "--n-steps", "2", "--baseline", "zero", "-q",
            "--routes", "information_flow,alti_logit", "--faithfulness",
        ])
        assert code == 0, stderr
        (record,) = read_records(output)
        faithful = record["faithfulness"]
        assert set(faithful["spearman"]) == {"deletion", "replacement"}
        last = record["output_position"]
        assert faithful["positions"] and max(faithful["positions"]) < last
        for name in ("information_flow", "alti_logit"):
            for pattern in record["routes"][name]:
                assert pattern["positions"] == sorted(pattern["positions"])

    def test_evaluate_with_the_authors_protocol(self) -> None:
        """The authors' protocol of RUNS.md (``--method authors``, the default
        routes, conductance among them, and the ablation): the conductance routes
        crashed in Captum's check of the method name."""
        items = self.write_items("good.jsonl", GOOD_ITEMS)
        output = os.path.join(self.out_dir("authors_run"), "r.jsonl")
        argv = self.evaluate_args(
            items, output, "--method", "authors", "--n-steps", "3", "--routes",
            "default", "--route-orientation", "attends", "--ablation",
            "--ablation-reference", "mean", "zero",
        )
        code, _, stderr = run_cli(argv)
        assert code == 0, stderr
        records = read_records(output)
        assert [r["id"] for r in records] == ["cat", "dogs"]
        assert {"conductance", "rollout", "flow"} <= set(records[0]["routes"])
        assert "ablation" in records[0]
        with open(meta_path(output), encoding="utf-8") as handle:
            settings = json.load(handle)["settings"]
        assert (settings["method"], settings["n_steps"]) == ("authors", 3)

    def test_skip_invalid_records_bad_items(self) -> None:
        items = self.write_items("mixed.jsonl", [GOOD_ITEMS[0], NO_MASK])
        output = os.path.join(self.out_dir("skip"), "results.jsonl")
        os.makedirs(os.path.dirname(output))
        line = assert_usage_error(
            self.evaluate_args(items, output), "1 invalid item(s): nomask: the text "
            "has no mask token", absent=meta_path(output),
        )
        assert "--skip-invalid" in line
        assert not os.path.exists(output)
        code, _, stderr = run_cli(self.evaluate_args(items, output, "--skip-invalid"))
        assert code == 0, stderr
        records = read_records(output)
        assert [r["id"] for r in records] == ["cat", "nomask"]
        assert "no mask token" in records[1]["skipped"]
        assert [r["id"] for r in load_results([output])] == ["cat"]
        code, _, stderr = run_cli(["report", output, "-q"])
        assert code == 0, stderr
        page = os.path.join(os.path.dirname(output), "report", "results.md")
        with open(page, encoding="utf-8") as handle:
            text = handle.read()
        assert "items skipped by the model (`--skip-invalid`): 1 (" in text
        assert "no mask token" in text

    def test_second_writer_is_refused(self) -> None:
        """Another process holds the lock: exit 2 naming the file, nothing written."""
        items = self.write_items("good.jsonl", GOOD_ITEMS)
        output = os.path.join(self.out_dir("locked"), "results.jsonl")
        os.makedirs(os.path.dirname(output))
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import fcntl, sys, time\n"
             "handle = open(sys.argv[1], 'a')\n"
             "fcntl.flock(handle.fileno(), fcntl.LOCK_EX)\n"
             "print('locked', flush=True)\n"
             "time.sleep(60)\n",
             lock_path(output)],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert holder.stdout.readline().strip() == "locked"
            line = assert_usage_error(
                self.evaluate_args(items, output), "another evaluate process",
                absent=meta_path(output),
            )
            assert output in line
            assert not os.path.exists(output)
        finally:
            holder.kill()
            holder.wait()
        code, _, stderr = run_cli(self.evaluate_args(items, output))
        assert code == 0, stderr  # the lock went with the process

    def test_bad_evaluate_arguments(self, subtests) -> None:
        good = self.write_items("good.jsonl", GOOD_ITEMS)
        malformed = self.write_items("malformed.jsonl", [
            GOOD_ITEMS[0], "{not json", {"text": "x"}, "[1, 2]",
        ])
        outside = self.write_items("outside.jsonl", [
            {**GOOD_ITEMS[0], "roles": {"subject": 40}},
        ])
        empty = self.write_items("empty.jsonl", [])
        blocker = os.path.join(self.root, "a-file")
        with open(blocker, "w") as handle:
            handle.write("not a directory")
        folder = self.out_dir("bad")
        os.makedirs(folder)
        output = os.path.join(folder, "results.jsonl")
        mlm = ["--model", self.paths["mlm"]]
        cases = {
            "n-steps 0": (["--input", good, "--n-steps", "0"], "--n-steps"),
            "trapezoid with one point": (
                ["--input", good, "--method", "riemann_trapezoid", "--n-steps", "1"],
                "needs --n-steps 2 or more",
            ),
            "unknown method": (["--input", good, "--method", "simpson"], "--method"),
            "unknown task": (["--tasks", "sva_obj_rc,nosuch"], "nosuch"),
            "tasks and input": (["--tasks", "sva_pp", "--input", good], "not both"),
            "missing input": (["--input", os.path.join(folder, "no.jsonl")],
                              "cannot read"),
            "input is a directory": (["--input", folder], "cannot read"),
            "malformed input lines": (
                ["--input", malformed], "3 invalid item(s): line 2:",
            ),
            "empty input": (["--input", empty], "no examples"),
            "role outside the text": (["--input", outside], "outside the 11 tokens"),
            "unknown role source": (["--input", good, "--sources", "verb"],
                                    "no role ['verb']"),
            "unknown route": (["--input", good, "--routes", "best,nosuch"],
                              "nosuch"),
            "bad shard": (["--input", good, "--shard", "2/2"], "--shard"),
            "merge 0": (["--merge", "0"], "--merge"),
            "threads 0": (["--input", good, "--threads", "0"], "--threads"),
            "bad dtype": (["--input", good, "--dtype", "int8"], "--dtype"),
        }
        for name, (extra, expected) in cases.items():
            with subtests.test(name):
                assert_usage_error(
                    ["evaluate", *mlm, "-o", output, "-q", *extra], expected,
                    absent=meta_path(output),
                )
                assert not os.path.exists(output)
        outputs = {
            "output is a directory": (folder, "is a directory"),
            "output under a file": (os.path.join(blocker, "r.jsonl"), "is a file"),
        }
        for name, (path, expected) in outputs.items():
            with subtests.test(name):
                assert_usage_error(
                    ["evaluate", *mlm, "--input", good, "-o", path, "-q"], expected
                )
        with subtests.test("output folder not writable"):
            readonly = os.path.join(folder, "readonly")
            os.makedirs(readonly)
            os.chmod(readonly, 0o500)
            try:
                if os.access(readonly, os.W_OK):
                    pytest.skip("running as root: permissions are not enforced")
                assert_usage_error(
                    ["evaluate", *mlm, "--input", good, "-o",
                     os.path.join(readonly, "r.jsonl"), "-q"], "not writable",
                )
            finally:
                os.chmod(readonly, 0o700)

    def test_resume_needs_the_matching_meta_file(self) -> None:
        items = self.write_items("good.jsonl", GOOD_ITEMS)
        output = os.path.join(self.out_dir("meta"), "results.jsonl")
        os.makedirs(os.path.dirname(output))
        assert run_cli(self.evaluate_args(items, output))[0] == 0
        assert_usage_error(
            self.evaluate_args(items, output, "--baseline", "pad"), "other settings"
        )
        os.remove(meta_path(output))
        line = assert_usage_error(
            self.evaluate_args(items, output), "without their settings file",
            absent=meta_path(output),
        )
        assert output in line
        assert len(read_records(output)) == 2  # left as it was

    def test_unreadable_models_exit_2(self, subtests) -> None:
        items = self.write_items("good.jsonl", GOOD_ITEMS)
        output = os.path.join(self.out_dir("models"), "results.jsonl")
        os.makedirs(os.path.dirname(output))
        for name, (path, expected) in broken_checkpoints(self.root, self.paths).items():
            with subtests.test(name):
                assert_usage_error(
                    ["evaluate", "--model", path, "--input", items, "-o", output,
                     "-q"], expected,
                )
                out = self.out_dir(name.replace(" ", "-"))
                assert_usage_error(
                    ["explain", MLM_TEXT, "--target", "is", "--contrast", "are",
                     "--model", path, "-o", out, "-q"], expected, absent=out,
                )
        with subtests.test("text longer than the position table"):
            long_text = " ".join(["the"] * 40) + " [MASK]"
            out = self.out_dir("long")
            assert_usage_error(
                ["explain", long_text, "--target", "is", "--contrast", "are",
                 "--model", self.paths["mlm"], "-o", out, "-q"], "at most 32",
                absent=out,
            )

    def test_bad_report_arguments(self, subtests) -> None:
        folder = self.out_dir("report-bad")
        os.makedirs(folder)
        empty = os.path.join(folder, "empty.jsonl")
        open(empty, "w").close()
        broken = os.path.join(folder, "broken.jsonl")
        with open(broken, "w") as handle:
            handle.write("{not json\n")
        items = self.write_items("good.jsonl", GOOD_ITEMS)
        results = os.path.join(folder, "results.jsonl")
        assert run_cli(self.evaluate_args(items, results))[0] == 0
        cases = {
            "missing results": ([os.path.join(folder, "none.jsonl")],
                                "does not exist"),
            "results is a directory": ([folder], "is a directory"),
            "no results": ([empty], "no results"),
            "malformed results": ([broken], "not a JSON line"),
            "output is a directory": ([results, "-o", folder], "is a directory"),
            "missing notes": ([results, "--notes", os.path.join(folder, "n.md")],
                              "--notes"),
            "summary is a directory": ([results, "--summary", folder],
                                       "is a directory"),
            "no results argument": ([], "RESULTS"),
        }
        for name, (extra, expected) in cases.items():
            with subtests.test(name):
                assert_usage_error(
                    ["report", *extra, "-q"], expected,
                    absent=os.path.join(folder, "report"),
                )


def console_script() -> Optional[str]:
    """The installed ``captum-influence-patterns`` script, if there is one."""
    beside = os.path.join(os.path.dirname(sys.executable), PROG)
    return shutil.which(PROG) or (beside if os.path.exists(beside) else None)


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


class TestEmbeddedModel(CliTests):
    """The default model, once each command, with few interpolation steps."""

    def test_demo(self) -> None:
        out = self.out_dir("demo")
        code, stdout, stderr = run_cli(["demo", "--steps", "8", "--out", out, "-q"])
        assert code == 0, stderr
        assert_outputs(out, ("plural-subject", "singular-subject"))
        routes = stdout.split("subject routes:")[1]
        assert "subject 'farmers' (position 2" in routes
        assert "subject 'farmer' (position 2" in routes
        assert "route: " in routes
        plural = load_document(os.path.join(out, "plural-subject.json"))
        singular = load_document(os.path.join(out, "singular-subject.json"))
        assert plural["model_kind"] == "embedded_readout"
        assert plural["metadata"]["readout"] == "number"
        assert plural["metadata"]["readout_sign"] == -1.0  # "are": plural
        assert singular["metadata"]["readout_sign"] == 1.0  # is: singular
        assert plural["output_positions"] == [7]
        assert len(plural["patterns"][0]) == 10

    def test_explain_gender(self) -> None:
        out = self.out_dir("explain")
        code, stdout, stderr = run_cli([
            "explain", "the queen that the king likes hurt [MASK] .", "--target",
            "herself", "--contrast", "himself", "--steps", "4", "--out", out, "-q",
        ])
        assert code == 0, stderr
        assert_outputs(out)
        document = load_document(os.path.join(out, "pattern.json"))
        assert document["metadata"]["readout"] == "gender"
        assert document["metadata"]["readout_sign"] == -1.0
        assert "gender readout" in stdout


# ------------------------------------------------------------ issue 19 (the edges)
class TestExitTwoAndOneLine(CliTests):
    """Issue 19, item 9 (and 14): every bad input ends with exit 2 and one line, no
    traceback and no output folder; argument checks come before the model loads."""

    def evaluate_args(self, items: str, output: str, *extra: str) -> List[str]:
        return ["evaluate", "--model", self.paths["mlm"], "--input", items, "-o",
                output, "--n-steps", "2", "--sources", "roles", "-q", *extra]

    def test_explain_rule_and_device(self) -> None:
        out = self.out_dir("explain")
        base = ["explain", MLM_TEXT, "--target", "is", "--contrast", "are", "--model",
                self.paths["mlm"], "-o", out, "-q"]
        with mock.patch.object(cli_common, "load_model", side_effect=AssertionError(
                "the model was loaded")):
            assert_usage_error(
                [*base, "--n-steps", "1", "--method", "riemann_left"],
                "--method riemann_left needs --n-steps 2 or more", absent=out,
            )
            assert_usage_error(
                [*base, "--n-steps", "1", "--method", "authors"],
                "--method authors needs --n-steps 2", absent=out,
            )
        assert_usage_error([*base, "--device", "meta"], "--device", absent=out)

    def test_explain_without_mask_fails_before_loading(self, subtests) -> None:
        """Item 14: the text is checked from the config alone: the weights (and the
        embedded model) are never read."""
        out = self.out_dir("nomask")
        config_only = os.path.join(self.out_dir("config"), "mlm")
        os.makedirs(config_only)
        shutil.copy(os.path.join(self.paths["mlm"], "config.json"), config_only)
        with mock.patch.object(cli_common, "load_model", side_effect=AssertionError(
                "the model was loaded")):
            for model in ([], ["--model", config_only]):
                with subtests.test(model=model):
                    assert_usage_error(
                        ["explain", "the cat is old .", "--target", "is",
                         "--contrast", "are", *model, "-o", out, "-q"],
                        "has no mask token", absent=out,
                    )

    def test_evaluate_resume_on_bad_results_lines(self, subtests) -> None:
        items = self.write_items("good.jsonl", GOOD_ITEMS[:1])
        for name, line in (("object", b"{}"), ("list", b"[1, 2]"),
                           ("utf8", b'{"id": "\xff\xfe"}')):
            with subtests.test(name):
                output = os.path.join(self.out_dir(name), "results.jsonl")
                os.makedirs(os.path.dirname(output))
                assert run_cli(self.evaluate_args(items, output))[0] == 0
                with open(output, "ab") as handle:
                    handle.write(line + b"\n")
                assert_usage_error(
                    self.evaluate_args(items, output), f"{output}:2:"
                )

    def test_report_on_bad_inputs(self, subtests) -> None:
        folder = self.out_dir("good")
        items = self.write_items("good.jsonl", GOOD_ITEMS)
        results = os.path.join(folder, "results.jsonl")
        os.makedirs(folder)
        assert run_cli(self.evaluate_args(items, results))[0] == 0
        record = read_records(results)[0]

        def without(key: str) -> dict:
            return {k: v for k, v in record.items() if k != key}

        lines = {
            "empty object": b"{}",
            "list": b"[1, 2]",
            "invalid UTF-8": b'{"id": "x\xff"}',
            "no qoi": json.dumps(without("qoi")).encode(),
            "no patterns": json.dumps(without("patterns")).encode(),
            "string token_influence": json.dumps(
                {**record, "token_influence": "0.5"}).encode(),
        }
        for name, line in lines.items():
            with subtests.test(name):
                stem = name.replace(" ", "-")
                bad = os.path.join(self.out_dir("bad"), stem + ".jsonl")
                os.makedirs(os.path.dirname(bad), exist_ok=True)
                with open(bad, "wb") as handle:
                    handle.write(line + b"\n")
                out = os.path.join(self.out_dir("pages"), stem)
                assert_usage_error(
                    ["report", bad, "-o", os.path.join(out, "r.md"), "-q"], bad
                    if name in ("empty object", "list", "invalid UTF-8") else
                    "results record", absent=out,
                )
        out = self.out_dir("page")
        with subtests.test("garbled meta file"):
            with open(meta_path(results), "wb") as handle:
                handle.write(b'{"model": ')
            assert_usage_error(
                ["report", results, "-o", os.path.join(out, "r.md"), "-q"],
                "meta.json", absent=out,
            )
        with subtests.test("notes not UTF-8"):
            os.remove(meta_path(results))
            notes = os.path.join(folder, "notes.md")
            with open(notes, "wb") as handle:
                handle.write("caf\u00e9".encode("latin-1"))
            assert_usage_error(
                ["report", results, "-o", os.path.join(out, "r.md"), "--notes",
                 notes, "-q"], "--notes", absent=out,
            )


class TestEvaluateInputs(CliTests):
    """Issue 19, items 4, 10 and 13: what ``evaluate`` reads."""

    def evaluate_args(self, items: str, output: str, *extra: str) -> List[str]:
        return ["evaluate", "--model", self.paths["mlm"], "--input", items, "-o",
                output, "--n-steps", "2", "--sources", "roles", "-q", *extra]

    def test_resume_refuses_a_changed_input(self, subtests) -> None:
        """Item 4: the meta file keeps a hash of every item; a resumed run whose
        items changed (same ids) is refused, and the results stay as they were."""
        swapped = [{**GOOD_ITEMS[0], "target": "are", "contrast": "is"},
                   GOOD_ITEMS[1]]
        edited = [GOOD_ITEMS[0], {**GOOD_ITEMS[1],
                                  "text": "the dogs that the cats see [MASK] old ."}]
        no_ids = [{k: v for k, v in item.items() if k != "id"} for item in GOOD_ITEMS]
        no_ids_edited = [no_ids[0], {**no_ids[1], "text": edited[1]["text"]}]
        cases = {"target and contrast swapped": (GOOD_ITEMS, swapped),
                 "one text changed": (GOOD_ITEMS, edited),
                 "one text changed, no ids": (no_ids, no_ids_edited)}
        for name, (before, after) in cases.items():
            with subtests.test(name):
                stem = name.replace(" ", "-").replace(",", "")
                output = os.path.join(self.out_dir(stem), "results.jsonl")
                os.makedirs(os.path.dirname(output))
                items = self.write_items(f"{stem}.jsonl", before)
                assert run_cli(self.evaluate_args(items, output))[0] == 0
                kept = read_records(output)
                with open(output, "rb") as handle:
                    data = handle.read()
                with open(output, "wb") as handle:  # a run killed after one line
                    handle.write(data[:data.index(b"\n") + 1])
                self.write_items(f"{stem}.jsonl", after)
                assert_usage_error(
                    self.evaluate_args(items, output), "the input differs"
                )
                assert read_records(output) == kept[:1]
                assert len(load_results([output])) == 1

    def test_byte_order_mark(self) -> None:
        """Item 10: files that start with a byte-order mark read like the others."""
        output = os.path.join(self.out_dir("jsonl"), "results.jsonl")
        os.makedirs(os.path.dirname(output))
        items = self.write_items("bom.jsonl", GOOD_ITEMS[:1])
        with open(items, "rb") as handle:
            data = handle.read()
        with open(items, "wb") as handle:
            handle.write(b"\xef\xbb\xbf" + data)
        code, _, stderr = run_cli(self.evaluate_args(items, output))
        assert code == 0, stderr
        assert [r["id"] for r in read_records(output)] == ["cat"]
        tsv = os.path.join(self.out_dir("inputs"), "dev.tsv")
        with open(tsv, "w", encoding="utf-8-sig") as handle:
            handle.write("sentence\tlabel\nthe movie was good .\t1\n")
        output = os.path.join(self.out_dir("glue"), "results.jsonl")
        os.makedirs(os.path.dirname(output))
        code, _, stderr = run_cli([
            "evaluate", "--model", self.paths["classifier"], "--input", tsv,
            "--format", "glue", "-o", output, "--n-steps", "2", "-q",
        ])
        assert code == 0, stderr
        assert read_records(output)[0]["correct"] == "1"

    def test_format_from_the_file(self) -> None:
        """Item 13: no --format: a TSV with a sentence/label header is a GLUE file;
        --format jsonl on it names --format glue."""
        tsv = os.path.join(self.out_dir("inputs"), "dev.tsv")
        os.makedirs(os.path.dirname(tsv))
        with open(tsv, "w", encoding="utf-8") as handle:
            handle.write("sentence\tlabel\nthe movie was good .\t1\n"
                         "the movie was bad .\t0\n")
        output = os.path.join(self.out_dir("auto"), "results.jsonl")
        os.makedirs(os.path.dirname(output))
        assert_usage_error(
            ["evaluate", "--model", self.paths["classifier"], "--input", tsv,
             "--format", "jsonl", "-o", output, "-q"], "--format glue",
            absent=meta_path(output),
        )
        code, _, stderr = run_cli([
            "evaluate", "--model", self.paths["classifier"], "--input", tsv, "-o",
            output, "--n-steps", "2", "-q",
        ])
        assert code == 0, stderr
        records = read_records(output)
        assert [(r["correct"], r["wrong"]) for r in records] == [
            ("1", "0"), ("0", "1")
        ]
        with open(meta_path(output), encoding="utf-8") as handle:
            assert json.load(handle)["dataset"]["format"] == "glue"


class TestReportVerdicts(CliTests):
    """Issue 19, item 18: a report on a handful of sentences gives no verdict, draws
    no empty figure and links to evaluation.md with a working link."""

    def test_report_on_a_handful_of_sentences(self, subtests) -> None:
        items = self.write_items("good.jsonl", GOOD_ITEMS)
        folder = self.out_dir("run")
        results = os.path.join(folder, "results.jsonl")
        os.makedirs(folder)
        code, _, stderr = run_cli([
            "evaluate", "--model", self.paths["mlm"], "--input", items, "-o", results,
            "--n-steps", "2", "--sources", "roles", "-q",
        ])
        assert code == 0, stderr
        page = os.path.join(self.out_dir("page"), "r.md")
        code, _, stderr = run_cli(["report", results, "-o", page, "-q"])
        assert code == 0, stderr
        with open(page, encoding="utf-8") as handle:
            text = handle.read()
        claims = [line for line in text.splitlines() if line.startswith("- (")]
        assert len(claims) == 3, text
        for line in claims[:2]:  # claim 3 needs an ablation: not measured
            assert "**no verdict**, too few" in line
        assert "does not hold" not in text
        assert "**holds**" not in text
        static = os.path.join(os.path.dirname(page), "_static", "results")
        assert "ablation.png" not in os.listdir(static)
        for target in re.findall(r"\]\(<?([^)>]+)>?\)", text):
            with subtests.test(link=target):
                assert os.path.isfile(
                    os.path.join(os.path.dirname(page), target)), target
        assert "evaluation.md" in text


class TestConsoleScriptIssue19(CliTests):
    """Issue 19, items 11, 12 and 13, from the installed console script."""

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

