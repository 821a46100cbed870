"""The results pages are what scripts/make_results.sh makes of the committed runs, and
every number of their discussion comes from the summaries (none is typed in)."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from captum_influence_patterns.paper.datasets import EvaluationError
from captum_influence_patterns.paper.notes import PLACEHOLDER, render_notes
from captum_influence_patterns.testing.records import assert_json_close

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_results.sh"
DISCUSSION = ROOT / "results" / "agreement_minilm" / "discussion.md"
STATIC = ROOT / "docs" / "_static"

#: A number standing alone in prose (not part of a name such as L6 or H200).
NUMBER = re.compile(r"(?<![\w.\-/])[-+]?\d(?:[\d,]*\d)?(?:\.\d+)?%?(?![\w])")


def literal_numbers(text: str) -> list:
    """The numbers typed into a discussion template: everything but its placeholders,
    code (fenced and inline), link targets, HTML comments, version numbers and the
    claims' own numbers ("claim 2")."""
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = PLACEHOLDER.sub(" ", text)
    text = re.sub(r"\b\d+\.\d+\.\d+\b", " ", text)  # versions (0.2.0)
    text = re.sub(r"\b[Cc]laims? \d\b", " ", text)
    return NUMBER.findall(text)


def test_the_discussion_types_in_no_number():
    found = literal_numbers(DISCUSSION.read_text(encoding="utf-8"))
    assert not found, f"numbers typed into {DISCUSSION.name}: {found}; use placeholders"


def test_a_typed_in_number_is_caught():
    # A scratch copy with one placeholder replaced by the number it stood for.
    text = DISCUSSION.read_text(encoding="utf-8")
    first = PLACEHOLDER.search(text)
    assert first is not None
    for literal in ("0.835", "84%", "6,000", "-0.075"):
        scratch = text[: first.start()] + literal + text[first.end():]
        assert literal_numbers(scratch) == [literal]


def _summaries():
    """The summaries scripts/make_results.sh gives the discussion."""
    out = {"": json.loads((STATIC / "results" / "summary.json").read_text())}
    paths = {
        "routes": STATIC / "results_routes" / "summary.json",
        "optimality": STATIC / "results_optimality" / "summary.json",
        "authors": STATIC / "results_authors" / "summary.json",
        "null": STATIC / "results_null" / "summary.json",
        "sweep": STATIC / "results_sweep" / "summary.json",
        "peers": STATIC / "results_peers" / "summary.json",
        "same": STATIC / "results_authors" / "ours_same_sentences.json",
    }
    for name, path in paths.items():
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


def discussion_matches(page: str, summaries) -> bool:
    """Whether a page's discussion is its template with the summaries' numbers."""
    rendered = render_notes(DISCUSSION.read_text(encoding="utf-8"), summaries)
    return rendered.strip() in page


def test_the_committed_discussion_is_its_template_filled_from_the_summaries():
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert discussion_matches(page, _summaries())


def test_a_number_that_disagrees_with_the_summary_fails():
    # A scratch copy of the page with one number of its discussion changed.
    summaries = _summaries()
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    start = page.index("## Discussion")
    weighted = summaries[""]["intervals"]["skip_share"]["weighted"]["value"]
    shown = f"{weighted:.3f}"
    assert shown in page[start:]
    scratch = page[:start] + page[start:].replace(
        shown, f"{weighted + 0.01:.3f}", 1
    )
    assert not discussion_matches(scratch, summaries)


