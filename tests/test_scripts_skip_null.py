"""``scripts/skip_null.py`` (claim 1's null) runs on the run's own model, baseline and
steps: on the MiniLM records it reproduces the committed null's first sentence, and on
the SmolLM2 records its guided rows recompute the run's own candidates."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from captum_influence_patterns.testing.gguf_files import (
    SMOLLM2_MISSING,
    smollm2_installed,
)
from captum_influence_patterns.testing.records import assert_json_close

ROOT = Path(__file__).resolve().parents[1]
MINILM = ROOT / "results" / "agreement_minilm"
SMOLLM2 = ROOT / "results" / "agreement_smollm2"


@pytest.fixture
def skip_null(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import skip_null

    return skip_null


def _lines(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.mark.slow
def test_minilm_null_reproduces_the_committed_first_sentence(skip_null, tmp_path):
    out = tmp_path / "null.jsonl"
    skip_null.main([str(MINILM / "optimality_subset.jsonl.gz"), str(out),
                    "--sentences", "1", "--draws", "4"])
    (new,) = _lines(out)
    old = _lines(MINILM / "skip_null.jsonl.gz")[0]
    assert new["skip_null_check"] < 1e-5
    new.pop("skip_null_check"), old.pop("skip_null_check")
    # float32 rounding: the candidates are O(1), summed over 50 steps and 6 layers
    assert_json_close(new, old, rel=1e-4, tol=1e-5)
    meta = json.loads((tmp_path / "null.jsonl.meta.json").read_text())
    committed = json.loads((MINILM / "skip_null.jsonl.meta.json").read_text())
    assert meta["model"] == committed["model"]
    assert meta["settings"] == committed["settings"]


def test_per_task_takes_the_first_converged_of_each_task(skip_null, tmp_path):
    records = tmp_path / "run.jsonl"
    rows = [{"id": f"{task}-{k}", "index": 3 * t + k, "task": task,
             "convergence": {"converged": (task, k) != ("b", 0)}}
            for t, task in enumerate("abc") for k in range(3)]
    records.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    (tmp_path / "run.jsonl.meta.json").write_text(json.dumps({"model": "embedded"}))
    args = skip_null.records_parser("", sentences=30).parse_args(
        [str(records), str(tmp_path / "out.jsonl"), "--per-task", "2"]
    )
    chosen = skip_null.chosen_records(args)
    # b-0 did not converge: it counts in nothing, so b's first two are b-1 and b-2
    assert [r["id"] for r in chosen] == ["a-0", "a-1", "b-1", "b-2", "c-0", "c-1"]
    run = skip_null.run_meta(str(records))
    assert skip_null.open_run(args, run, chosen, {}) == set()
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["model"] == "embedded"
    assert meta["dataset"] == {"input": "run.jsonl", "sentences": 6}


def test_smollm2_null_holds_the_preregistered_prefixes(skip_null):
    # RUNS.md fixes them: the first 5 converged prefixes of each task of run 1. A null
    # started on run 1's records before all of them were in took a later prefix once.
    null = SMOLLM2 / "lm_skip_null.jsonl.gz"
    args = skip_null.records_parser("", sentences=30).parse_args(
        [str(SMOLLM2 / "lm_routes.jsonl.gz"), "unused", "--per-task", "5"]
    )
    chosen = skip_null.chosen_records(args)
    assert len(chosen) == 30
    lines = _lines(null)
    assert [r["id"] for r in lines] == [r["id"] for r in chosen]
    meta = json.loads(null.with_name(null.name[:-3] + ".meta.json").read_text())
    assert meta["dataset"] == {"input": "lm_routes.jsonl.gz", "sentences": 30}
    assert meta["settings"]["skip_null_draws"] == 4
    # A decoder's routes never run backwards: uniform draws on it are causal and reach
    # the output (a route drawn as on an encoder carries nothing: every candidate 0).
    for record in lines:
        for row in record["skip_null"]["uniform_random"]:
            positions = row["positions"]
            assert positions == sorted(positions), record["id"]
            assert positions[-1] == record["output_position"], record["id"]
        assert any(v for row in record["skip_null"]["uniform_random"]
                   for c in row["node_candidates"] for v in c), record["id"]


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_installed(), reason=SMOLLM2_MISSING)
def test_smollm2_null_runs_at_the_records_steps(skip_null, tmp_path, monkeypatch):
    """The neutral baseline and the record's own (converged) steps: the guided rows
    recompute the recorded candidates, which a wrong baseline or step count would
    not."""
    from captum_influence_patterns.models.gguf import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    out = tmp_path / "null.jsonl"
    skip_null.main([str(SMOLLM2 / "lm_routes.jsonl.gz"), str(out),
                    "--per-task", "1", "--draws", "1"])
    records = _lines(SMOLLM2 / "lm_routes.jsonl.gz")
    first = {}
    for record in sorted(records, key=lambda r: r["index"]):
        if record["convergence"]["converged"]:
            first.setdefault(record["task"], record)
    rows = _lines(out)
    # one row per task the committed run has reached, each the task's first record
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in first.values())
    for new in rows:
        record = first[new["task"]]
        assert new["skip_null_settings"]["n_steps"] == record["n_steps"]
        assert new["skip_null_check"] < 1e-3, new["id"]
    # the record's own steps, not the default 50, are what the rows above recompute
    assert any(r["n_steps"] != 50 for r in first.values())
    meta = json.loads((tmp_path / "null.jsonl.meta.json").read_text())
    assert meta["model"] == "smollm2" and meta["settings"]["baseline"] == "neutral"
