"""The decision rule on intervals, claim 3's paired test and sequential looks, the
zero reference's closeness, claim 1's null and the shortfall distribution, on
hand-made numbers whose answers are worked out below."""

from __future__ import annotations

import math
import os
from dataclasses import replace

import pytest

from captum_influence_patterns.paper.metrics import skip_null
from captum_influence_patterns.paper.optimality_metrics import (
    opponent_metrics,
    optimum_sweep,
)
from captum_influence_patterns.paper.records import Summary
from captum_influence_patterns.paper.report_sections import claims_section
from captum_influence_patterns.paper.summary import ablation_test, paired_comparison
from captum_influence_patterns.paper.verdicts import (
    CONTRADICTED,
    CRITERIA,
    INCONCLUSIVE,
    MIN_SENTENCES,
    NO_VERDICT,
    SUPPORTED,
    claim3_decision,
    claims,
    decide,
)


def test_decide_on_the_interval():
    assert decide(0.3, 0.5, 0.25) == SUPPORTED
    assert decide(0.1, 0.2, 0.25) == CONTRADICTED
    assert decide(0.2, 0.3, 0.25) == INCONCLUSIVE
    assert decide(0.25, 0.3, 0.25) == INCONCLUSIVE  # touching is not clearing
    assert decide(None, 0.3, 0.25) == INCONCLUSIVE
    assert decide(math.nan, math.nan, 0.0) == INCONCLUSIVE


def _ablated(index, qoi, nothing, guided, other):
    keep = {"union": {"keep": None}}
    return {
        "id": f"s{index}", "index": index, "qoi": qoi,
        "ablation": {ref: {"nothing": nothing, "guided": {"union": {"keep": guided}},
                           "beam": {"union": {"keep": other}},
                           "broken": keep}
                     for ref in ("mean", "zero")},
    }


def test_paired_comparison_and_closeness_by_hand():
    records = [_ablated(0, 2.0, 0.0, 1.5, 1.0), _ablated(1, 1.0, 0.0, 0.2, 0.6),
               _ablated(2, -1.0, 0.5, 0.0, -0.5)]
    result = ablation_test(records, n_resamples=50, step=2)
    paired = result["mean"]["paired"]
    # differences guided - beam: 0.5, -0.4, 0.5 -> wins 2 of 3
    assert paired["route"] == "beam" and paired["n"] == 3
    assert paired["wins"] == pytest.approx(2 / 3)
    assert paired["median_difference"] == pytest.approx(0.5)
    # |kept - QoI|: guided 0.5, 0.8, 1.0; beam 1.0, 0.4, 0.5; mean |QoI| 4/3
    close = result["zero"]["closeness"]
    assert close["guided"]["value"] == pytest.approx((2.3 / 3) / (4 / 3))
    assert close["best"]["value"] == pytest.approx((1.9 / 3) / (4 / 3))
    assert close["margin"]["value"] == pytest.approx(-0.4 / 4)
    assert result["zero"]["closeness_route"] == "beam"
    # QoI - QoI_ref: 2, 1, -1.5 -> one of three not positive
    assert result["zero"]["nonpositive_change"] == pytest.approx(1 / 3)
    # one look of 2 sentences (sorted by index): guided (1.5 + 0.2) / 3, beam 1.6 / 3
    (look,) = result["looks"]
    assert look["n"] == 2
    assert look["margin"]["value"] == pytest.approx(0.1 / 3)
    assert result["adjusted"]["level"] == pytest.approx(0.95)
    assert paired_comparison([]) == {"n": 0}


