"""Metrics on hand-made result sets whose answers are worked out by hand below."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from captum_influence_patterns.paper.consistency import (
    consistency_accuracy,
    consistency_by_prediction,
    layer_consistency,
    normalized_entropy,
)
from captum_influence_patterns.paper.metrics import (
    ablation_metrics,
    accuracy,
    identical_routes,
    role_influence,
    route_names,
    skip_share,
    subject_split,
    sufficiency,
)
from captum_influence_patterns.paper.optimality_metrics import (
    opponent_metrics,
    optimality_metrics,
)
from captum_influence_patterns.paper.summary import intervals, summarize
from captum_influence_patterns.paper.report import (
    claims,
    md_escape,
    task_name,
    write_report,
)

T = 8  # tokens per sentence; 2 layers; 2 heads (node candidates: head 0, head 1, skip)


def _pattern(source, positions, nodes, g, e, a, candidates=None):
    return {
        "source": source,
        "sign": 1 if g >= 0 else -1,
        "token_influence": g,
        "positions": positions,
        "position_influence": [e, e],
        "embedding_influence": e,
        "nodes": [
            {
                "layer": k + 1,
                "position": positions[k + 1],
                "kind": "skip" if head is None else "head",
                "head": head,
                "influence": i,
            }
            for k, (head, i) in enumerate(nodes)
        ],
        "influence": a,
        "position_candidates": [],
        "node_candidates": candidates or [],
        "label": "guided",
    }


def _record(task, form, qoi, patterns, roles, ablation=None):
    g = [0.0] * T
    for p in patterns:
        g[p["source"]] = p["token_influence"]
    record = {
        "id": f"{task}-{form}-{qoi}",
        "index": 0,
        "task": task,
        "form": form,
        "qoi": qoi,
        "prediction_correct": qoi > 0,
        "input_ids": list(range(T)),
        "sources": [p["source"] for p in patterns],
        "source_roles": {str(pos): role for role, pos in roles.items()},
        "token_influence": g,
        "patterns": patterns,
    }
    if ablation is not None:
        record["ablation"] = ablation
    return record


ROLES = {"subject": 2, "attractor": 5}
# Record 1: subject route 2 -> 2 -> 7 (skip, then head 0); attractor route 5 -> 5 -> 7.
R1 = _record(
    "t1",
    "SS",
    2.0,
    [
        _pattern(
            2,
            [2, 2, 7],
            [(None, 0.9), (0, 0.5)],
            g=2.0,
            e=1.0,
            a=0.5,
            candidates=[[0.1, -0.2, 0.7], [0.5, 0.0, 0.0]],
        ),
        _pattern(
            5,
            [5, 5, 7],
            [(None, -0.6), (None, -0.2)],
            g=-1.0,
            e=-0.8,
            a=-0.2,
            candidates=[[0.0, 0.1, -0.6], [0.3, 0.1, -0.2]],
        ),
    ],
    ROLES,
)
# Record 2: subject route 2 -> 3 -> 7 (head 1, then head 0); wrong prediction.
R2 = _record(
    "t1",
    "SP",
    -1.0,
    [
        _pattern(2, [2, 3, 7], [(1, 0.4), (0, 0.3)], g=1.0, e=0.5, a=0.3),
    ],
    {"subject": 2},
)


def test_accuracy_and_role_influence():
    assert accuracy([R1, R2]) == 0.5
    assert accuracy([R1, R2, _record("t1", "PP", 0.5, [], {})]) == pytest.approx(2 / 3)
    # subject: g = 2.0 and 1.0; attractor: -1.0
    assert role_influence([R1, R2]) == {"subject": 1.5, "attractor": -1.0}


def test_sufficiency_ratio_of_sums_median_and_mean():
    # I(e)/g: 1/2, 0.8, 0.5; I(a)/g: 0.25, 0.2, 0.3
    result = sufficiency([R1, R2])
    # ratio of sums, sum sign(g) I / sum |g|: (1 + 0.8 + 0.5) / 4, (0.5 + 0.2 + 0.3) / 4
    assert result["embedding_ratio"] == pytest.approx(2.3 / 4)
    assert result["attention_ratio"] == pytest.approx(1.0 / 4)
    assert result["embedding_mean"] == pytest.approx(0.6)
    assert result["attention_mean"] == pytest.approx(0.25)
    assert result["embedding_median"] == pytest.approx(0.5)
    assert result["attention_median"] == pytest.approx(0.25)
    assert result["n"] == 3 and result["near_zero"] == 0


def test_near_zero_g_is_flagged_and_left_out_of_the_mean_only():
    # |g| = 0.005 < 1% of the example's sum |g| (1.005): I/g = 100 there.
    tiny = _record(
        "t1",
        "SS",
        1.0,
        [
            _pattern(2, [2, 2, 7], [(None, 0.4), (None, 0.4)], g=1.0, e=0.5, a=0.4),
            _pattern(5, [5, 5, 7], [(None, 0.5), (None, 0.5)], g=0.005, e=0.5, a=0.5),
        ],
        ROLES,
    )
    result = sufficiency([tiny])
    assert result["near_zero"] == 1 and result["n"] == 2
    assert result["embedding_mean"] == pytest.approx(0.5)
    assert result["embedding_median"] == pytest.approx((0.5 + 100) / 2)
    assert result["embedding_ratio"] == pytest.approx(1.0 / 1.005)
    # Just above the threshold (|g| = 0.011 of 1.011): kept in the mean.
    tiny["patterns"][1]["token_influence"] = 0.011
    tiny["token_influence"][5] = 0.011
    assert sufficiency([tiny])["near_zero"] == 0
    zero_g = _record(
        "t1",
        "SS",
        1.0,
        [_pattern(2, [2, 2, 7], [(None, 0.0), (None, 0.0)], g=0.0, e=0.0, a=0.0)],
        ROLES,
    )
    both = sufficiency([R1, zero_g])
    assert both["embedding_mean"] == pytest.approx(0.65) and both["near_zero"] == 1


def test_skip_share():
    result = skip_share([R1, R2])
    # nodes: skip, head | skip, skip | head, head -> 3 of 6 layers
    assert result["layers"] == pytest.approx(0.5)
    # |influence| on skips: 0.9 + 0.6 + 0.2 = 1.7; all: 1.7 + 0.5 + 0.4 + 0.3 = 2.9
    assert result["weighted"] == pytest.approx(1.7 / 2.9)
    # candidates (R1 only): skips 0.7 + 0 + 0.6 + 0.2 = 1.5; all |.|: 1.0 + 0.5 + 0.7
    # + 0.6 = 2.8
    assert result["flow"] == pytest.approx(1.5 / 2.8)


def test_normalized_entropy():
    assert normalized_entropy(["a", "a", "b", "b"], 4) == pytest.approx(0.5)
    assert normalized_entropy(["a", "a", "b", "b"], 2) == pytest.approx(1.0)
    assert normalized_entropy(["a", "b"], 10) == pytest.approx(1.0)
    assert normalized_entropy(["a", "a", "a"], 10) == 0.0
    assert normalized_entropy(["a"], 10) == 0.0
    # p = (1/2, 1/4, 1/4): H = 1.5 log 2, over log 4 -> 0.75
    assert normalized_entropy([1, 1, 2, 3], 8) == pytest.approx(0.75)


def test_layer_consistency_and_split_by_prediction():
    result = layer_consistency([R1, R2])
    # subject: layer 1 positions {2, 3} -> 1; nodes {skip, head 1} -> 1; layer 2:
    # positions {7, 7} -> 0, nodes {0, 0} -> 0. attractor (one instance): all 0.
    assert result["positions"] == pytest.approx([0.5, 0.0])
    assert result["heads"] == pytest.approx([0.5, 0.0])
    # 1 - (mean positions over layer 1 only = 0.5 + mean heads = 0.25) / 2
    assert result["consistency"] == pytest.approx(1 - 0.75 / 2)
    assert result["n"] == 2
    split = consistency_by_prediction([R1, R2])
    assert split["correct"]["n"] == 1 and split["incorrect"]["n"] == 1
    assert split["correct"]["consistency"] == 1.0


def test_consistency_accuracy_groups():
    result = consistency_accuracy([R1, R2], ("task", "form"))
    assert [p["group"] for p in result["points"]] == [["t1", "SP"], ["t1", "SS"]]
    assert [p["accuracy"] for p in result["points"]] == [0.0, 1.0]
    assert [p["consistency"] for p in result["points"]] == [1.0, 1.0]
    assert result["n"] == 2 and math.isnan(result["pearson"])


def _ablated(nothing, keep):
    return {
        "mean": {
            "nothing": nothing,
            "guided": {"union": {"keep": keep, "remove": nothing}},
        }
    }


def test_ablation_metrics_by_hand():
    records = [
        _record("t1", "SS", 2.0, [], {}, _ablated(0.5, 1.5)),
        _record("t1", "SP", 1.0, [], {}, _ablated(-0.2, 0.25)),
        _record("t1", "PS", 1.0, [], {}),  # not ablated: left out
    ]
    result = ablation_metrics(records)["mean"]
    keep = result["guided"]["union"]["keep"]
    # (1.5 - 0.5 + 0.25 + 0.2) / (2 - 0.5 + 1 + 0.2) = 1.45 / 2.7; raw 1.75 / 3
    assert keep["retained"] == pytest.approx(1.45 / 2.7)
    assert keep["retained_raw"] == pytest.approx(1.75 / 3)
    assert keep["accuracy"] == 1.0 and keep["n"] == 2
    assert result["guided"]["union"]["remove"]["retained"] == pytest.approx(0.0)
    assert result["nothing"]["accuracy"] == 0.5
    assert result["nothing"]["retained_raw"] == pytest.approx(0.3 / 3)


def test_summary_and_report(tmp_path):
    records = [R1, R2, _record("t2", "SS", 1.0, R1["patterns"], ROLES)]
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
    verdicts = claims(summary)
    # three sentences: no verdict on any claim; no ablation: claim 3 not measured
    assert [c["verdict"] for c in verdicts] == ["no verdict"] * 3
    assert verdicts[2]["too_few"].startswith("not measured")


# ------------------------------------------------------------------ every token
def _all_sources_record(qoi, subject_route):
    """Every position but the output (7) explained; roles only for 2 and 5."""
    patterns = []
    for source in range(7):
        route = subject_route if source == 2 else [source, source, 7]
        patterns.append(
            _pattern(source, route, [(None, 0.1), (0, 0.1)], g=0.5, e=0.2, a=0.1)
        )
    return _record("t1", "SS", qoi, patterns, ROLES)


def test_every_token_a_source_keeps_roles_and_groups_the_rest_by_position():
    records = [_all_sources_record(1.0, [2, 2, 7]), _all_sources_record(2.0, [2, 2, 7])]
    assert set(role_influence(records)) == {"subject", "attractor"}
    same = layer_consistency(records)
    assert same["consistency"] == 1.0 and same["positions"] == [0.0, 0.0]
    # The subject moves in one record: only the subject group (1 of 7) has entropy.
    records[1] = _all_sources_record(2.0, [2, 3, 7])
    moved = layer_consistency(records)
    assert moved["positions"][0] == pytest.approx(1 / 7)
    summary = summarize(records, n_resamples=20)
    assert summary["overall"]["sources_per_example"] == 7


# ----------------------------------------------------------------- route records
def test_routes_are_read_from_routes_and_from_old_baselines_files():
    new = dict(R2, routes={"greedy": R2["patterns"]})
    old = dict(R1, baselines={"rollout": R1["patterns"]})
    assert route_names([new, old]) == ["greedy", "rollout"]
    assert sufficiency([old], "rollout")["embedding_mean"] == pytest.approx(0.65)
    summary = summarize([new, old], n_resamples=10)
    assert set(summary["overall"]["route_sufficiency"]) == {"greedy", "rollout"}


# -------------------------------------------------------------------- optimality
def test_optimality_metrics_by_hand():
    listed = dict(
        R1,
        optimality=[
            {"share_beaten": 1.0, "gap": 0.2, "n_random": 10},
            {"share_beaten": 0.5, "gap": -0.1, "n_random": 10},
        ],
    )
    keyed = dict(
        R2,
        optimality={
            "2": {"share_beaten": 0.75, "gap": 0.0, "n_random": 30}
        },
    )
    result = optimality_metrics([listed, keyed])
    assert result["n"] == 3
    assert result["share_beaten"] == pytest.approx(0.75)
    assert result["share_beaten_median"] == pytest.approx(0.75)
    assert result["beats_all"] == pytest.approx(1 / 3)
    assert result["gap"] == pytest.approx(0.1 / 3)
    assert result["gap_median"] == pytest.approx(0.0)
    assert result["at_least_best"] == pytest.approx(2 / 3)
    assert result["n_random"] == 10
    assert optimality_metrics([R1]) == {"n": 0}


def _keep(guided, greedy, nothing=0.0):
    return {
        "mean": {
            "nothing": nothing,
            "guided": {"union": {"keep": guided}},
            "greedy": {"union": {"keep": greedy}},
        }
    }


def test_intervals_of_the_claims():
    records = [
        _record("t1", "SS", 2.0, R1["patterns"], ROLES, _keep(1.5, 0.5)),
        _record("t1", "SP", 1.0, R2["patterns"], {"subject": 2}, _keep(0.5, 0.5)),
    ]
    result = intervals(records, n_resamples=200, seed=0)
    assert result["settings"] == {"n_resamples": 200, "seed": 0, "level": 0.95}
    # guided retains (1.5 + 0.5) / 3, greedy 1 / 3: margin 1/3; resamples of one
    # record give margins 0.5 (first) and 0 (second).
    ablation = result["ablation"]
    assert ablation["guided"]["value"] == pytest.approx(2 / 3)
    assert ablation["margin"]["value"] == pytest.approx(1 / 3)
    assert ablation["margin"]["low"] == pytest.approx(0.0)
    assert ablation["margin"]["high"] == pytest.approx(0.5)
    weighted = result["skip_share"]["weighted"]
    assert weighted["value"] == pytest.approx(1.7 / 2.9)
    assert weighted["low"] <= weighted["value"] <= weighted["high"]
    # Two task x form groups with one record each: no correlation to resample.
    assert math.isnan(result["correlation"]["pearson"]["value"])


# ------------------------------------------------------------------- the report
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
            R1,
            task=hostile,
            form="<b>SS</b>",
            source_roles={"2": "<i>subj</i>", "5": "attractor"},
            optimality=[{"share_beaten": 1.0, "gap": 0.2, "n_random": 8}],
        ),
        dict(R2, task="sva_pp", id="other"),
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


def _label(head):
    return "skip" if head is None else head


def test_choice_table_entropies_match_the_definition_on_random_choices():
    """The vectorized entropies equal normalized_entropy over each role and layer."""
    rng = np.random.default_rng(0)
    records = []
    for k in range(9):
        patterns = []
        for source in (1, 2, 4):  # source 4 has no role: grouped by position
            if source == 1 and k % 3 == 0:
                continue  # some records lack this source
            route = [source, *rng.integers(0, T, size=2).tolist(), 7]
            heads = [None if h == 2 else int(h) for h in rng.integers(0, 3, size=3)]
            patterns.append(
                _pattern(source, route, [(h, 0.1) for h in heads], 1.0, 0.5, 0.4)
            )
        records.append(_record("t", "SS", 1.0, patterns, {"a": 1, "b": 2}))
    for record in records:
        for p in record["patterns"]:
            p["position_influence"] = [0.5] * 3
    result = layer_consistency(records, num_heads=2)
    expected_positions, expected_heads = [], []
    for layer in range(3):
        per_role_pos, per_role_node = [], []
        for source in (1, 2, 4):
            chosen = [
                p for r in records for p in r["patterns"] if p["source"] == source
            ]
            per_role_pos.append(
                normalized_entropy([p["positions"][layer + 1] for p in chosen], T)
            )
            per_role_node.append(
                normalized_entropy(
                    [_label(p["nodes"][layer]["head"]) for p in chosen],
                    3,
                )
            )
        expected_positions.append(np.mean(per_role_pos))
        expected_heads.append(np.mean(per_role_node))
    assert result["positions"] == pytest.approx(expected_positions)
    assert result["heads"] == pytest.approx(expected_heads)


# --------------------------------------------------- claim statistics (issue 21)
def test_skip_share_against_the_route_shape_by_hand():
    # Three layers. P1 leaves its source once (1 -> 4 at layer 2); P2 starts at the
    # output and never moves (a head at layer 2 keeps the position); P3 stays at its
    # source and jumps at the last layer.
    patterns = [
        _pattern(1, [1, 1, 4, 4], [(None, 1.0), (0, 1.0), (None, 1.0)], 1, 1, 1),
        _pattern(4, [4, 4, 4, 4], [(None, 1.0), (1, 1.0), (None, 1.0)], 1, 1, 1),
        _pattern(2, [2, 2, 2, 4], [(None, 1.0), (None, 1.0), (0, 1.0)], 1, 1, 1),
    ]
    result = skip_share([_record("t", "SS", 1.0, patterns, {})])
    assert result["layers"] == pytest.approx(6 / 9)
    # P1 and P3 must cross one layer by a head; P2 need not: 2 + 3 + 2 free layers.
    assert result["ceiling"] == pytest.approx(7 / 9)
    assert result["of_ceiling"] == pytest.approx(6 / 7)
    # layers that keep their position: P1 1 and 3, P2 all three, P3 1 and 2;
    # the skip takes all of them but P2's layer 2.
    assert result["stays"] == pytest.approx(6 / 7)
    assert result["single_move"] == pytest.approx(2 / 3)
    assert result["stay_then_jump"] == pytest.approx(1 / 3)


def _length_record(form, qoi, length, head):
    pattern = _pattern(1, [1, 1, length - 1], [(None, 1.0), (head, 1.0)], 1, 1, 1)
    record = _record("t", form, qoi, [pattern], {"subject": 1})
    record["input_ids"] = list(range(length))
    record["token_influence"] = record["token_influence"][:length]
    return record


def test_each_group_normalises_by_its_own_length():
    # Form A: 4 tokens, form B: 8 tokens; each group's consistency is that of its
    # records alone (K = its own length), not of the longest sentence overall.
    records = [
        _length_record("A", 1.0, 4, 0), _length_record("A", -1.0, 4, 1),
        _length_record("B", 1.0, 8, 0), _length_record("B", 1.0, 8, 0),
        _length_record("B", -1.0, 8, 1),
    ]
    points = consistency_accuracy(records)["points"]
    for point, form in zip(points, "AB"):
        alone = [r for r in records if r["form"] == form]
        assert point["consistency"] == layer_consistency(alone)["consistency"]
    # the node entropy over K = 3 (two heads and the skip), n = 2 -> log 2
    assert layer_consistency(records[:2])["heads"] == pytest.approx([0.0, 1.0])


def test_correlation_interval_resamples_groups_then_sentences():
    records = [
        _length_record(form, qoi, 8, head)
        for form, qoi, head in [
            ("A", 1.0, 0), ("A", 1.0, 0), ("B", 1.0, 0), ("B", -1.0, 1),
            ("C", -1.0, 0), ("C", -1.0, 1), ("D", 1.0, 1), ("D", -1.0, 0),
        ]
    ]
    result = intervals(records, n_resamples=300, seed=0)["correlation"]
    value = consistency_accuracy(records)["pearson"]
    assert result["pearson"]["value"] == pytest.approx(value)
    assert result["pearson"]["low"] <= value <= result["pearson"]["high"]
    assert set(result) == {"pearson", "spearman"} and "mean" in result["pearson"]
    assert result == intervals(records, n_resamples=300, seed=0)["correlation"]


def test_subject_split_by_the_readouts_training_nouns():
    from captum_influence_patterns.paper.agreement_tasks import nouns
    from captum_influence_patterns.models.embedded import READOUT_PATH

    trained, held = nouns("number", "train")[0][0], nouns("number", "test")[0][1]
    records = []
    for word, qoi in [(trained, 1.0), (trained, 1.0), (trained, -1.0), (held, -1.0),
                      (held, 1.0), ("zebra-not-a-noun", 1.0)]:
        record = _record("sva_pp", "SS", qoi, [], {})
        record["tokens"] = ["[CLS]", "the", word, "[MASK]"]
        record["roles"] = {"subject": 2}
        records.append(record)
    split = subject_split(records, n_resamples=200)
    assert split["training"]["n"] == 3 and split["held_out"]["n"] == 2
    assert split["training"]["accuracy"] == pytest.approx(2 / 3)
    assert split["held_out"]["accuracy"] == pytest.approx(0.5)
    assert split["difference"]["value"] == pytest.approx(0.5 - 2 / 3)
    assert subject_split([R1]) == {}  # no built-in task: nothing to split
    # The shipped readout was fitted on exactly these training nouns.
    with open(READOUT_PATH, encoding="utf-8") as handle:
        shipped = json.load(handle)["readouts"]
    for kind, entry in shipped.items():
        train, test = (
            [list(p) for p in nouns(kind, split)] for split in ("train", "test")
        )
        assert entry["metadata"]["train_nouns"] == train
        assert entry["metadata"]["test_nouns"] == test


def test_identical_routes_count_same_positions_and_nodes():
    record = json.loads(json.dumps(R1))
    same, other = record["patterns"]
    moved = json.loads(json.dumps(other))
    moved["nodes"][0]["kind"], moved["nodes"][0]["head"] = "head", 1
    record["routes"] = {"greedy": [same, moved], "rollout": [same]}
    result = identical_routes([record])
    assert result["guided"]["greedy"] == {"same": 1, "n": 2, "share": 0.5}
    assert result["guided"]["rollout"] == {"same": 1, "n": 1, "share": 1.0}
    assert result["greedy"]["rollout"]["same"] == 1


def test_sufficiency_mean_over_every_pattern():
    result = sufficiency([R1, R2])
    # I(e)/g: 0.5, 0.8, 0.5 (no g is zero)
    assert result["embedding_mean_all"] == pytest.approx((0.5 + 0.8 + 0.5) / 3)


def _opponent_entry(source, guided, sign, opponents, shortfall, by):
    return {
        "source": source, "sign": sign, "guided": guided, "share_beaten": 1.0,
        "n_random": 2, "random_best": 0.0, "gap": abs(guided),
        "opponents": {name: {"influence": v} for name, v in opponents.items()},
        "best_found_by": by, "shortfall": shortfall,
        "within_1pct": shortfall is not None and shortfall <= 0.01,
        "within_5pct": shortfall is not None and shortfall <= 0.05,
    }


def test_opponent_metrics_by_hand():
    one = _record("t1", "SS", 1.0, [], {})
    one["optimality"] = [
        # guided 1.0, the optimum 1.02: shortfall 0.02 / 1.02
        _opponent_entry(0, 1.0, 1, {"optimum": 1.02, "stay_then_jump": 0.5},
                        0.02 / 1.02, "optimum"),
        # negative route: sign -1, guided -2.0 is the best (opponents -1.0, -2.0)
        _opponent_entry(1, -2.0, -1, {"optimum": -2.0, "stay_then_jump": -1.0},
                        0.0, "guided"),
    ]
    two = _record("t1", "SP", 1.0, [], {})
    two["optimality"] = [
        _opponent_entry(0, 1.0, 1, {"optimum": 2.0, "stay_then_jump": 2.0}, 0.5,
                        "optimum"),
    ]
    result = opponent_metrics([one, two])
    assert result["n"] == 3
    assert result["within_1pct"] == pytest.approx(1 / 3)
    assert result["within_5pct"] == pytest.approx(2 / 3)
    assert result["shortfall_median"] == pytest.approx(0.02 / 1.02)
    assert result["best_found_by"] == {"guided": 1 / 3, "optimum": 2 / 3}
    stay = result["opponents"]["stay_then_jump"]
    # guided at least as good: 1.0 >= 0.5, 2.0 >= 1.0, not 1.0 >= 2.0
    assert stay["at_least"] == pytest.approx(2 / 3)
    assert stay["ratio_median"] == pytest.approx(0.5)  # 0.5, 0.5, 2.0
    assert result["opponents"]["optimum"]["at_least"] == pytest.approx(1 / 3)
    boot = intervals([one, two], n_resamples=200)["opponents"]
    assert boot["within_5pct"]["value"] == pytest.approx(2 / 3)
    # resampling the two sentences: 0 (two twice), 2/3, or 1 (one twice)
    assert boot["within_5pct"]["low"] == 0.0 and boot["within_5pct"]["high"] == 1.0
    assert opponent_metrics([R1]) == {"n": 0}
