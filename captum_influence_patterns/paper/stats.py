"""Resampling statistics of the paper's harness (numpy only): percentile bootstrap
intervals (one-stage, stratified, or two-stage over groups and their units), a
one-sided permutation test of a positive correlation, Pearson and Spearman
correlations and the Wilcoxon signed-rank test.

Nothing here knows what a record is: :mod:`.metrics` turns records into the units and
statistics these functions resample. Every resampling draws from
``numpy.random.default_rng(seed)``, so a summary is the same on every run.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional
from typing import Sequence, Tuple

import numpy as np

#: Bootstrap resamples and seed of a summary.
RESAMPLES = 1000
SEED = 0
#: Confidence level of the bootstrap intervals.
LEVEL = 0.95
#: Random pairings of the permutation test of a correlation.
PERMUTATIONS = 10000

Statistic = Dict[str, float]


def is_finite(value: Any) -> bool:
    """Whether ``value`` is an int or float and finite (None and nan are not)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def finite_mean(values: Iterable[Optional[float]]) -> float:
    """Mean of the finite values (None and nan left out); nan when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def finite_median(values: Iterable[Optional[float]]) -> float:
    """Median of the finite values (None and nan left out); nan when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; nan when the denominator is 0."""
    return numerator / denominator if denominator != 0 else math.nan


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    array = np.asarray(values, dtype=float)
    order = np.argsort(array, kind="mergesort")
    out = np.empty(len(array))
    sorted_values = array[order]
    start = 0
    while start < len(array):
        end = start
        while end + 1 < len(array) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        out[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return out


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two arrays; nan when a side is constant."""
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    return float((dx * dy).sum()) / denominator if denominator > 0 else math.nan


def _finite_pairs(
    xs: Sequence[float], ys: Sequence[float]
) -> Tuple[np.ndarray, np.ndarray]:
    pairs = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def correlation(xs: Sequence[float], ys: Sequence[float]) -> Dict[str, float]:
    """Pearson and Spearman correlation of paired values (nan pairs dropped).

    Returns:
        dict: ``pearson``, ``spearman`` (nan when n < 3 or a side is constant) and
        ``n``.
    """
    x, y = _finite_pairs(xs, ys)
    if len(x) < 3:
        return {"pearson": math.nan, "spearman": math.nan, "n": len(x)}
    return {
        "pearson": pearson(x, y),
        "spearman": pearson(ranks(x), ranks(y)),
        "n": len(x),
    }


def resampled_intervals(
    value: Statistic,
    draw: Callable[[np.random.Generator], Statistic],
    n_resamples: int,
    seed: int = SEED,
    level: float = LEVEL,
    with_mean: bool = False,
) -> Dict[str, Dict[str, float]]:
    """Percentile intervals of ``value``'s statistics over ``n_resamples`` draws.

    Args:
        value (dict): ``{name: value}`` on the data itself.
        draw (callable): A generator -> the statistics of one resample.
        n_resamples (int): Draws (0 for none: the intervals are nan).
        seed (int, optional): Seed of ``numpy.random.default_rng``. Default:
            :data:`SEED`
        level (float, optional): Coverage. Default: :data:`LEVEL`
        with_mean (bool, optional): Add each statistic's mean over the draws.
            Default: False

    Returns:
        dict: per name, ``value``, ``low`` and ``high`` (nan when fewer than 2 draws
        give a finite value), ``resamples`` (how many did) and, ``with_mean``,
        ``mean``.
    """
    rng = np.random.default_rng(seed)
    draws: Dict[str, List[float]] = {name: [] for name in value}
    for _ in range(n_resamples):
        for name, v in draw(rng).items():
            if name in draws and v is not None and math.isfinite(v):
                draws[name].append(v)
    tail = (1 - level) / 2 * 100
    out = {}
    for name, v in value.items():
        values = draws[name]
        low, high = (
            np.percentile(values, [tail, 100 - tail]).tolist()
            if len(values) >= 2
            else (math.nan, math.nan)
        )
        out[name] = {"value": v, "low": low, "high": high, "resamples": len(values)}
        if with_mean:
            out[name]["mean"] = finite_mean(values)
    return out


