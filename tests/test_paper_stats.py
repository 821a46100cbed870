"""The resampling statistics (paper/stats.py) against worked answers, brute force,
the normal interval of a mean and scipy."""

import itertools
import math

import numpy as np
import pytest

from captum_influence_patterns.paper.stats import (
    bootstrap,
    correlation,
    finite_mean,
    finite_median,
    group_bootstrap,
    permutation_test,
    ranks,
    wilcoxon_signed_rank,
)


def test_finite_mean_and_median_leave_out_none_and_nan():
    assert finite_mean([1.0, None, math.nan, 3.0]) == 2.0
    assert finite_median([5.0, None, 1.0, math.nan, 2.0]) == 2.0
    assert math.isnan(finite_mean([None, math.nan]))
    assert math.isnan(finite_median([]))


def test_ranks_share_ties():
    assert ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_correlation_by_hand():
    # x = 1..4, y = 2, 4, 6, 9: sum dx dy = 11.5, sum dx^2 = 5, sum dy^2 = 26.75
    result = correlation([1, 2, 3, 4], [2, 4, 6, 9])
    assert result["pearson"] == pytest.approx(11.5 / math.sqrt(5 * 26.75))
    assert result["spearman"] == pytest.approx(1.0)
    assert result["n"] == 4
    # ties: ranks (1.5, 1.5, 3) against (1, 2, 3) -> 1.5 / sqrt(1.5 * 2)
    assert correlation([1, 1, 2], [1, 2, 3])["spearman"] == pytest.approx(
        1.5 / math.sqrt(3)
    )
    assert math.isnan(correlation([1, 2], [3, 4])["pearson"])
    assert correlation([1, 2, float("nan"), 3], [1, 2, 3, 4])["n"] == 3


def test_bootstrap_matches_the_normal_interval_of_a_mean():
    rng = np.random.default_rng(1)
    data = list(rng.normal(3.0, 2.0, size=400))
    result = bootstrap(data, lambda u: {"mean": float(np.mean(u))}, 2000, seed=0)
    half = 1.96 * np.std(data) / math.sqrt(len(data))  # about 0.196
    entry = result["mean"]
    assert entry["value"] == pytest.approx(np.mean(data))
    assert entry["low"] == pytest.approx(entry["value"] - half, abs=0.03)
    assert entry["high"] == pytest.approx(entry["value"] + half, abs=0.03)
    again = bootstrap(data, lambda u: {"mean": float(np.mean(u))}, 2000, seed=0)
    assert again == result  # fixed seed: the same interval


def test_bootstrap_strata_keep_groups_fixed():
    units, strata = [0.0, 0.0, 1.0, 1.0], ["a", "a", "b", "b"]
    mean = lambda u: {"mean": float(np.mean(u))}  # noqa: E731
    fixed = bootstrap(units, mean, 200, strata=strata)["mean"]
    assert fixed["low"] == fixed["high"] == 0.5
    free = bootstrap(units, mean, 200)["mean"]
    assert free["low"] < 0.5 < free["high"]
    constant = bootstrap([2.0] * 5, mean, 50)["mean"]
    assert constant["low"] == constant["high"] == 2.0


def test_group_bootstrap_resamples_groups_then_their_units():
    # three groups of sizes 2, 3, 1: a draw holds three groups and each drawn group's
    # own number of units, its indices within the group
    seen = []

    def statistic(picks):
        seen.append([(g, len(index), int(index.max())) for g, index in picks])
        return {"units": float(sum(len(index) for _, index in picks))}

    sizes = [2, 3, 1]
    result = group_bootstrap(sizes, statistic, n_resamples=50, seed=0)
    assert seen[0] == [(0, 2, 1), (1, 3, 2), (2, 1, 0)]  # the value: everything
    for draw in seen[1:]:
        assert len(draw) == 3
        assert all(n == sizes[g] and top < sizes[g] for g, n, top in draw)
    entry = result["units"]
    assert entry["value"] == 6.0 and entry["resamples"] == 50
    assert entry["mean"] == pytest.approx(np.mean([sum(n for _, n, _ in d)
                                                   for d in seen[1:]]))
    assert 3.0 <= entry["low"] <= entry["high"] <= 9.0
    assert group_bootstrap(sizes, statistic, n_resamples=50, seed=0) == result


def test_permutation_test_matches_every_pairing():
    x = [0.1, 0.4, 0.2, 0.9, 0.5]
    y = [1.0, 2.5, 0.5, 3.0, 2.0]
    observed = correlation(x, y)
    # Brute force: all 120 pairings of y with x.
    pairings = list(itertools.permutations(y))
    for name in ("pearson", "spearman"):
        hits = sum(
            correlation(x, list(p))[name] >= observed[name] - 1e-12 for p in pairings
        )
        exact = hits / len(pairings)
        result = permutation_test(x, y, n_permutations=20000, seed=3)
        assert result[f"{name}_p"] == pytest.approx(exact, abs=0.01)
    assert math.isnan(permutation_test([1, 2], [1, 2])["pearson_p"])
    assert math.isnan(permutation_test([1, 1, 1], [1, 2, 3])["pearson_p"])


def test_wilcoxon_by_hand():
    # |d| ranks: 1 -> 1, 2 -> 2.5 (tie), 2 -> 2.5, 4 -> 4; zeros dropped;
    # W+ = 1 + 2.5 + 4
    d = [1.0, -2.0, 2.0, 4.0, 0.0]
    result = wilcoxon_signed_rank(d)
    assert result["n"] == 4 and result["w_plus"] == pytest.approx(7.5)
    # mean 5, variance 4*5*9/24 - (8 - 2)/48 = 7.5 - 0.125
    z = (7.5 - 5) / math.sqrt(7.375)
    assert result["z"] == pytest.approx(z)
    assert result["p"] == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert math.isnan(wilcoxon_signed_rank([0.0, 1.0])["p"])


def test_wilcoxon_equals_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    d = np.round(rng.normal(0.1, 1.0, 80), 1)  # ties and zeros
    ours = wilcoxon_signed_rank(d.tolist())
    theirs = stats.wilcoxon(d, method="approx")
    assert ours["p"] == pytest.approx(theirs.pvalue, rel=1e-9)
