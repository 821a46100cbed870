"""The command line, end to end: tiny local checkpoints, and once the embedded model."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import unittest
from typing import List, Tuple

from captum_influence_patterns.cli import JSON_FORMAT, main
from captum_influence_patterns.results import InfluencePatternsResult
from tests.test_model_loading import MLM_TEXT, REPO, TinyCheckpoints

FILES = ("pattern.json", "pattern.png", "pattern.html")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(argv: List[str]) -> Tuple[int, str, str]:
    """``main(argv)`` in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


class CliTestCase(TinyCheckpoints):
    def out_dir(self, name: str) -> str:
        return os.path.join(self.root, "out", self.id().rsplit(".", 1)[-1], name)

    def assert_outputs(
        self, directory: str, stems: Tuple[str, ...] = ("pattern",)
    ) -> None:
        exts = ("json", "png", "html")
        expected = sorted(f"{stem}.{ext}" for stem in stems for ext in exts)
        self.assertEqual(sorted(os.listdir(directory)), expected)  # no temporary files
        for stem in stems:
            with open(os.path.join(directory, f"{stem}.png"), "rb") as handle:
                self.assertEqual(handle.read(8), PNG_MAGIC)
            with open(os.path.join(directory, f"{stem}.html"), encoding="utf-8") as h:
                self.assertTrue(h.read().startswith("<!DOCTYPE html>"))

    def load_document(self, path: str) -> dict:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
        for key in ("format", "text", "model", "model_kind", "qoi", "qoi_value",
                    "target", "contrast", "baseline", "token_influence", "patterns",
                    "output_positions", "input_ids", "convergence_delta", "tokens",
                    "metadata"):
            self.assertIn(key, document)
        self.assertEqual(document["format"], JSON_FORMAT)
        InfluencePatternsResult.load_json(path)  # the result part round-trips
        return document


class TestExplainTinyModels(CliTestCase):
    def test_causal_lm_next_token(self) -> None:
        out = self.out_dir("causal")
        text = "the cats that the dog sees"
        code, stdout, stderr = run_cli([
            "explain", text, "--target", "are", "--contrast", "is",
            "--model", self.paths["causal"], "--baseline", "zero", "--steps", "4",
            "--internal-batch-size", "4", "--out", out,
        ])
        self.assertEqual(code, 0, stderr)
        self.assert_outputs(out)
        document = self.load_document(os.path.join(out, "pattern.json"))
        self.assertEqual(document["model_kind"], "causal_lm")
        last = len(document["tokens"][0]) - 1
        self.assertEqual(document["output_positions"], [last])
        sources = [p["source"] for p in document["patterns"][0]]
        self.assertEqual(sources, list(range(last + 1)))  # up to the last token
        for pattern in document["patterns"][0]:
            self.assertEqual(pattern["positions"], sorted(pattern["positions"]))
        self.assertIn("next token", stdout)

    def test_masked_lm(self) -> None:
        out = self.out_dir("mlm")
        code, stdout, stderr = run_cli([
            "explain", MLM_TEXT, "--target", "is", "--contrast", "are",
            "--model", self.paths["mlm"], "--steps", "4", "--out", out,
        ])
        self.assertEqual(code, 0, stderr)
        self.assert_outputs(out)
        document = self.load_document(os.path.join(out, "pattern.json"))
        self.assertEqual(document["text"], MLM_TEXT)
        self.assertEqual(document["model_kind"], "masked_lm")
        self.assertEqual(document["output_positions"], [7])
        self.assertEqual(document["tokens"][0][7], "[MASK]")
        sources = [p["source"] for p in document["patterns"][0]]
        self.assertEqual(sources, [j for j in range(11) if j != 7])
        for pattern in document["patterns"][0]:
            self.assertEqual(len(pattern["positions"]), 3)  # L + 1 for two layers
            self.assertEqual(len(pattern["nodes"]), 2)
        self.assertEqual(document["metadata"]["n_steps"], 4)
        # The table goes to stdout, progress bars to stderr.
        self.assertIn("I(a)/g", stdout)
        self.assertIn("logit('is') - logit('are')", stdout)
        self.assertIn("pattern.json", stdout)
        self.assertIn("influence patterns", stderr)
        self.assertNotIn("influence patterns:", stdout)

    def test_classifier_and_baselines(self) -> None:
        out = self.out_dir("classifier")
        code, stdout, stderr = run_cli([
            "explain", "the movie was good .", "--class", "positive",
            "--contrast-class", "0", "--model", self.paths["classifier"],
            "--baseline", "zero", "--steps", "4", "--out", out, "--quiet",
        ])
        self.assertEqual(code, 0, stderr)
        self.assertEqual(stderr, "")  # --quiet: no progress bars or status lines
        self.assert_outputs(out)
        document = self.load_document(os.path.join(out, "pattern.json"))
        self.assertEqual(document["output_positions"], [0])
        self.assertEqual(document["baseline"], "zero")
        self.assertEqual(document["metadata"]["target_class"], 1)
        self.assertEqual(len(document["patterns"][0]), 7)  # [CLS] != zero baseline
        code, _, stderr = run_cli([
            "explain", MLM_TEXT, "--target", "is", "--contrast", "are", "--model",
            self.paths["mlm"], "--baseline", "pad", "--steps", "2", "--out", out, "-q",
        ])
        self.assertEqual(code, 0, stderr)
        document = self.load_document(os.path.join(out, "pattern.json"))
        self.assertEqual((document["baseline"], document["model_kind"]),
                         ("pad", "masked_lm"))