def bootstrap(
    units: Sequence[Any],
    statistic: Callable[[List[Any]], Statistic],
    n_resamples: int = RESAMPLES,
    seed: int = SEED,
    strata: Optional[Sequence[Hashable]] = None,
    level: float = LEVEL,
) -> Dict[str, Dict[str, float]]:
    """Percentile bootstrap intervals of the values ``statistic`` returns.

    Resamples ``units`` (one per sentence) with replacement, ``n_resamples`` times,
    with ``numpy.random.default_rng(seed)``; with ``strata``, within each stratum
    (its size kept), so fixed groups stay in every resample.

    Args:
        units (sequence): One unit per sentence (a record, or what the statistic
            needs of it).
        statistic (callable): Units -> ``{name: value}``.
        n_resamples (int, optional): Resamples. Default: :data:`RESAMPLES`
        seed (int, optional): Seed. Default: :data:`SEED`
        strata (sequence, optional): Per unit, its stratum. Default: None
        level (float, optional): Coverage. Default: :data:`LEVEL`

    Returns:
        dict: per name, ``value`` (on all units), ``low`` and ``high`` (nan when
        fewer than 2 resamples give a finite value) and ``resamples`` (how many did).
    """
    groups: Dict[Hashable, List[int]] = {}
    for k, stratum in enumerate(strata if strata is not None else [0] * len(units)):
        groups.setdefault(stratum, []).append(k)

    def draw(rng: np.random.Generator) -> Statistic:
        return statistic([
            units[int(i)]
            for members in groups.values()
            for i in rng.choice(members, size=len(members))
        ])

    value = statistic(list(units))
    return resampled_intervals(value, draw, n_resamples if units else 0, seed, level)


def group_bootstrap(
    sizes: Sequence[int],
    statistic: Callable[[List[Tuple[int, np.ndarray]]], Statistic],
    n_resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Dict[str, Dict[str, float]]:
    """Percentile bootstrap intervals resampling at both levels of grouped data: the
    groups with replacement, then the units of every drawn group with replacement (a
    group drawn twice counts twice).

    Resampling units biases statistics that reward agreement within a group
    (repeated units agree with themselves); the ``mean`` of the resamples shows that
    bias beside the interval.

    Args:
        sizes (sequence of int): Units per group.
        statistic (callable): ``[(group, unit indices in the group)]`` ->
            ``{name: value}``; called with every group and all its units for the
            value.
        n_resamples (int, optional): Resamples. Default: :data:`RESAMPLES`
        seed (int, optional): Seed. Default: :data:`SEED`
        level (float, optional): Coverage. Default: :data:`LEVEL`

    Returns:
        dict: per name, ``value``, ``low``, ``high``, ``resamples`` and ``mean``.
    """

    def draw(rng: np.random.Generator) -> Statistic:
        groups = rng.choice(len(sizes), size=len(sizes))
        return statistic([(int(g), rng.choice(sizes[g], sizes[g])) for g in groups])

    value = statistic([(g, np.arange(n)) for g, n in enumerate(sizes)])
    return resampled_intervals(
        value, draw, n_resamples if len(sizes) else 0, seed, level, with_mean=True
    )


def permutation_test(
    xs: Sequence[float],
    ys: Sequence[float],
    n_permutations: int = PERMUTATIONS,
    seed: int = SEED,
) -> Dict[str, float]:
    """One-sided permutation test of a positive correlation: how often pairing the
    ``ys`` with the ``xs`` at random gives a correlation at least the observed one.

    Returns:
        dict: ``pearson_p`` and ``spearman_p``, ``(1 + hits) / (1 + n_permutations)``
        (nan when the correlation is undefined), and ``n_permutations``.
    """
    x, y = _finite_pairs(xs, ys)
    out: Dict[str, float] = {"n_permutations": n_permutations}
    if len(x) < 3:
        return {**out, "pearson_p": math.nan, "spearman_p": math.nan}
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((n_permutations, len(y))), axis=1)
    for name, (a, b) in (("pearson", (x, y)), ("spearman", (ranks(x), ranks(y)))):
        observed = pearson(a, b)
        da, db = a - a.mean(), b - b.mean()
        scale = math.sqrt(float((da * da).sum() * (db * db).sum()))
        if not math.isfinite(observed) or scale == 0:
            out[f"{name}_p"] = math.nan
            continue
        shuffled = (db[order] * da).sum(1) / scale
        hits = int((shuffled >= observed - 1e-12).sum())
        out[f"{name}_p"] = (1 + hits) / (1 + n_permutations)
    return out


def wilcoxon_signed_rank(differences: Sequence[float]) -> Dict[str, float]:
    """Two-sided Wilcoxon signed-rank test of paired differences (numpy only).

    Zero differences are dropped (Wilcoxon's rule); ties share their average rank
    and the variance is corrected for them; the p-value is the normal approximation
    without continuity correction (``scipy.stats.wilcoxon(d, method="approx")``).

    Returns:
        dict: ``n`` (non-zero differences), ``w_plus`` (rank sum of the positive
        ones), ``z`` and ``p`` (nan with fewer than 2 non-zero differences).
    """
    d = np.array([v for v in differences if is_finite(v) and v != 0], dtype=float)
    n = len(d)
    if n < 2:
        return {"n": n, "w_plus": math.nan, "z": math.nan, "p": math.nan}
    rank = ranks(np.abs(d))
    w_plus = float(rank[d > 0].sum())
    _, ties = np.unique(np.abs(d), return_counts=True)
    variance = n * (n + 1) * (2 * n + 1) / 24 - float((ties**3 - ties).sum()) / 48
    z = (w_plus - n * (n + 1) / 4) / math.sqrt(variance)
    return {"n": n, "w_plus": w_plus, "z": z, "p": math.erfc(abs(z) / math.sqrt(2))}
