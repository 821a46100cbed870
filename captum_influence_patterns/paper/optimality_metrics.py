"""How the guided routes rank among other routes of the same source: random valid
routes (:func:`optimality_metrics`), the strongest opponents found
(:func:`opponent_metrics`) and the narrowest search that reaches the optimum
(:func:`optimum_sweep`), from the ``optimality`` entries of evaluation records."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..routes.optimality_records import WITHIN
from .metrics import NEAR_ZERO, Record
from .stats import finite_mean, finite_median, is_finite


def optimality_entries(record: Record) -> List[Dict[str, Any]]:
    """The per-source optimality entries of a record (a list, or a dict keyed by
    source)."""
    entries = record.get("optimality") or []
    if isinstance(entries, dict):
        entries = list(entries.values())
    return [e for e in entries if isinstance(e, dict)]


def _source_g(record: Record, source: Any) -> float:
    """The token influence g of ``source`` in ``record`` (nan when unknown)."""
    values = record.get("token_influence") or []
    if isinstance(source, int) and 0 <= source < len(values) and is_finite(
        values[source]
    ):
        return float(values[source])
    return math.nan


def optimality_metrics(records: Sequence[Record]) -> Dict[str, Any]:
    """How guided routes rank among random valid routes of the same source.

    Returns:
        dict: ``n`` sources with a test, ``share_beaten`` (mean) and
        ``share_beaten_median`` (share of random routes the guided route beats),
        ``beats_all`` (share of sources whose route beats every random one),
        ``gap`` and ``gap_median`` (guided minus the best random route, as recorded),
        ``at_least_best`` (share with a gap >= 0), ``n_random`` (median random
        routes per source), ``random_best_of_g`` (median of the best random
        route's ``|I| / |g|``) and ``random_near_zero`` (share of sources whose best
        random route carries under :data:`NEAR_ZERO` of ``|g|``); ``{"n": 0}`` when
        no record holds the test.
    """
    entries = [e for r in records for e in optimality_entries(r)]
    beats = [e["share_beaten"] for e in entries if is_finite(e.get("share_beaten"))]
    # The best random route's size against the source's |g|: a weak opponent
    # carries almost nothing.
    opponent = [
        abs(e["random_best"]) / abs(g)
        for r in records
        for e in optimality_entries(r)
        for g in [_source_g(r, e.get("source"))]
        if is_finite(e.get("random_best")) and is_finite(g) and g != 0
    ]
    gaps = [
        e["gap"] for e in entries if is_finite(e.get("gap"))
    ]
    if not entries:
        return {"n": 0}
    return {
        "n": len(entries),
        "share_beaten": finite_mean(beats),
        "share_beaten_median": finite_median(beats),
        "beats_all": finite_mean(1.0 if b >= 1.0 else 0.0 for b in beats),
        "gap": finite_mean(gaps),
        "gap_median": finite_median(gaps),
        "at_least_best": finite_mean(1.0 if g >= 0 else 0.0 for g in gaps),
        "n_random": finite_median(
            e["n_random"] for e in entries if is_finite(e.get("n_random"))
        ),
        "random_best_of_g": finite_median(opponent),
        "random_near_zero": finite_mean(1.0 if v < NEAR_ZERO else 0.0 for v in opponent),
    }


def opponent_metrics(records: Sequence[Record]) -> Dict[str, Any]:
    """How guided routes compare with the stronger opponents of the optimality test
    (the optimum, stay-then-jump, the best attention route, attention-drawn random
    routes; :func:`~..optimality.optimality_test`).

    Returns:
        dict: ``n`` sources with a shortfall, ``within_1pct`` and ``within_5pct``
        (shares of sources whose guided route is within 1% / 5% of the best route
        found), ``shortfall_median`` and ``shortfall_mean`` (``sign * (best found -
        guided) / |best found|``, sources where it is defined), its distribution
        (``shortfall_zero``: share at 0, the guided route the best found;
        ``shortfall_quantiles`` at :data:`SHORTFALL_QUANTILES`, ``shortfall_max``,
        ``shortfall_positive_median``: median where it is above 0, and every
        value, ``shortfalls``, for the histogram),
        ``optimum_search`` (how the optimum was searched: ``search``, ``width``,
        ``n`` sources), ``best_found_by``
        (share of sources per finder of the best route, ``"guided"`` included) and
        ``opponents`` (per opponent: ``n``, ``at_least`` (share of sources where the
        guided route is at least as good) and ``ratio_median`` (median of the
        opponent's sign-adjusted influence over ``|guided|``)); ``{"n": 0}`` when no
        record holds these fields.
    """
    entries = [
        e for r in records for e in optimality_entries(r) if "shortfall" in e
    ]
    if not entries:
        return {"n": 0}
    shortfalls = [e["shortfall"] for e in entries if is_finite(e.get("shortfall"))]
    finders = Counter(str(e.get("best_found_by")) for e in entries)
    names = sorted({name for e in entries for name in (e.get("opponents") or {})})
    opponents = {}
    for name in names:
        pairs = [
            (e["sign"] * e["guided"], e["sign"] * e["opponents"][name]["influence"],
             abs(e["guided"]))
            for e in entries
            if is_finite((e.get("opponents") or {}).get(name, {}).get("influence"))
            and is_finite(e.get("guided")) and e.get("sign") in (-1, 1)
        ]
        opponents[name] = {
            "n": len(pairs),
            "at_least": finite_mean(1.0 if g >= o else 0.0 for g, o, _ in pairs),
            "ratio_median": finite_median(o / a for _, o, a in pairs if a > 0),
        }
    searches = Counter(
        (str(optimum.get("search")), optimum.get("width"))
        for e in entries
        for optimum in [(e.get("opponents") or {}).get("optimum")]
        if isinstance(optimum, dict)
    )
    return {
        "n": len(entries),
        **{name: finite_mean(1.0 if e.get(name) else 0.0 for e in entries)
           for name in WITHIN},
        "shortfall_median": finite_median(shortfalls),
        "shortfall_mean": finite_mean(shortfalls),
        "shortfall_zero": finite_mean(1.0 if v == 0 else 0.0 for v in shortfalls),
        "shortfall_quantiles": {
            f"{q:g}": float(np.quantile(shortfalls, q)) if shortfalls else math.nan
            for q in SHORTFALL_QUANTILES
        },
        "shortfall_max": max(shortfalls, default=math.nan),
        "shortfalls": [round(v, 6) for v in shortfalls],
        "shortfall_positive_median": finite_median(v for v in shortfalls if v > 0),
        "optimum_search": [
            {"search": search, "width": width, "n": n}
            for (search, width), n in sorted(searches.items(), key=str)
        ],
        "best_found_by": {k: v / len(entries) for k, v in sorted(finders.items())},
        "opponents": opponents,
    }


#: Relative difference under which two routes' influences count as the same route
#: found (float32 scoring).
SAME_ROUTE = 1e-4


def _shortfall(sign: float, guided: float, best: float) -> float:
    """``sign (best - guided) / |best|`` with ``best`` at least as good as guided."""
    top = max(sign * guided, sign * best)
    return (top - sign * guided) / abs(top) if top != 0 else math.nan


def optimum_sweep(records: Sequence[Record]) -> Dict[str, Any]:
    """How the best route found moves with the beam's width, and against every route
    (records of ``scripts/optimum_sweep.py``: ``optimum_sweep``, search name ->
    per source ``guided``, ``sign``, ``influence`` of the best route it found).

    Returns:
        dict: ``n`` sentences; ``searches`` (search -> ``sources``, ``within_1pct``
        and ``shortfall_median`` of the guided route against that search's route,
        ``better_than`` (share of sources where it beats the narrowest beam by more
        than :data:`SAME_ROUTE`) and ``gain_median`` (where it does, by how much,
        relative)); ``exhaustive`` (``sources`` and, per search and ``guided``,
        ``found`` (share of sources whose route reaches the exhaustive optimum within
        :data:`SAME_ROUTE`) and ``shortfall_median`` against it); ``{"n": 0}`` without
        such records.
    """
    rows = [r for r in records if r.get("optimum_sweep")]
    if not rows:
        return {"n": 0}
    names = sorted({k for r in rows for k in r["optimum_sweep"] if k != "exhaustive"},
                   key=lambda k: int(k[4:]) if k[4:].isdigit() else 0)
    per_source: Dict[str, Dict[Tuple[str, int], Dict[str, Any]]] = {}
    for record in rows:
        for name, entries in record["optimum_sweep"].items():
            for e in entries:
                per_source.setdefault(name, {})[(record["id"], e["source"])] = e
    narrowest = per_source.get(names[0], {}) if names else {}
    searches = {}
    for name in names:
        entries = per_source[name]
        shortfalls = [_shortfall(e["sign"], e["guided"], e["influence"])
                      for e in entries.values()]
        gains = []
        for key, e in entries.items():
            base = narrowest.get(key)
            if base is None:
                continue
            gain = e["sign"] * (e["influence"] - base["influence"]) / abs(
                base["influence"]) if base["influence"] else math.nan
            gains.append(gain)
        searches[name] = {
            "sources": len(entries),
            "within_1pct": finite_mean(1.0 if v <= WITHIN["within_1pct"] else 0.0
                                 for v in shortfalls if is_finite(v)),
            "shortfall_median": finite_median(shortfalls),
            "better_than": finite_mean(1.0 if g > SAME_ROUTE else 0.0
                                 for g in gains if is_finite(g)),
            "gain_median": finite_median(g for g in gains if is_finite(g) and g > SAME_ROUTE),
        }
    out: Dict[str, Any] = {"n": len(rows), "narrowest": names[0] if names else None,
                           "searches": searches}
    exhaustive = per_source.get("exhaustive", {})
    if exhaustive:
        found: Dict[str, Any] = {}
        for name in ["guided", *names]:
            values = []
            for key, e in exhaustive.items():
                if name == "guided":
                    value = e["guided"]
                elif key in per_source[name]:
                    value = per_source[name][key]["influence"]
                else:
                    continue
                values.append(_shortfall(e["sign"], value, e["influence"]))
            found[name] = {
                "found": finite_mean(1.0 if v <= SAME_ROUTE else 0.0
                               for v in values if is_finite(v)),
                "shortfall_median": finite_median(values),
                "sources": len(values),
            }
        out["exhaustive"] = {
            "sources": len(exhaustive),
            "routes": finite_median(e.get("routes") for e in exhaustive.values()),
            "by": found,
        }
    return out


#: Quantiles of the optimality test's shortfall distribution.
SHORTFALL_QUANTILES = (0.5, 0.75, 0.85, 0.9, 0.95, 0.99)
