"""cli/report.py: ``report`` on a handful of sentences, and bad arguments and inputs
(exit 2, one line)."""

from __future__ import annotations

import json
import os
import re

from captum_influence_patterns.paper.records import read_records
from captum_influence_patterns.paper.run_files import meta_path
from captum_influence_patterns.testing.cli import (
    GOOD_ITEMS,
    CliTests,
    assert_usage_error,
    run_cli,
)


def _evaluated(tests: CliTests) -> str:
    """The results file of ``evaluate`` on the good items (2 steps, role sources)."""
    items = tests.write_items("good.jsonl", GOOD_ITEMS)
    folder = tests.out_dir("run")
    results = os.path.join(folder, "results.jsonl")
    os.makedirs(folder)
    code, _, stderr = run_cli([
        "evaluate", "--model", tests.paths["mlm"], "--input", items, "-o", results,
        "--n-steps", "2", "--sources", "roles", "-q",
    ])
    assert code == 0, stderr
    return results


class TestReportVerdicts(CliTests):
    """Issue 19, item 18: a report on a handful of sentences gives no verdict, draws
    no empty figure and links to evaluation.md with a working link."""

    def test_report_on_a_handful_of_sentences(self, subtests) -> None:
        results = _evaluated(self)
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


class TestReportArguments(CliTests):
    """Bad ``report`` arguments and inputs: exit 2 and one line, no traceback, no
    page written."""

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


class TestReportExcludeUnconverged(CliTests):
    def test_every_record_is_counted_or_left_out(self) -> None:
        """``--exclude-unconverged``: the page's sentences and the ones it leaves
        out (here one, marked unconverged by hand) add up to the records."""
        results = _evaluated(self)
        records = read_records(results)
        records[0]["convergence"]["converged"] = False
        with open(results, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in records)
        page = os.path.join(self.out_dir("page"), "r.md")
        summary = os.path.join(self.out_dir("page"), "summary.json")
        code, _, stderr = run_cli(["report", results, "-o", page, "--summary",
                                   summary, "--exclude-unconverged", "-q"])
        assert code == 0, stderr
        with open(summary, encoding="utf-8") as handle:
            written = json.load(handle)
        assert written["convergence"]["excluded"] == {records[0]["task"]: 1}
        assert written["overall"]["n"] == len(records) - 1
        with open(page, encoding="utf-8") as handle:
            assert "left out of every metric, table and verdict" in handle.read()
