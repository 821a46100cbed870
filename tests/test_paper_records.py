"""paper/records.py: record lines with a schema version, old records and summaries
(version 1, no ``schema`` key) read as before, and the typed correlation entries."""

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
    append_record,
    correlations,
    load_results,
    read_records,
    records_text,
    schema_version,
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


def test_committed_summaries_read_typed():
    for path in sorted(STATIC.glob("results*/summary.json")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        typed = correlations(summary)
        raw = summary["correlation"]["task_form"]
        entry = typed["task_form"]
        assert entry.n == raw["n"] and entry.pearson == raw["pearson"], path
        assert entry.permutation.pearson_p == raw["permutation"]["pearson_p"], path
        assert [p.n for p in entry.points] == [p["n"] for p in raw["points"]], path
        assert schema_version(summary) == UNVERSIONED
