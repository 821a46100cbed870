"""The summary of an evaluation: every metric per task and pooled, the
consistency/accuracy correlations, and the bootstrap intervals and tests that decide
the claims (docs/method.md, section 9), as one JSON-safe dict (:func:`summarize`)."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..utils.files import json_safe
from ..routes.optimality_records import WITHIN
from .consistency import (
    consistency_accuracy,
    consistency_by_prediction,
    correlation_intervals,
    layer_consistency,
)
from .metrics import (
    Record,
    ablation_metrics,
    accuracy,
    completeness,
    group_records,
    identical_routes,
    role_influence,
    route_names,
    skip_null,
    skip_ratios,
    skip_share,
    skip_sums,
    subject_split,
    sufficiency,
)
from .optimality_metrics import (
    opponent_metrics,
    optimality_entries,
    optimality_metrics,
    optimum_sweep,
)
from .stats import LEVEL, RESAMPLES, SEED, bootstrap, finite_mean, finite_median
from .stats import is_finite, ratio, wilcoxon_signed_rank


def _union_keep(record: Record, reference: str = "mean") -> Dict[str, Tuple]:
    """Per method: (kept QoI - reference QoI, QoI - reference QoI) for keeping only
    the union of its routes."""
    entry = (record.get("ablation") or {}).get(reference) or {}
    nothing = entry.get("nothing")
    out = {}
    for method, sets in entry.items():
        value = (sets.get("union") or {}).get("keep") if method != "nothing" else None
        if is_finite(value) and is_finite(nothing):
            out[method] = (value - nothing, record["qoi"] - nothing)
    return out


def _ablation_margin(units: List[Dict[str, Tuple]]) -> Dict[str, float]:
    """Guided retained share, and its margin over the best reference route."""
    methods = set.intersection(*(set(u) for u in units)) if units else set()
    retained = {
        m: ratio(sum(u[m][0] for u in units), sum(u[m][1] for u in units))
        for m in methods
    }
    others = [v for m, v in retained.items() if m != "guided"]
    guided = retained.get("guided", math.nan)
    margin = guided - max(others) if others else math.nan
    return {"guided": guided, "margin": margin}


def intervals(
    records: Sequence[Record], n_resamples: int = RESAMPLES, seed: int = SEED
) -> Dict[str, Any]:
    """Bootstrap 95% intervals of every claim's statistic (resampling sentences).

    Returns:
        dict: ``skip_share`` (``layers``, ``weighted``, ``flow``), ``correlation``
        (``pearson``, ``spearman`` across task x form groups; groups, then their
        sentences, resampled: :func:`~.stats.group_bootstrap`), ``ablation`` (``guided``: QoI
        share retained keeping the guided routes' union, mean reference; ``margin``:
        that minus the best reference route's), ``ablation_zero`` (the same with the
        zero reference), ``optimality`` (``share_beaten``), ``opponents``
        (``within_1pct``, ``within_5pct``, ``shortfall_median`` against the best
        route found), and the ``settings``.
    """
    skip = [skip_sums(r) for r in records]
    out: Dict[str, Any] = {
        "settings": {"n_resamples": n_resamples, "seed": seed, "level": LEVEL},
        "skip_share": bootstrap(
            skip, lambda u: skip_ratios(sum(u, np.zeros(12))), n_resamples, seed
        ),
    }
    if records:
        out["correlation"] = correlation_intervals(records, n_resamples, seed)
    for name, reference in (("ablation", "mean"), ("ablation_zero", "zero")):
        ablated = [_union_keep(r, reference) for r in records if r.get("ablation")]
        if any(ablated):
            out[name] = bootstrap(ablated, _ablation_margin, n_resamples, seed)
    beats = [
        np.array([sum(b), len(b)])
        for b in (
            [
                e["share_beaten"]
                for e in optimality_entries(r)
                if is_finite(e.get("share_beaten"))
            ]
            for r in records
        )
        if b
    ]
    if beats:
        out["optimality"] = bootstrap(
            beats,
            lambda u: {"share_beaten": ratio(*sum(u, np.zeros(2)))},
            n_resamples,
            seed,
        )
    shortfalls = [
        [e["shortfall"] for e in optimality_entries(r) if "shortfall" in e]
        for r in records
    ]
    shortfalls = [row for row in shortfalls if row]
    if shortfalls:
        out["opponents"] = bootstrap(shortfalls, _shortfall_stats, n_resamples, seed)
    return out


#: Sentences per sequential look of claim 3 (the interleaved items of the run cover
#: the tasks evenly at every multiple of it).
LOOK_STEP = 60


def _best_reference(units: List[Dict[str, Tuple]]) -> Optional[str]:
    """The reference route whose union retains most (ratio of sums) over ``units``."""
    methods = set.intersection(*(set(u) for u in units)) - {"guided"} if units else set()
    retained = {
        m: ratio(sum(u[m][0] for u in units), sum(u[m][1] for u in units))
        for m in methods
    }
    finite = [(v, m) for m, v in retained.items() if math.isfinite(v)]
    return max(finite)[1] if finite else None


def paired_comparison(
    units: List[Dict[str, Tuple]], other: Optional[str] = None
) -> Dict[str, Any]:
    """Guided union against one reference route's union, sentence by sentence.

    The difference of a sentence is ``QoI_kept(guided) - QoI_kept(other)`` (QoI units;
    the reference QoI cancels), defined for every sentence.

    Args:
        units (list): Per sentence, :func:`_union_keep`.
        other (str, optional): The reference route. Default: the best one
            (:func:`_best_reference`).

    Returns:
        dict: ``route``, ``n`` sentences, ``wins`` (share where the guided union
        keeps more), ``median_difference`` and ``wilcoxon`` (two-sided,
        :func:`~.stats.wilcoxon_signed_rank`); ``{"n": 0}`` without the two routes.
    """
    other = other or _best_reference(units)
    pairs = [u for u in units if "guided" in u and other in u]
    if other is None or not pairs:
        return {"n": 0}
    d = [u["guided"][0] - u[other][0] for u in pairs]
    return {
        "route": other,
        "n": len(d),
        "wins": finite_mean(1.0 if v > 0 else 0.0 for v in d),
        "median_difference": finite_median(d),
        "wilcoxon": wilcoxon_signed_rank(d),
    }


def _union_errors(record: Record, reference: str) -> Dict[str, float]:
    """Per method: ``|QoI_kept - QoI|`` for keeping only the union of its routes, and
    ``"_scale"``: ``|QoI|``."""
    entry = (record.get("ablation") or {}).get(reference) or {}
    out = {"_scale": abs(record["qoi"])}
    for method, sets in entry.items():
        value = (sets.get("union") or {}).get("keep") if method != "nothing" else None
        if is_finite(value):
            out[method] = abs(value - record["qoi"])
    return out


def _closeness(units: List[Dict[str, float]]) -> Dict[str, float]:
    """How close the kept QoI stays to the QoI, as a share of the mean ``|QoI|``:
    ``guided`` (its mean error), ``best`` (the reference route with the smallest) and
    ``margin`` (best minus guided: > 0 when the guided union stays closer)."""
    methods = set.intersection(*(set(u) for u in units)) - {"_scale"} if units else set()
    scale = finite_mean(u["_scale"] for u in units)
    error = {m: ratio(finite_mean(u[m] for u in units), scale) for m in methods}
    others = [v for m, v in error.items() if m != "guided" and math.isfinite(v)]
    guided = error.get("guided", math.nan)
    best = min(others) if others else math.nan
    return {"guided": guided, "best": best, "margin": best - guided}


def ablation_test(
    records: Sequence[Record],
    n_resamples: int = RESAMPLES,
    seed: int = SEED,
    step: Optional[int] = LOOK_STEP,
) -> Dict[str, Any]:
    """Claim 3's statistics beyond the margin: the paired per-sentence test, the
    closeness of the kept QoI to the QoI (defined for every sentence), and the
    margin at every sequential look.

    Args:
        records (sequence of dict): Evaluation records.
        n_resamples (int, optional): Bootstrap resamples.
            Default: :data:`~.stats.RESAMPLES`
        seed (int, optional): Bootstrap seed. Default: :data:`~.stats.SEED`
        step (int or None, optional): Sentences per sequential look; None for a run
            whose sample size and stopping rule were fixed in advance, looked at
            once (no looks, no adjusted interval). Default: :data:`LOOK_STEP`

    Returns:
        dict (empty without ablation records): per reference (``mean``, ``zero``),
        ``nonpositive_change`` (share of sentences whose QoI does not drop when
        every node is replaced: the retained share's denominator is <= 0 there),
        ``paired`` (:func:`paired_comparison` against the best reference route),
        ``closeness`` (bootstrap intervals of :func:`_closeness`) and
        ``closeness_route`` (the reference route that stays closest); ``looks``:
        for every prefix of ``step``, ``2 step``, ... sentences in the records'
        ``index`` order (the order they were run in), ``n``, ``margin`` (bootstrap
        interval of the mean-reference margin), ``paired``; ``adjusted``: the last
        look's margin at the level that splits 1 - :data:`~.stats.LEVEL` over every look
        (Bonferroni), with that ``level``; ``one_look``: True (only when ``step`` is
        None).
    """
    ablated = sorted(
        (r for r in records if r.get("ablation")),
        key=lambda r: (r.get("index") is None, r.get("index") or 0),
    )
    if not ablated:
        return {}
    out: Dict[str, Any] = {}
    for reference in ("mean", "zero"):
        units = [_union_keep(r, reference) for r in ablated]
        if not any(units):
            continue
        errors = [_union_errors(r, reference) for r in ablated]
        closest = _closeness(errors)
        methods = set.intersection(*(set(u) for u in errors)) - {"_scale", "guided"}
        scale = finite_mean(u["_scale"] for u in errors)
        route = min(
            methods, key=lambda m: finite_mean(u[m] for u in errors) / scale, default=None
        ) if math.isfinite(closest["best"]) else None
        out[reference] = {
            # the retained share's denominator, QoI - QoI_ref, per sentence
            "nonpositive_change": finite_mean(
                1.0 if next(iter(u.values()))[1] <= 0 else 0.0 for u in units if u
            ),
            "paired": paired_comparison(units),
            "closeness": bootstrap(errors, _closeness, n_resamples, seed),
            "closeness_route": route,
        }
    if step is None:
        return {**out, "looks": [], "one_look": True}
    units = [_union_keep(r, "mean") for r in ablated]
    looks = []
    for n in range(step, len(units) + 1, step):
        looks.append({
            "n": n,
            "margin": bootstrap(units[:n], _ablation_margin, n_resamples, seed)["margin"],
            "paired": paired_comparison(units[:n]),
        })
    out["looks"] = looks
    if looks:
        level = 1 - (1 - LEVEL) / len(looks)
        out["adjusted"] = {
            "level": level,
            "looks": len(looks),
            "margin": bootstrap(units, _ablation_margin, n_resamples, seed,
                                level=level)["margin"],
        }
    return out


def _shortfall_stats(units: List[List[Optional[float]]]) -> Dict[str, float]:
    """Shares within 1% / 5% of the best route found, and the median shortfall, of
    the sources of some sentences (an undefined shortfall counts as not within)."""
    values = [v for row in units for v in row]
    out = {
        name: finite_mean(1.0 if is_finite(v) and v <= bound else 0.0 for v in values)
        for name, bound in WITHIN.items()
    }
    out["shortfall_median"] = finite_median(v for v in values if is_finite(v))
    return out


def task_metrics(records: Sequence[Record]) -> Dict[str, Any]:
    """Every metric of one group of records (e.g. one task)."""
    methods = route_names(records)
    return {
        "n": len(records),
        "accuracy": accuracy(records),
        "mean_qoi": finite_mean(r["qoi"] for r in records),
        "sources_per_example": finite_mean(len(r["sources"]) for r in records),
        "role_influence": role_influence(records),
        "sufficiency": sufficiency(records),
        "route_sufficiency": {m: sufficiency(records, m) for m in methods},
        "skip_share": skip_share(records),
        "route_skip_share": {m: skip_share(records, m)["layers"] for m in methods},
        "consistency": layer_consistency(records),
        "consistency_by_prediction": consistency_by_prediction(records),
        "ablation": ablation_metrics(records),
        "optimality": optimality_metrics(records),
        "opponents": opponent_metrics(records),
        "completeness": completeness(records),
    }


def summarize(
    records: Sequence[Record],
    n_resamples: int = RESAMPLES,
    seed: int = SEED,
    one_look: bool = False,
) -> Dict[str, Any]:
    """Per-task metrics, the pooled metrics, the consistency/accuracy correlations and
    the bootstrap intervals of the claims.

    Args:
        records (sequence of dict): Evaluation records.
        n_resamples (int, optional): Bootstrap resamples. Default: :data:`~.stats.RESAMPLES`
        seed (int, optional): Bootstrap seed. Default: :data:`~.stats.SEED`
        one_look (bool, optional): The records come from a run with its sample size
            and stopping rule fixed in advance, looked at once: claim 3 gets no
            sequential looks (:func:`ablation_test`). Default: False

    Returns:
        dict (JSON-safe: non-finite floats become None): ``n_per_task`` (``min``
        and ``max`` sentences per task), ``tasks`` (task -> metrics),
        ``overall`` (all records), ``correlation`` (``task_form`` and ``task``, see
        :func:`consistency_accuracy`) and ``intervals`` (:func:`intervals`).
    """
    tasks = group_records(records, "task")
    sizes = [len(rows) for rows in tasks.values()]
    return json_safe(
        {
            "n_per_task": {"min": min(sizes, default=0), "max": max(sizes, default=0)},
            "tasks": {task: task_metrics(rows) for task, rows in tasks.items()},
            "overall": task_metrics(records),
            "correlation": {
                "task_form": consistency_accuracy(records, ("task", "form")),
                "task": consistency_accuracy(records, ("task",)),
            },
            "intervals": intervals(records, n_resamples, seed),
            "ablation_test": ablation_test(
                records, n_resamples, seed, None if one_look else LOOK_STEP
            ),
            "skip_null": skip_null(records, n_resamples, seed),
            "optimum_sweep": optimum_sweep(records),
            "identical_routes": identical_routes(records),
            "subjects": subject_split(records, n_resamples, seed),
        }
    )