def test_the_discussions_words_agree_with_the_summaries():
    """What the discussion says in words, checked against the numbers it describes
    (the placeholders check only the numbers)."""
    text = " ".join(DISCUSSION.read_text(encoding="utf-8").split())
    summaries = _summaries()
    full, same, authors = (summaries[name] for name in ("routes", "same", "authors"))
    margin = full["intervals"]["ablation"]["margin"]
    assert "the margin's interval includes zero" in text
    assert margin["low"] < 0 < margin["high"]
    assert summaries[""]["claims"][2]["verdict"] == "inconclusive"
    looks = [look["margin"] for look in full["ablation_test"]["looks"]]
    assert "negative at every look but the last" in text
    assert all(m["value"] < 0 for m in looks[:-1]) and looks[-1]["value"] > 0
    assert "where the interval excluded zero on the other side" in text
    assert looks[1]["high"] < 0
    assert "the two protocols agree on these sentences" in text.lower()
    for claim in (0, 2):
        assert same["claims"][claim]["verdict"] == authors["claims"][claim]["verdict"]
    assert "neither gives the guided union a margin" in text
    for run in (same, authors):
        assert run["intervals"]["ablation"]["margin"]["low"] < 0
    assert "both intervals straddle the threshold" in text
    corr = summaries[""]["intervals"]["correlation"]
    for name in ("pearson", "spearman"):
        assert corr[name]["low"] < 0.3 < corr[name]["high"]
    assert summaries[""]["correlation"]["task_form"]["permutation"]["pearson_p"] > 0.05
    null = summaries["null"]["skip_null"]["kinds"]
    assert "any route that follows attention gives about the same" in text
    assert abs(null["guided"]["flow"]["value"]
               - null["attention_random"]["flow"]["value"]) < 0.05
    assert null["uniform_random"]["flow"]["high"] < null["guided"]["flow"]["low"]
    opponents = summaries["optimality"]["overall"]["opponents"]
    assert "no source here has" in text
    assert {e["search"] for e in opponents["optimum_search"]} == {"beam"}
    assert "the shortfall is large" in text
    assert opponents["shortfall_positive_median"] > 0.1
    sweep = summaries["sweep"]["optimum_sweep"]
    assert "finds no better route for any of their" in text
    assert all(e["better_than"] == 0 for e in sweep["searches"].values())
    assert "the guided route and every beam reach the exhaustive optimum" in text
    assert all(e["found"] == 1 for e in sweep["exhaustive"]["by"].values())


def test_claim_list_and_discussion_read_one_verdict_object():
    """The discussion names every verdict from the page's own summary, whose
    ``claims`` the claim list renders: the two cannot disagree."""
    text = DISCUSSION.read_text(encoding="utf-8")
    for match in PLACEHOLDER.finditer(text):
        name, path = match.group(1), match.group(2)
        if path.startswith("claims.") and path.endswith(".verdict"):
            assert name in (None, "same", "authors", "peers"), match.group(0)
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    claims = _summaries()[""]["claims"]
    listed = page[page.index("## The claims"):page.index("## Per task")]
    discussion = " ".join(page[page.index("## Discussion"):].split())
    for entry in claims:
        assert f"{entry['claim']}" in listed
        line = next(x for x in listed.splitlines() if x.startswith(f"- {entry['claim']}"))
        assert f"**{entry['verdict']}**" in line
        assert f": {entry['verdict']}" in discussion
    assert claims[2]["source"] == "routes"


def test_placeholders_name_real_numbers():
    summaries = {"": {"a": {"b": [0.5, 2]}, "c": None}}
    assert render_notes("x {{a.b.0|.1%}} {{a.b.1|d}}", summaries) == "x 50.0% 2"
    for bad, why in (("{{a.z|.2f}}", "no 'a.z'"), ("{{other:a|.2f}}", "no summary"),
                     ("{{c|.2f}}", "not a number"), ("{{a.b.0|d}}", "placeholder")):
        with pytest.raises(EvaluationError, match=why):
            render_notes(bad, summaries)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_make_results_regenerates_the_committed_pages(tmp_path):
    env = dict(
        os.environ,
        DOCS=str(tmp_path),
        PYTHON=sys.executable,
        PYTHONPATH=str(ROOT),
        MPLBACKEND="Agg",
    )
    # beside evaluation.md, as in docs/ (the pages link to it)
    shutil.copy(ROOT / "docs" / "evaluation.md", tmp_path)
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    pages = ("results", "results_routes", "results_optimality", "results_authors",
             "results_null", "results_sweep", "results_smollm2",
             "results_smollm2_optimality", "results_smollm2_null")
    for page in (f"{name}.md" for name in pages):
        made = (tmp_path / page).read_text(encoding="utf-8")
        committed = (ROOT / "docs" / page).read_text(encoding="utf-8")
        assert made == committed, f"docs/{page} is stale: run scripts/make_results.sh"
    summaries = [f"{name}/summary.json" for name in pages]
    summaries.append("results_authors/ours_same_sentences.json")
    for summary in summaries:
        made = json.loads((tmp_path / "_static" / summary).read_text())
        committed = json.loads((STATIC / summary).read_text())
        assert_json_close(made, committed, where=f"docs/_static/{summary}")
    assert (tmp_path / "_static" / "results_routes" / "ablation.png").stat().st_size


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python: records its arguments and writes one record per call.
echo "$@" >> "$RUNS/calls"
out=""; prev=""
for arg in "$@"; do
    [ "$prev" = "--output" ] && out=$arg
    prev=$arg