class TestBadArguments(CliTestCase):
    """Each bad argument: exit code 2, one line on stderr, no files written."""

    def assert_usage_error(self, argv: List[str], expected: str, out: str) -> None:
        code, stdout, stderr = run_cli(argv)
        self.assertEqual(code, 2, stderr)
        lines = stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, stderr)
        self.assertTrue(lines[0].startswith("captum-influence-patterns: error: "))
        self.assertIn(expected, lines[0])
        self.assertNotIn("Traceback", stderr)
        self.assertEqual(stdout, "")
        self.assertFalse(os.path.exists(out), f"{out} was created")

    def test_bad_arguments(self) -> None:
        mlm, classifier = self.paths["mlm"], self.paths["classifier"]
        blocker = os.path.join(self.root, "a-file")
        with open(blocker, "w") as handle:
            handle.write("not a directory")
        mlm_args = ["--target", "is", "--contrast", "are", "--model", mlm]
        cases = {
            "no mask": (
                ["explain", "the cat is old .", *mlm_args], "no mask token"
            ),
            "several pieces": (
                ["explain", MLM_TEXT, "--target", "farmers", "--contrast", "is",
                 "--model", mlm], "2 word pieces",
            ),
            "unknown model": (
                ["explain", MLM_TEXT, "--target", "is", "--contrast", "are",
                 "--model", "no-such-org/no-such-model-xyz"],
                "huggingface-cli download",
            ),
            "missing directory": (
                ["explain", MLM_TEXT, "--target", "is", "--contrast", "are",
                 "--model", os.path.join(self.root, "nowhere")], "does not exist",
            ),
            "class out of range": (
                ["explain", "the movie was good .", "--class", "5", "--model",
                 classifier], "out of range",
            ),
            "words for a classifier": (
                ["explain", "the movie was good .", "--target", "is", "--contrast",
                 "are", "--model", classifier], "needs classes",
            ),
            "missing contrast": (
                ["explain", MLM_TEXT, "--target", "is", "--model", mlm],
                "--target WORD --contrast WORD",
            ),
            "missing target on embedded": (["explain", MLM_TEXT], "--contrast"),
            "steps": (["explain", MLM_TEXT, *mlm_args, "--steps", "0"], "--steps"),
            "baseline": (["explain", MLM_TEXT, *mlm_args, "--baseline", "x"],
                         "--baseline"),
            "no command": ([], "COMMAND"),
            "no text": (["explain", *mlm_args], "TEXT"),
        }
        for name, (argv, expected) in cases.items():
            out = self.out_dir(name.replace(" ", "-"))
            with self.subTest(name):
                full = [*argv, "--out", out, "-q"] if argv else argv
                self.assert_usage_error(full, expected, out)
        out = os.path.join(blocker, "sub")
        with self.subTest("unwritable output directory"):
            self.assert_usage_error(
                ["explain", MLM_TEXT, *mlm_args, "--out", out, "-q"], "not writable",
                out,
            )

    def test_help(self) -> None:
        code, stdout, _ = run_cli(["explain", "--help"])
        self.assertEqual(code, 0)
        self.assertIn("--contrast-class", stdout)

    def test_module_help_subprocess(self) -> None:
        env = dict(os.environ, PYTHONPATH=REPO)
        out = subprocess.run(
            [sys.executable, "-m", "captum_influence_patterns", "--help"], env=env,
            capture_output=True, text=True, timeout=120, cwd=self.root,
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("explain", out.stdout)
        self.assertIn("demo", out.stdout)


class TestEmbeddedModel(CliTestCase):
    """The default model, once each command, with few interpolation steps."""

    def test_demo(self) -> None:
        out = self.out_dir("demo")
        code, stdout, stderr = run_cli(["demo", "--steps", "8", "--out", out, "-q"])
        self.assertEqual(code, 0, stderr)
        self.assert_outputs(out, ("plural-subject", "singular-subject"))
        routes = stdout.split("subject routes:")[1]
        self.assertIn("subject 'farmers' (position 2", routes)
        self.assertIn("subject 'farmer' (position 2", routes)
        self.assertIn("route: ", routes)
        plural = self.load_document(os.path.join(out, "plural-subject.json"))
        singular = self.load_document(os.path.join(out, "singular-subject.json"))
        self.assertEqual(plural["model_kind"], "embedded_readout")
        self.assertEqual(plural["metadata"]["readout"], "number")
        self.assertEqual(plural["metadata"]["readout_sign"], -1.0)  # "are": plural
        self.assertEqual(singular["metadata"]["readout_sign"], 1.0)  # is: singular
        self.assertEqual(plural["output_positions"], [7])
        self.assertEqual(len(plural["patterns"][0]), 10)

    def test_explain_gender(self) -> None:
        out = self.out_dir("explain")
        code, stdout, stderr = run_cli([
            "explain", "the queen that the king likes hurt [MASK] .", "--target",
            "herself", "--contrast", "himself", "--steps", "4", "--out", out, "-q",
        ])
        self.assertEqual(code, 0, stderr)
        self.assert_outputs(out)
        document = self.load_document(os.path.join(out, "pattern.json"))
        self.assertEqual(document["metadata"]["readout"], "gender")
        self.assertEqual(document["metadata"]["readout_sign"], -1.0)
        self.assertIn("gender readout", stdout)


if __name__ == "__main__":
    unittest.main()
