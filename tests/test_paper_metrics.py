"""Metrics on hand-made result sets whose answers are worked out by hand below."""

from __future__ import annotations

import json

import pytest

from captum_influence_patterns.paper.metrics import (
    ablation_metrics,
    accuracy,
    identical_routes,
    role_influence,
    skip_share,
    subject_split,
    sufficiency,
)
from captum_influence_patterns.testing.records import (
    RECORD_1,
    RECORD_2,
    ROLES,
    record_dict,
    route_dict,
)


def test_accuracy_and_role_influence():
    assert accuracy([RECORD_1, RECORD_2]) == 0.5
    assert accuracy([RECORD_1, RECORD_2, record_dict("t1", "PP", 0.5, [], {})]) == pytest.approx(2 / 3)
    # subject: g = 2.0 and 1.0; attractor: -1.0
    assert role_influence([RECORD_1, RECORD_2]) == {"subject": 1.5, "attractor": -1.0}


def test_sufficiency_ratio_of_sums_median_and_mean():
    # I(e)/g: 1/2, 0.8, 0.5; I(a)/g: 0.25, 0.2, 0.3
    result = sufficiency([RECORD_1, RECORD_2])
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
    tiny = record_dict(
        "t1",
        "SS",
        1.0,
        [
            route_dict(2, [2, 2, 7], [(None, 0.4), (None, 0.4)], g=1.0, e=0.5, a=0.4),
            route_dict(5, [5, 5, 7], [(None, 0.5), (None, 0.5)], g=0.005, e=0.5, a=0.5),
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
    zero_g = record_dict(
        "t1",
        "SS",
        1.0,
        [route_dict(2, [2, 2, 7], [(None, 0.0), (None, 0.0)], g=0.0, e=0.0, a=0.0)],
        ROLES,
    )
    both = sufficiency([RECORD_1, zero_g])
    assert both["embedding_mean"] == pytest.approx(0.65) and both["near_zero"] == 1


def test_skip_share():
    result = skip_share([RECORD_1, RECORD_2])
    # nodes: skip, head | skip, skip | head, head -> 3 of 6 layers
    assert result["layers"] == pytest.approx(0.5)
    # |influence| on skips: 0.9 + 0.6 + 0.2 = 1.7; all: 1.7 + 0.5 + 0.4 + 0.3 = 2.9
    assert result["weighted"] == pytest.approx(1.7 / 2.9)
    # candidates (RECORD_1 only): skips 0.7 + 0 + 0.6 + 0.2 = 1.5; all |.|: 1.0 + 0.5 + 0.7
    # + 0.6 = 2.8
    assert result["flow"] == pytest.approx(1.5 / 2.8)


def _ablated(nothing, keep):
    return {
        "mean": {
            "nothing": nothing,
            "guided": {"union": {"keep": keep, "remove": nothing}},
        }
    }


def test_ablation_metrics_by_hand():
    records = [
        record_dict("t1", "SS", 2.0, [], {}, _ablated(0.5, 1.5)),
        record_dict("t1", "SP", 1.0, [], {}, _ablated(-0.2, 0.25)),
        record_dict("t1", "PS", 1.0, [], {}),  # not ablated: left out
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


# ------------------------------------------------------------------ every token


# ----------------------------------------------------------------- route records


# -------------------------------------------------------------------- optimality


# ------------------------------------------------------------------- the report


# --------------------------------------------------- claim statistics (issue 21)


def test_skip_share_against_the_route_shape_by_hand():
    # Three layers. P1 leaves its source once (1 -> 4 at layer 2); P2 starts at the
    # output and never moves (a head at layer 2 keeps the position); P3 stays at its
    # source and jumps at the last layer.
    patterns = [
        route_dict(1, [1, 1, 4, 4], [(None, 1.0), (0, 1.0), (None, 1.0)], 1, 1, 1),
        route_dict(4, [4, 4, 4, 4], [(None, 1.0), (1, 1.0), (None, 1.0)], 1, 1, 1),
        route_dict(2, [2, 2, 2, 4], [(None, 1.0), (None, 1.0), (0, 1.0)], 1, 1, 1),
    ]
    result = skip_share([record_dict("t", "SS", 1.0, patterns, {})])
    assert result["layers"] == pytest.approx(6 / 9)
    # P1 and P3 must cross one layer by a head; P2 need not: 2 + 3 + 2 free layers.
    assert result["ceiling"] == pytest.approx(7 / 9)
    assert result["of_ceiling"] == pytest.approx(6 / 7)
    # layers that keep their position: P1 1 and 3, P2 all three, P3 1 and 2;
    # the skip takes all of them but P2's layer 2.
    assert result["stays"] == pytest.approx(6 / 7)
    assert result["single_move"] == pytest.approx(2 / 3)
    assert result["stay_then_jump"] == pytest.approx(1 / 3)


def test_subject_split_by_the_readouts_training_nouns():
    from captum_influence_patterns.paper.agreement_tasks import nouns
    from captum_influence_patterns.models.embedded import READOUT_PATH

    trained, held = nouns("number", "train")[0][0], nouns("number", "test")[0][1]
    records = []
    for word, qoi in [(trained, 1.0), (trained, 1.0), (trained, -1.0), (held, -1.0),
                      (held, 1.0), ("zebra-not-a-noun", 1.0)]:
        record = record_dict("sva_pp", "SS", qoi, [], {})
        record["tokens"] = ["[CLS]", "the", word, "[MASK]"]
        record["roles"] = {"subject": 2}
        records.append(record)
    split = subject_split(records, n_resamples=200)
    assert split["training"]["n"] == 3 and split["held_out"]["n"] == 2
    assert split["training"]["accuracy"] == pytest.approx(2 / 3)
    assert split["held_out"]["accuracy"] == pytest.approx(0.5)
    assert split["difference"]["value"] == pytest.approx(0.5 - 2 / 3)
    assert subject_split([RECORD_1]) == {}  # no built-in task: nothing to split
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
    record = json.loads(json.dumps(RECORD_1))
    same, other = record["patterns"]
    moved = json.loads(json.dumps(other))
    moved["nodes"][0]["kind"], moved["nodes"][0]["head"] = "head", 1
    record["routes"] = {"greedy": [same, moved], "rollout": [same]}
    result = identical_routes([record])
    assert result["guided"]["greedy"] == {"same": 1, "n": 2, "share": 0.5}
    assert result["guided"]["rollout"] == {"same": 1, "n": 1, "share": 1.0}
    assert result["greedy"]["rollout"]["same"] == 1


def test_sufficiency_mean_over_every_pattern():
    result = sufficiency([RECORD_1, RECORD_2])
    # I(e)/g: 0.5, 0.8, 0.5 (no g is zero)
    assert result["embedding_mean_all"] == pytest.approx((0.5 + 0.8 + 0.5) / 3)