def test_one_look_has_no_sequential_looks_and_no_adjustment():
    """A run looked at once (``report --one-look``): the same paired test and
    closeness, no looks, no Bonferroni interval, and the page says why; the
    default run of the same records lists its looks."""
    records = [_ablated(i, 2.0, 0.0, 1.0 + 0.1 * i, 1.2) for i in range(4)]
    looked = ablation_test(records, n_resamples=50, step=2)
    once = ablation_test(records, n_resamples=50, step=None)
    assert [look["n"] for look in looked["looks"]] == [2, 4]
    assert looked["adjusted"]["level"] == pytest.approx(1 - 0.05 / 2)
    assert once["looks"] == [] and once["one_look"] is True
    assert "adjusted" not in once and "one_look" not in looked
    assert once["mean"] == looked["mean"] and once["zero"] == looked["zero"]
    paired = {"n": 40, "route": "beam", "wins": 0.3, "median_difference": -1,
              "wilcoxon": {"p": 0.01}}
    pages = {}
    for name, test in (("looked", looked), ("once", once)):
        summary = _summary(40, 20, (0.5, 0.4, 0.6), (0.5, 0.35, 0.7), 0.01,
                           (-0.1, -0.2, -0.05), paired)
        summary = replace(summary, ablation_test={
            **test, "mean": {"paired": paired}})
        summary = replace(summary, claims=claims(summary))
        assert summary.claims[2]["verdict"] == CONTRADICTED
        pages[name] = "\n".join(claims_section(summary))
    assert "### Claim 3 at every sequential look" in pages["looked"]
    assert "(Bonferroni)" in pages["looked"]
    assert "sequential look" not in pages["once"].replace("no sequential looks", "")
    assert "Bonferroni" not in pages["once"]
    assert "looked at once" in pages["once"]
    assert "one look, at the sample size fixed in advance" in pages["once"]


def test_claim3_needs_the_paired_test_to_agree():
    above = {"value": 0.1, "low": 0.05, "high": 0.15}
    below = {"value": -0.1, "low": -0.15, "high": -0.05}
    both = {"value": 0.0, "low": -0.05, "high": 0.05}

    def test(p, median):
        return {"median_difference": median, "wilcoxon": {"p": p}}

    assert claim3_decision(above, test(0.01, 0.2)) == SUPPORTED
    assert claim3_decision(below, test(0.01, -0.2)) == CONTRADICTED
    assert claim3_decision(above, test(0.2, 0.2)) == INCONCLUSIVE  # test not sig.
    assert claim3_decision(above, test(0.01, -0.2)) == INCONCLUSIVE  # disagree
    assert claim3_decision(both, test(0.001, 0.2)) == INCONCLUSIVE


def _summary(n, group_size, flow, corr, p_value, margin=None, paired=None):
    ci = lambda v, lo, hi: {"value": v, "low": lo, "high": hi}  # noqa: E731
    return Summary.from_dict({
        "overall": {"n": n, "skip_share": {"ceiling": 0.8}},
        "intervals": {
            "skip_share": {"flow": ci(*flow), "layers": ci(0.8, 0.8, 0.8),
                           "of_ceiling": ci(1, 1, 1), "weighted": ci(0.8, 0.8, 0.8)},
            "correlation": {"pearson": ci(*corr), "spearman": ci(*corr)},
            **({"ablation": {"margin": ci(*margin)}} if margin else {}),
        },
        "correlation": {"task_form": {
            "n": 4,
            "points": [{"group": ["t", form], "n": group_size, "accuracy": 0.5,
                        "consistency": 0.5} for form in ("SS", "SP", "PS", "PP")],
            "permutation": {"pearson_p": p_value}}},
        "ablation_test": {"mean": {"paired": paired}} if paired else {},
    })


