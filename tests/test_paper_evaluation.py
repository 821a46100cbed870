"""paper/evaluation.py: evaluation runs, their records, resuming after a kill; shards
and torchrun = one run; a lock, a meta file and invalid items refused before any work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from captum_influence_patterns.cli import main
from captum_influence_patterns.paper import evaluation
from captum_influence_patterns.paper.datasets import (
    EvalItem,
    EvaluationError,
    jsonl_items,
)
from captum_influence_patterns.paper.evaluation import evaluate
from captum_influence_patterns.paper.records import load_results, read_records
from captum_influence_patterns.paper.run_files import (
    exclusive_writer,
    merge_shards,
    meta_path,
    shard_path,
)
from captum_influence_patterns.paper.settings import EvaluationSettings
from captum_influence_patterns.paper.summary import summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 6  # conftest's items


@pytest.fixture(scope="module")
def reference(loaded, items, evaluation_settings, tmp_path_factory):
    """One uninterrupted single-process run."""
    path = tmp_path_factory.mktemp("single") / "out.jsonl"
    evaluate(loaded, items, path, evaluation_settings, show_progress=False)
    return read_records(path)


def _values(records):
    """What must agree between runs, keyed by id (float noise allowed)."""
    return {
        r["id"]: (
            r["index"],
            r["qoi"],
            r["token_influence"],
            [p["influence"] for p in r["patterns"]],
            r["ablation"]["mean"]["guided"]["union"]["keep"],
        )
        for r in records
    }


def _assert_same(records, expected):
    assert [r["id"] for r in records] == [r["id"] for r in expected]
    got, want = _values(records), _values(expected)
    for key, value in want.items():
        assert got[key][0] == value[0]
        assert got[key][1] == pytest.approx(value[1], abs=1e-9)
        assert got[key][2] == pytest.approx(value[2], abs=1e-9)
        assert got[key][3] == pytest.approx(value[3], abs=1e-9)
        assert got[key][4] == pytest.approx(value[4], abs=1e-9)


def test_records_hold_what_the_issue_asks(reference, items):
    assert len(reference) == N
    for record, item in zip(reference, items):
        assert record["text"] == item.text and record["form"] == item.form
        assert record["prediction_correct"] == (record["qoi"] > 0)
        roles = item.roles
        assert record["sources"] == sorted(
            [roles["subject"], roles["attractor"], roles["rc_verb"]]
        )
        assert record["source_roles"][str(roles["subject"])] == "subject"
        assert [p["source"] for p in record["patterns"]] == record["sources"]
        assert len(record["tokens"]) == len(record["input_ids"])
        assert set(record["routes"]) == {"greedy", "rollout"}
        assert set(record["ablation"]) == {"mean", "zero"}
        assert set(record["ablation"]["mean"]["rollout"]) == {"subject", "union"}
        # g at every position, the sources' equal to their patterns'
        assert len(record["token_influence"]) == len(record["input_ids"])
        assert [record["token_influence"][p["source"]] for p in record["patterns"]] == [
            p["token_influence"] for p in record["patterns"]
        ]


def test_resume_after_a_kill_loses_and_duplicates_nothing(
    loaded, items, evaluation_settings, reference, tmp_path, monkeypatch
):
    path = tmp_path / "out.jsonl"
    original = evaluation.evaluate_example
    calls = []

    def dies_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_example", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        evaluate(loaded, items, path, evaluation_settings, show_progress=False)
    monkeypatch.setattr(evaluation, "evaluate_example", original)
    assert len(read_records(path)) == 2
    # a kill in the middle of writing the third line
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(reference[2])[:100])
    assert len(read_records(path)) == 2
    evaluate(loaded, items, path, evaluation_settings, show_progress=False)
    _assert_same(read_records(path), reference)
    # nothing left to do
    evaluate(loaded, items, path, evaluation_settings, show_progress=False)
    assert len(read_records(path)) == N


def test_resuming_with_other_settings_is_refused(loaded, items, tmp_path):
    path = tmp_path / "out.jsonl"
    evaluate(
        loaded, items[:1], path, EvaluationSettings(n_steps=2), show_progress=False
    )
    with pytest.raises(ValueError, match="other settings"):
        evaluate(
            loaded, items[:1], path, EvaluationSettings(n_steps=3), show_progress=False
        )


def test_shards_merge_to_the_single_run(
    loaded, items, evaluation_settings, reference, tmp_path
):
    path = tmp_path / "out.jsonl"
    for shard in range(2):
        written = evaluate(
            loaded, items, path, evaluation_settings, shard=(shard, 2),
            show_progress=False,
        )
        assert written == shard_path(path, shard, 2)
        assert [r["index"] % 2 for r in read_records(written)] == [shard] * (N // 2)
    merged = merge_shards(path, 2, remove=True)
    assert not os.path.exists(shard_path(path, 0, 2))
    _assert_same(merged, reference)
    _assert_same(read_records(path), reference)
    assert _close(summarize(merged), summarize(reference))


def _close(a, b):
    """Nested dicts/lists of floats equal up to float noise."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert len(a) == len(b)
        return all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        assert a == pytest.approx(b, abs=1e-9)
        return True
    assert a == b
    return True