done
shard=""; prev=""
for arg in "$@"; do
    [ "$prev" = "--shard" ] && shard=$arg
    prev=$arg
done
case " $* " in
    *" --merge "*) cat "$out".part-* >> "$out" && rm -f "$out".part-* ;;
    *) if [ -n "$shard" ]; then
           i=${shard%/*}; n=${shard#*/}
           echo '{"id": "x"}' >> "$out.part-$i-of-$n.jsonl"
       else
           echo '{"id": "x"}' >> "$out"
       fi ;;
esac
"""


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    "stage,shards", [("routes", 1), ("authors", 2), ("optimality", 1)]
)
def test_run_routes_runs_the_protocol_and_logs_each_shard(tmp_path, stage, shards):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), RUNS=str(tmp_path), STAGE=stage,
               SHARDS=str(shards))
    script = ROOT / "scripts" / "run_routes.sh"
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    name = {"routes": "routes100", "authors": "routes_authors",
            "optimality": "optimality_subset"}[stage]
    runs = [c for c in calls if "--merge" not in c]
    assert len(runs) == shards
    for call in runs:
        assert "--sources all" in call
        if stage == "optimality":
            assert "--optimality 20" in call and "--routes" not in call
            assert "--n-steps 50" in call
            continue
        assert "--routes default --ablation --ablation-reference mean zero" in call
        if stage == "routes":
            assert "--n-steps 50" in call and "items_100.jsonl" in call
        else:
            assert "--method authors --n-steps 51 --route-orientation attends" in call
    if stage != "routes":
        # the first 30 (10) per task of the interleaved file
        per_task = 30 if stage == "authors" else 10
        items = (tmp_path / f"items_{stage}.jsonl").read_text().splitlines()
        tasks = [json.loads(line)["task"] for line in items]
        assert len(set(tasks)) == 6
        assert all(tasks.count(t) == per_task for t in set(tasks))
    log = (tmp_path / f"{name}.log").read_text().splitlines()
    assert len(log) == shards
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    for k, line in enumerate(sorted(log)):
        assert line.startswith(f"shard {k}/{shards} commit {commit}")
        assert "status 0" in line
    assert len((tmp_path / f"{name}.jsonl").read_text().splitlines()) == shards


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_optimality_stage_on_every_sentence_writes_its_own_run(tmp_path):
    """N_ITEMS=600 runs every sentence into optimality.jsonl, which make_results.sh
    prefers to the 60-sentence optimality_subset.jsonl once it is complete."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), RUNS=str(tmp_path), STAGE="optimality",
               N_ITEMS="600")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "run_routes.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "optimality.log").exists()
    assert not (tmp_path / "optimality_subset.log").exists()
    items = (tmp_path / "items_optimality.jsonl").read_text().splitlines()
    assert len(items) == 600


SMOLLM2_SCRIPT = ROOT / "scripts" / "make_results_smollm2.sh"
MINILM = ROOT / "results" / "agreement_minilm"
SMOLLM2_DISCUSSION = ROOT / "results" / "agreement_smollm2" / "discussion.md"