def test_claims_are_decided_by_the_rule_and_need_twenty_sentences():
    summary = _summary(40, 20, (0.5, 0.4, 0.6), (0.5, 0.35, 0.7), 0.01,
                       (0.1, 0.05, 0.2),
                       {"n": 40, "route": "beam", "wins": 0.7, "median_difference": 1,
                        "wilcoxon": {"p": 0.01}})
    verdicts = [c["verdict"] for c in claims(summary)]
    assert verdicts == [SUPPORTED, SUPPORTED, SUPPORTED]
    summary = _summary(40, 20, (0.2, 0.1, 0.24), (0.1, -0.2, 0.5), 0.01)
    entries = claims(summary)
    assert [c["verdict"] for c in entries[:2]] == [CONTRADICTED, INCONCLUSIVE]
    assert entries[2]["too_few"] and entries[2]["verdict"] == NO_VERDICT
    # the permutation test must agree for claim 2
    summary = _summary(40, 20, (0.5, 0.4, 0.6), (0.5, 0.35, 0.7), 0.2)
    assert claims(summary)[1]["verdict"] == INCONCLUSIVE
    # fewer than 20 sentences, or a task x form group under 20: no verdict
    few = _summary(MIN_SENTENCES - 1, MIN_SENTENCES - 1, (0.5, 0.4, 0.6),
                   (0.5, 0.35, 0.7), 0.01)
    entries = claims(few)
    assert [c["verdict"] for c in entries] == [NO_VERDICT] * 3
    assert entries[0]["decision"] == SUPPORTED  # the rule's, kept for the record
    # a claim borrowed from another summary is that summary's entry
    borrowed = claims(few, {3: {**claims(summary)[0], "number": 3, "source": "x"}})
    assert borrowed[2]["source"] == "x" and borrowed[2]["verdict"] == SUPPORTED


def test_every_criterion_is_method_mds_and_has_its_history():
    path = os.path.join(os.path.dirname(__file__), "..", "docs", "method.md")
    with open(path, encoding="utf-8") as handle:
        method = " ".join(handle.read().split()).lower()
    for spec in CRITERIA.values():
        assert " ".join(spec.criterion.split()).lower() in method
        assert len(spec.history) >= 2
        assert all(r.commit and r.date and r.seen for r in spec.history)


def _null_pattern(source, positions, skips, candidates):
    nodes = [{"layer": k + 1, "position": positions[k + 1],
              "kind": "skip" if skip else "head", "head": None if skip else 0,
              "influence": 0.0} for k, skip in enumerate(skips)]
    return {"source": source, "sign": 1, "token_influence": 1.0,
            "positions": positions, "position_influence": [0.0, 0.0],
            "embedding_influence": 0.0, "nodes": nodes, "influence": 0.0,
            "node_candidates": candidates}


def test_skip_null_by_hand():
    # node candidates [head 0, head 1, skip]: flow shares 3/6 (guided) and 1/10
    guided = _null_pattern(0, [0, 0, 3], [True, False], [[1.0, 0.0, 2.0], [1.0, 1.0, 1.0]])
    other = _null_pattern(0, [0, 2, 3], [False, False], [[4.0, 1.0, 0.0], [2.0, 2.0, 1.0]])
    records = [{"skip_null": {"guided": [guided], "uniform_random": [other, other]},
                "skip_null_check": 1e-7}] * 2
    result = skip_null(records, n_resamples=20)
    assert result["n"] == 2 and result["check"] == pytest.approx(1e-7)
    kinds = result["kinds"]
    assert kinds["guided"]["flow"]["value"] == pytest.approx(3 / 6)
    assert kinds["uniform_random"]["flow"]["value"] == pytest.approx(1 / 10)
    assert kinds["uniform_random"]["routes"] == 4
    assert kinds["guided"]["layers"]["value"] == pytest.approx(1 / 2)
    assert result["difference"]["uniform_random"]["value"] == pytest.approx(0.4)
    assert skip_null([{}]) == {"n": 0}


def test_shortfall_distribution_by_hand():
    entries = [{"shortfall": v, "opponents": {"optimum": {"search": "beam", "width": 8,
                                                           "influence": 1.0}}}
               for v in (0.0, 0.0, 0.0, 0.2, 0.6)]
    result = opponent_metrics([{"optimality": entries}])
    assert result["shortfall_zero"] == pytest.approx(0.6)
    assert result["shortfall_positive_median"] == pytest.approx(0.4)
    assert result["shortfall_quantiles"]["0.9"] == pytest.approx(0.44)  # linear
    assert result["shortfall_max"] == 0.6
    assert result["optimum_search"] == [{"search": "beam", "width": 8, "n": 5}]


