"""``evaluate --merge N`` loses nothing: it refuses (exit 2, one line, nothing
written or deleted) unless every part exists and is complete, and deletes parts only
with ``--delete-parts``, after the merged file is on disk."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from captum_influence_patterns.cli import main
from captum_influence_patterns.paper.datasets import task_items
from captum_influence_patterns.paper.evaluation import evaluate
from captum_influence_patterns.paper.records import read_records
from captum_influence_patterns.paper.run_files import meta_path, shard_path
from captum_influence_patterns.paper.settings import EvaluationSettings

SETTINGS = EvaluationSettings(n_steps=2)
N = 4


@pytest.fixture(scope="module")
def items(loaded):
    """Four sentences (conftest's loaded model)."""
    return task_items(["sva_obj_rc"], N, loaded.tokenizer)


@pytest.fixture(scope="module")
def shards(loaded, items, tmp_path_factory):
    """Both parts of a two-shard run, and shard 1 of a run with other settings."""
    folder = tmp_path_factory.mktemp("shards")
    for k in range(2):
        evaluate(loaded, items, folder / "out.jsonl", SETTINGS, shard=(k, 2),
                 show_progress=False)
    other = tmp_path_factory.mktemp("other")
    evaluate(loaded, items, other / "out.jsonl", EvaluationSettings(n_steps=3),
             shard=(1, 2), show_progress=False)
    return folder, other


@pytest.fixture
def run(shards, tmp_path):
    """A fresh copy of the two parts (and their settings files) in ``tmp_path``."""
    folder, _ = shards
    for name in os.listdir(folder):
        shutil.copy(folder / name, tmp_path / name)
    return tmp_path / "out.jsonl"


def _merge(output, capsys, *extra):
    code = main(["evaluate", "--merge", "2", "--output", str(output), *extra])
    return code, capsys.readouterr()


def _files(folder):
    return {
        name: (folder / name).read_bytes()
        for name in sorted(os.listdir(folder))
        if not name.endswith(".lock")
    }


def test_complete_parts_merge_and_are_kept_without_the_flag(run, capsys):
    code, out = _merge(run, capsys)
    assert code == 0 and "merged 4 records" in out.out
    assert [r["index"] for r in read_records(run)] == list(range(N))
    assert os.path.exists(shard_path(run, 0, 2)) and os.path.exists(shard_path(run, 1, 2))


def test_delete_parts_removes_them_after_the_merge(run, capsys):
    code, out = _merge(run, capsys, "--delete-parts")
    assert code == 0 and "part files deleted" in out.out
    assert len(read_records(run)) == N
    for k in range(2):
        assert not os.path.exists(shard_path(run, k, 2))
        assert not os.path.exists(meta_path(shard_path(run, k, 2)))


def _missing(output, other):
    os.remove(shard_path(output, 1, 2))


def _empty(output, other):
    open(shard_path(output, 1, 2), "w").close()


def _truncated(output, other):
    part = shard_path(output, 1, 2)
    data = open(part, "rb").read()
    with open(part, "wb") as handle:  # the last record cut mid-line (a kill)
        handle.write(data[: len(data) - 20])


def _other_settings(output, other):
    for path in (shard_path, lambda p, k, n: meta_path(shard_path(p, k, n))):
        shutil.copy(path(other / "out.jsonl", 1, 2), path(output, 1, 2))


def _no_parts(output, other):
    for name in os.listdir(output.parent):
        os.remove(output.parent / name)


def _no_part_settings(output, other):
    os.remove(meta_path(shard_path(output, 0, 2)))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_missing, r"part .*part-1-of-2\.jsonl is missing"),
        (_empty, r"part-1-of-2\.jsonl is incomplete \(0 of 2 records"),
        (_truncated, r"part-1-of-2\.jsonl is incomplete \(1 of 2 records"),
        (_other_settings, "part-1-of-2.jsonl was computed with other settings"),
        (_no_parts, r"part .*part-0-of-2\.jsonl is missing"),
        (_no_part_settings, r"part-0-of-2\.jsonl\.meta\.json is missing"),
    ],
    ids=["missing", "empty", "truncated", "other settings", "no parts", "no meta"],
)
def test_a_damaged_set_of_parts_is_refused_and_nothing_changes(
    run, shards, capsys, damage, message
):
    damage(run, shards[1])
    before = _files(run.parent)
    code, out = _merge(run, capsys, "--delete-parts")
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1
    assert re.search(message, lines[0]), lines[0]
    assert "nothing was merged or deleted" in lines[0]
    assert _files(run.parent) == before  # no merged file, no part deleted
