"""cli/evaluate.py: ``evaluate`` end to end on tiny local checkpoints: records,
resuming, inputs, locks and bad arguments (exit 2, one line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from captum_influence_patterns.paper.records import load_results, read_records
from captum_influence_patterns.paper.run_files import lock_path, meta_path
from captum_influence_patterns.testing import MLM_TEXT, broken_checkpoints
from captum_influence_patterns.testing.cli import (
    GOOD_ITEMS,
    CliTests,
    assert_usage_error,
    run_cli,
)

NO_MASK = {
    "text": "the cat is old .", "target": "is", "contrast": "are", "id": "nomask"
}


class TestEvaluateAndReport(CliTests):
    """``evaluate`` (and ``report`` on what it wrote) end to end through ``main`` on a
    tiny checkpoint."""

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


class TestEvaluateInputs(CliTests):
    """Issue 19, items 4, 10 and 13: what ``evaluate`` reads."""

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


class TestEvaluateExitTwoAndOneLine(CliTests):
    """Issue 19, item 9: bad results lines to resume end with exit 2 and one line."""

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