def test_optimum_sweep_by_hand():
    def entry(source, guided, best, sign=1, **more):
        return {"source": source, "guided": guided, "sign": sign, "influence": best,
                **more}

    record = {"id": "s", "optimum_sweep": {
        # source 0: the guided route is the best; source 1: width 32 finds more
        "beam8": [entry(0, 1.0, 1.0), entry(1, -1.0, -1.5, -1)],
        "beam32": [entry(0, 1.0, 1.0), entry(1, -1.0, -2.0, -1)],
        "exhaustive": [entry(1, -1.0, -2.0, -1, routes=100000)],
    }}
    result = optimum_sweep([record])
    assert result["n"] == 1 and result["narrowest"] == "beam8"
    eight, wide = result["searches"]["beam8"], result["searches"]["beam32"]
    assert eight["within_1pct"] == pytest.approx(0.5)
    # shortfalls 0 and (1.5 - 1) / 1.5; at width 32, 0 and (2 - 1) / 2
    assert eight["shortfall_median"] == pytest.approx((0 + 1 / 3) / 2)
    assert wide["shortfall_median"] == pytest.approx((0 + 0.5) / 2)
    assert wide["better_than"] == pytest.approx(0.5)
    assert wide["gain_median"] == pytest.approx(0.5 / 1.5)
    exhaustive = result["exhaustive"]
    assert exhaustive["sources"] == 1 and exhaustive["routes"] == 100000
    assert exhaustive["by"]["beam32"]["found"] == 1.0
    assert exhaustive["by"]["beam8"]["found"] == 0.0
    assert exhaustive["by"]["guided"]["shortfall_median"] == pytest.approx(0.5)
    assert optimum_sweep([{}]) == {"n": 0}


def _page_record(index, task, form, qoi):
    pattern = _null_pattern(0, [0, 0, 3], [True, False],
                            [[1.0, 0.0, 2.0], [1.0, 1.0, 1.0]])
    return {"id": f"r{index}", "index": index, "task": task, "form": form, "qoi": qoi,
            "input_ids": [0, 1, 2, 3], "sources": [0],
            "token_influence": [1.0, 0.0, 0.0, 0.0], "patterns": [pattern]}


def test_claims_from_puts_another_runs_verdict_in_list_and_summary(tmp_path, capsys):
    import json

    from captum_influence_patterns.cli import main
    from captum_influence_patterns.paper.report import write_report

    results = tmp_path / "run.jsonl"
    results.write_text("".join(
        json.dumps(_page_record(k, "t", "SS" if k % 2 else "SP", 1.0 - k % 3)) + "\n"
        for k in range(6)))
    other = tmp_path / "other.json"
    entry = {"number": 3, "claim": "(3) borrowed", "criterion": "c", "why": "w",
             "verdict": CONTRADICTED, "too_few": None, "n": 99, "history": []}
    other.write_text(json.dumps({"claims": [{}, {}, entry]}))
    page = tmp_path / "page.md"
    summary = write_report([str(results)], str(page), n_resamples=20,
                           notes_summaries={"other": str(other)},
                           claims_from={3: "other"})
    assert summary.claims[2] == {**entry, "source": "other"}
    text = page.read_text()
    assert "- (3) borrowed (from the other run, 99 sentences): **contradicted**" in text
    # a bad CLAIM=NAME exits 2 before any work, naming the option
    for bad in ("4=other", "3=nobody", "3"):
        code = main(["report", str(results), "-o", str(tmp_path / "x.md"),
                     "--notes-summary", f"other={other}", "--claims-from", bad, "-q"])
        assert code == 2 and "--claims-from" in capsys.readouterr().err
        assert not (tmp_path / "x.md").exists()
    # a summary this package cannot read (a newer version): exit 2 naming the file
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"schema": 99, "claims": [{}, {}, entry]}))
    code = main(["report", str(results), "-o", str(tmp_path / "x.md"),
                 "--notes-summary", f"other={newer}", "--claims-from", "3=other", "-q"])
    error = capsys.readouterr().err
    assert code == 2 and "newer.json" in error and "version 99" in error
    assert not (tmp_path / "x.md").exists()
