"""The report (paper/report.py) of hand-made records: the summary it writes, escaped
user names and the protocol it states."""

from __future__ import annotations

import json
import os


from captum_influence_patterns.paper.records import Summary
from captum_influence_patterns.paper.summary import summarize
from captum_influence_patterns.testing.records import (
    RECORD_1,
    RECORD_2,
    ROLES,
    record_dict,
)
from captum_influence_patterns.paper.report import (
    claims,
    md_escape,
    task_name,
    write_report,
)


def test_summary_and_report(tmp_path):
    records = [RECORD_1, RECORD_2, record_dict("t2", "SS", 1.0, RECORD_1["patterns"], ROLES)]
    summary = summarize(records, n_resamples=50)
    assert set(summary["tasks"]) == {"t1", "t2"}
    assert summary["tasks"]["t2"]["accuracy"] == 1.0
    assert summary["overall"]["n"] == 3
    assert summary["correlation"]["task"]["n"] == 2
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    static = tmp_path / "docs" / "_static" / "results"
    write_report(
        [str(results)],
        str(tmp_path / "docs" / "results.md"),
        str(static),
        n_resamples=50,
    )
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "| t1 | 2 | 0.50 |" in text
    assert "](_static/results/task_metrics.png)" in text
    for name in os.listdir(static):
        assert os.path.getsize(static / name) < 200_000
    verdicts = claims(Summary(**summary))
    # three sentences: no verdict on any claim; no ablation: claim 3 not measured
    assert [c["verdict"] for c in verdicts] == ["no verdict"] * 3
    assert verdicts[2]["too_few"].startswith("not measured")


def test_markdown_escaping_of_user_names():
    assert md_escape("<script>alert(1)</script>") == (
        "&lt;script&gt;alert\\(1\\)&lt;/script&gt;"
    )
    assert md_escape("a|b*c_d [x](y) `z` $m$") == (
        "a\\|b\\*c\\_d \\[x\\]\\(y\\) \\`z\\` \\$m\\$"
    )
    assert md_escape("two\nlines") == "two lines"
    assert task_name("sva_pp").endswith("(sva\\_pp)")
    assert task_name("sva_pp").startswith("Subject\\-verb agreement")


def test_report_escapes_names_and_states_the_protocol(tmp_path):
    hostile = "<img src=x onerror=alert(1)>|t"
    records = [
        dict(
            RECORD_1,
            task=hostile,
            form="<b>SS</b>",
            source_roles={"2": "<i>subj</i>", "5": "attractor"},
            optimality=[{"share_beaten": 1.0, "gap": 0.2, "n_random": 8}],
        ),
        dict(RECORD_2, task="sva_pp", id="other"),
    ]
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    meta = {
        "model": "tiny",
        "dataset": {"tasks": ["sva_pp", hostile]},
        "settings": {
            "n_steps": 51,
            "method": "authors",
            "sources": "all",
            "baseline": "mask",
            "routes": ["greedy"],
            "route_orientation": "attends",
        },
    }
    (tmp_path / "r.jsonl.meta.json").write_text(json.dumps(meta))
    out = tmp_path / "out" / "results.md"
    write_report([str(results)], str(out), n_resamples=20)
    text = out.read_text()
    assert "<img" not in text and "<b>" not in text and "<i>" not in text
    assert "&lt;img src=x onerror=alert\\(1\\)&gt;\\|t" in text
    assert "Subject\\-verb agreement across a prepositional phrase (sva\\_pp)" in text
    for line in (
        "- sources explained: every token (roles labelled where known)",
        "- integration: 51 steps, method authors",
        "- attention route orientation: attends",
        "- reference routes: greedy",
    ):
        assert line in text
    assert "## Optimality: guided routes against random routes" in text
    assert "bootstrap 95% percentile intervals over 20 resamples" in text
    assert "](_static/results/task_metrics.png)" in text  # plots beside the output
    assert (tmp_path / "out" / "_static" / "results" / "task_metrics.png").exists()
    # no ablation ran: no (empty) ablation figure
    assert not (tmp_path / "out" / "_static" / "results" / "ablation.png").exists()


def test_unconverged_records_are_left_out_when_asked(tmp_path):
    """The pre-registered rule: a record whose integral did not converge counts in no
    metric, and the convergence section names how many per task; by default it is
    counted and flagged."""
    def checked(record, id_, converged):
        check = {"n_steps": 400 if not converged else 50, "converged": converged,
                 "relative": 0.2 if not converged else 0.01}
        return {**record, "id": id_, "convergence": check}

    records = [checked(RECORD_1, "a", True), checked(RECORD_2, "b", False),
               checked(record_dict("t2", "SS", 1.0, RECORD_1["patterns"], ROLES),
                       "c", True)]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    pages = {}
    for exclude in (False, True):
        page = tmp_path / f"page_{exclude}.md"
        summary = write_report([str(results)], str(page), str(tmp_path / "static"),
                               n_resamples=20, exclude_unconverged=exclude)
        pages[exclude] = (summary, page.read_text())
    counted, left_out = pages[False][0], pages[True][0]
    assert counted.overall["n"] == 3 and left_out.overall["n"] == 2
    assert left_out.tasks["t1"]["n"] == 1  # RECORD_2 is t1's second record
    assert left_out.convergence["excluded"] == {"t1": 1}
    assert left_out.convergence["n"] == 3  # every record read is accounted for
    assert "counted in the metrics below" in pages[False][1]
    assert "left out of every metric, table and verdict below** (per task: t1 1; b)" \
        in pages[True][1]
