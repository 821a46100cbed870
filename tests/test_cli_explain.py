"""cli/explain.py: ``explain`` and ``demo`` end to end on tiny local checkpoints, and
once each on the embedded model; bad arguments end with exit 2 and one line."""

from __future__ import annotations

import os
import shutil
from unittest import mock

import pytest

from captum_influence_patterns.cli import common as cli_common
from captum_influence_patterns.cli import explain as cli_explain
from captum_influence_patterns.testing import MLM_TEXT
from captum_influence_patterns.testing.cli import (
    MLM_ARGS,
    CliTests,
    assert_outputs,
    assert_usage_error,
    load_document,
    run_cli,
)

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


class TestExplainExitTwoAndOneLine(CliTests):
    """Issue 19, item 9 (and 14): a bad ``explain`` ends with exit 2 and one line, no
    traceback and no output folder; argument checks come before the model loads."""

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