def test_the_smollm2_discussion_types_in_no_number():
    found = literal_numbers(SMOLLM2_DISCUSSION.read_text(encoding="utf-8"))
    assert not found, f"numbers typed into the SmolLM2 discussion: {found}"


def _stand_in(name: str, folder: Path, change=None, like=None, meta=None) -> None:
    """A MiniLM run's records (changed by ``change``: record -> record) and meta (or
    ``meta``) under a SmolLM2 run's name."""
    like = like or name
    with gzip.open(MINILM / f"{like}.jsonl.gz", "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    if change is not None:
        records = [change(k, record) for k, record in enumerate(records)]
    with gzip.open(folder / f"{name}.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    meta = meta or MINILM / f"{like}.jsonl.meta.json"
    shutil.copy(meta, folder / f"{name}.jsonl.meta.json")


def _as_language_model(k: int, record: dict) -> dict:
    """A MiniLM record dressed as a SmolLM2 one: a convergence check (the first
    failed), the top-2 flag, and the decoders' faithfulness blanks."""
    blanks = {"unk": "deletion", "mask": "replacement"}
    faithfulness = {
        key: ({blanks[b]: v for b, v in value.items()} if isinstance(value, dict)
              and set(value) == set(blanks) else value)
        for key, value in record["faithfulness"].items()
    }
    converged = k != 0
    return {**record, "top2": True, "faithfulness": faithfulness,
            "convergence": {"n_steps": 50 if converged else 400, "delta": 0.0,
                            "qoi_difference": 1.0, "relative": 0.01 if converged
                            else 0.2, "tolerance": 0.05, "converged": converged,
                            "tried": [[50, 0.01]]}}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_smollm2_pages_render_once_the_run_is_complete(tmp_path):
    """The SmolLM2 pages are made only from a complete run; on stand-in records of
    the right size (MiniLM's, dressed as SmolLM2's) every placeholder of the
    discussion resolves and the unconverged prefix is left out."""
    run = tmp_path / "run"
    docs = tmp_path / "docs"
    run.mkdir()
    docs.mkdir()
    shutil.copy(SMOLLM2_DISCUSSION, run / "discussion.md")
    shutil.copy(ROOT / "docs" / "evaluation.md", docs)
    env = dict(os.environ, DOCS=str(docs), PYTHON=sys.executable,
               PYTHONPATH=str(ROOT), MPLBACKEND="Agg", SMOLLM2_RESULTS=str(run),
               MINILM_STATIC=str(STATIC))

    def make():
        return subprocess.run(["bash", str(SMOLLM2_SCRIPT)], env=env,
                              capture_output=True, text=True, timeout=900)

    # the run's own settings file: the discussion reads its data set and steps
    _stand_in("lm_routes", run, _as_language_model, like="routes_peers",
              meta=SMOLLM2_DISCUSSION.parent / "lm_routes.jsonl.meta.json")
    _stand_in("lm_optimality", run, like="optimality_subset")
    done = make()  # the null is missing: no page
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no page yet" in done.stderr and not list(docs.glob("results_*"))
    _stand_in("lm_skip_null", run, like="skip_null")
    done = make()
    assert done.returncode == 0, done.stderr[-2000:]
    page = (docs / "results_smollm2.md").read_text(encoding="utf-8")
    assert "{{" not in page and "## Discussion" in page
    assert "left out of every metric, table and verdict below" in page
    summary = json.loads((docs / "_static" / "results_smollm2" / "summary.json")
                         .read_text())
    assert summary["overall"]["n"] == 599
    # one look, fixed in advance: claim 3 lists no sequential looks
    test = summary["ablation_test"]
    assert test["one_look"] and not test["looks"] and "adjusted" not in test
    assert "### Claim 3 at every sequential look" not in page
    for name in ("results_smollm2_optimality", "results_smollm2_null"):
        assert (docs / f"{name}.md").stat().st_size
