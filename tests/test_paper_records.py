"""paper/records.py: record lines and summaries with a schema version, old records and
summaries (version 1, no ``schema`` key) read as before, the typed summary and its
correlation entries."""

import json
import math
from pathlib import Path

import pytest

from captum_influence_patterns.paper.datasets import EvaluationError
from captum_influence_patterns.paper.records import (
    SCHEMA_VERSION,
    UNVERSIONED,
    GroupCorrelation,
    PermutationTest,
    Summary,
    append_record,
    correlations,
    load_results,
    read_records,
    read_summary,
    records_text,
    schema_version,
    write_summary,
)

STATIC = Path(__file__).resolve().parents[1] / "docs" / "_static"


def test_appended_records_carry_the_schema_version(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, {"id": "a", "index": 0, "qoi": math.nan})
    line = json.loads(path.read_text(encoding="utf-8"))
    assert line["schema"] == SCHEMA_VERSION == 2
    assert math.isnan(line["qoi"])
    assert schema_version(read_records(path)[0]) == 2


def test_records_without_a_version_are_version_1_and_stay_so(tmp_path):
    old = {"id": "a", "index": 0, "qoi": 1.5}
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(old) + "\n", encoding="utf-8")
    (record,) = read_records(path)
    assert record == old and schema_version(record) == UNVERSIONED == 1
    # a merge writes records as read: a version 1 record is not restamped
    assert json.loads(records_text([record])) == old


def test_a_newer_or_bad_version_is_refused_with_its_line(tmp_path):
    path = tmp_path / "new.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "schema": 99}\n', encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"new.jsonl:2: schema: version 99 is "
                       r"newer than this package reads \(2\); upgrade"):
        read_records(path)
    with pytest.raises(EvaluationError, match="expected a version >= 1, got 'x'"):
        schema_version({"schema": "x"})
    with pytest.raises(EvaluationError, match="got True"):
        schema_version({"schema": True})


def test_load_results_keeps_the_first_record_of_an_id(tmp_path):
    first, second = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    append_record(first, {"id": "a", "index": 0, "qoi": 1.0})
    append_record(second, {"id": "a", "index": 0, "qoi": 2.0})
    append_record(second, {"id": "b", "index": 1, "skipped": "too long"})
    assert [r["qoi"] for r in load_results([first, second])] == [1.0]
    assert len(load_results([first, second], include_skipped=True)) == 2


def test_correlation_of_a_version_1_summary_without_its_test():
    entry = GroupCorrelation.from_dict({
        "n": 2, "pearson": None, "spearman": 0.5,
        "points": [{"group": ["t", "SS"], "n": 3, "accuracy": 1.0,
                    "consistency": None}],
    })
    assert entry.pearson is None and entry.spearman == 0.5
    assert entry.permutation == PermutationTest(None, None, None)
    assert entry.points[0].consistency is None and entry.smallest_group == 3
    assert GroupCorrelation.from_dict({"n": 0}).smallest_group == 0


def test_committed_summaries_read_typed_and_write_back_byte_for_byte(tmp_path):
    paths = sorted(STATIC.glob("results*/*.json"))
    assert len(paths) >= 8
    for path in paths:
        text = path.read_text(encoding="utf-8")
        summary = json.loads(text)
        assert next(iter(summary)) == "schema", path  # written first
        assert schema_version(summary) == SCHEMA_VERSION, path
        read = read_summary(path)
        assert read.schema == SCHEMA_VERSION and read.claims == summary["claims"]
        assert read.to_dict() == summary, path
        write_summary(tmp_path / "again.json", read)
        assert (tmp_path / "again.json").read_text(encoding="utf-8") == text, path
        typed = correlations(read)
        raw = summary["correlation"]["task_form"]
        entry = typed["task_form"]
        assert entry.n == raw["n"] and entry.pearson == raw["pearson"], path
        assert entry.permutation.pearson_p == raw["permutation"]["pearson_p"], path
        assert [p.n for p in entry.points] == [p["n"] for p in raw["points"]], path


def test_a_summary_without_a_version_is_version_1_and_stays_so(tmp_path):
    old = {"overall": {"n": 3}, "claims": [], "criteria": {"p_max": 0.05}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    summary = read_summary(path)
    assert summary.schema == UNVERSIONED and summary.overall == {"n": 3}
    # a section it lacks reads as empty, an optional one as None
    assert summary.tasks == {} and summary.convergence is None
    assert summary.to_dict() == {**{k: v for k, v in Summary().to_dict().items()
                                    if k != "schema"}, **old}
    # written by this package: the version first
    write_summary(tmp_path / "new.json", Summary(overall={"n": 3}))
    new = json.loads((tmp_path / "new.json").read_text(encoding="utf-8"))
    assert list(new)[:2] == ["schema", "n_per_task"] and new["schema"] == 2
    assert "convergence" not in new and "faithfulness" not in new


def test_a_bad_summary_is_refused_naming_the_file(tmp_path):
    for text, why in (('{"schema": 99}', "version 99 is newer"),
                      ('{"overal": {}}', "unknown section 'overal'"),
                      ("[1]", "expected a JSON object"),
                      ("{", "cannot read it")):
        path = tmp_path / "summary.json"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(EvaluationError, match=why) as error:
            read_summary(path)
        assert "summary.json" in str(error.value)