def _bad_item(index):
    return EvalItem(id=f"bad{index}", index=index, task="custom",
                    text="the cat is old .", target="is", contrast="are")


def test_every_item_is_checked_before_anything_is_written(loaded, items, tmp_path):
    path = tmp_path / "out.jsonl"
    mixed = [*items[:2], _bad_item(2), _bad_item(3)]
    with pytest.raises(EvaluationError, match=r"2 invalid item\(s\): bad2: the "
                       r"text has no mask token.*; bad3: "):
        evaluate(loaded, mixed, path, EvaluationSettings(n_steps=2),
                 show_progress=False)
    assert os.listdir(tmp_path) == []  # no meta file, no results, no lock
    written = evaluate(loaded, mixed, path, EvaluationSettings(n_steps=2),
                       show_progress=False, skip_invalid=True)
    records = read_records(written)
    assert [r["id"] for r in records] == [i.id for i in mixed]
    assert ["skipped" in r for r in records] == [False, False, True, True]
    assert [r["id"] for r in load_results([path])] == [i.id for i in items[:2]]
    assert len(load_results([path], include_skipped=True)) == 4


def test_a_held_lock_refuses_a_second_writer(loaded, items, tmp_path):
    path = tmp_path / "out.jsonl"
    with exclusive_writer(path):
        with pytest.raises(EvaluationError, match="another evaluate process") as err:
            evaluate(loaded, items[:1], path, EvaluationSettings(n_steps=2),
                     show_progress=False)
        assert str(path) in str(err.value)
        assert not os.path.exists(meta_path(path))
        with pytest.raises(EvaluationError, match="another evaluate process"):
            merge_shards(path, 2)
    evaluate(loaded, items[:1], path, EvaluationSettings(n_steps=2),
             show_progress=False)
    assert len(read_records(path)) == 1


def test_results_without_meta_are_not_resumed(loaded, items, tmp_path):
    path = tmp_path / "out.jsonl"
    settings = EvaluationSettings(n_steps=2)
    evaluate(loaded, items[:1], path, settings, show_progress=False)
    os.remove(meta_path(path))
    with pytest.raises(EvaluationError, match="without their settings file"):
        evaluate(loaded, items[:2], path, settings, show_progress=False)
    assert len(read_records(path)) == 1
    assert not os.path.exists(meta_path(path))


def test_meta_names_the_input_relative_to_the_results_and_resumes_when_moved(
    loaded, items, tmp_path
):
    """The meta file names no folder of the machine; a run moved elsewhere, its
    input beside it, resumes (the items' hashes guard the content, not the path)."""
    first = tmp_path / "first"
    (first / "runs").mkdir(parents=True)
    data = first / "items.jsonl"
    data.write_text("".join(json.dumps({"text": item.text, "target": item.target,
                                        "contrast": item.contrast}) + "\n"
                            for item in items[:2]))
    settings = EvaluationSettings(n_steps=2)
    moved_items = jsonl_items(data)
    path = first / "runs" / "out.jsonl"
    dataset = {"input": str(data.resolve()), "format": "jsonl", "items": 2}
    evaluate(loaded, moved_items, path, settings, show_progress=False,
             dataset=dataset)
    with open(meta_path(path), encoding="utf-8") as handle:
        assert json.load(handle)["dataset"]["input"] == "../items.jsonl"
    path.write_text(path.read_text().splitlines(keepends=True)[0])  # one left
    second = tmp_path / "second"
    shutil.copytree(first / "runs", second)
    shutil.copy(data, tmp_path / "items.jsonl")
    evaluate(loaded, moved_items, second / "out.jsonl", settings,
             show_progress=False,
             dataset={**dataset, "input": str(tmp_path / "items.jsonl")})
    assert len(read_records(second / "out.jsonl")) == 2
    with pytest.raises(EvaluationError, match="other settings"):
        evaluate(loaded, moved_items, second / "out.jsonl",
                 EvaluationSettings(n_steps=3), show_progress=False, dataset=dataset)


@pytest.mark.skipif(
    shutil.which("torchrun") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
    reason="no torchrun",
)
@pytest.mark.slow
def test_torchrun_two_processes_merge_to_the_single_run(loaded, tmp_path):
    """The same command under torchrun (2 ranks, gloo) and in one process."""
    model_dir = tmp_path / "tiny"
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    args = [
        "evaluate",
        "--model",
        str(model_dir),
        "--tasks",
        "sva_pp",
        "--n-per-task",
        "4",
        "--n-steps",
        "3",
        "--routes",
        "greedy",
        "--ablation",
        "--quiet",
    ]
    single = tmp_path / "single.jsonl"
    assert main(args + ["--output", str(single)]) == 0
    torchrun = shutil.which("torchrun") or os.path.join(
        os.path.dirname(sys.executable), "torchrun"
    )
    double = tmp_path / "double.jsonl"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "captum_influence_patterns",
            *args,
            "--output",
            str(double),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not os.path.exists(shard_path(double, 0, 2))
    assert sorted(p.name for p in tmp_path.glob("*.lock")) == []
    expected = read_records(single)
    assert len(expected) == 4
    _assert_same(read_records(double), expected)


