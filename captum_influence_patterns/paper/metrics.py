"""Metrics of docs/method.md, section 9, computed from saved evaluation records.

Every function takes the records of :mod:`.evaluation` (dicts, one per example, as read
by :func:`~.records.load_results`) and returns plain floats, lists and dicts.
Definitions (``g`` is a source's token influence; a pattern's node is the head or skip
it chose at a layer):

- accuracy: share of examples with QoI > 0 (the correct form wins).
- mean g per role: mean of ``g`` over the sources with that word role.
- sufficiency of ``I(pi^e)/g`` and ``I(pi^a)/g`` three ways: ``ratio``, the ratio of
  sums ``sum sign(g) I / sum |g|`` (the ``|g|``-weighted mean of I/g, which small
  ``g`` cannot dominate); ``median`` over patterns; and ``mean`` over patterns whose
  ``|g|`` is at least :data:`NEAR_ZERO` (1%) of the example's ``sum |g|``. Patterns
  under that threshold are counted (``near_zero``) and left out of the mean only: a
  ratio with a near-zero denominator says nothing about the route.
- skip share: ``layers``, the share of (pattern, layer) pairs whose node is the skip;
  ``weighted``, the same weighted by ``|influence|`` of the chosen node (the route
  prefix up to that layer); ``flow``, the skip's share of the absolute influence of
  every candidate node at the route's position, ``sum |I(s)| / sum (|I(s)| +
  sum_n |I(a_n)|)`` from ``node_candidates`` (guided patterns only).
- consistency: per source role and layer, the normalized entropy of the chosen
  positions ``j_l`` (over T positions, T the longest sentence of the records
  compared: every group, e.g. a task x form group, its own) and of the chosen nodes
  (A heads or the skip) across instances, ``H / log(min(n, K))`` (0: every instance makes the same choice,
  1: as spread as n instances can be over K choices; 0 when n < 2). Per-layer values
  are averaged over roles. The summary *consistency* is
  ``1 - (mean position entropy over layers 1..L-1 + mean node entropy over layers
  1..L) / 2`` (``j_L`` is fixed, so layer L's position entropy is left out).
- ablation: per reference, method, route set and mode, accuracy of the ablated QoI
  and the share of the QoI retained relative to the reference QoI (every node
  replaced), ``sum(QoI_ablated - QoI_ref) / sum(QoI - QoI_ref)``, and the raw share
  ``sum(QoI_ablated) / sum(QoI)`` (see :func:`ablation_metrics`).
- optimality (when records hold ``optimality``, one entry per source with
  ``share_beaten``, ``gap`` and ``n_random``): how the guided route
  ranks among random valid routes of the same source (see
  :func:`optimality_metrics`), and, where the entries hold the stronger opponents
  (``opponents``, ``shortfall``), how close it comes to the best route found (see
  :func:`opponent_metrics`).
- intervals: bootstrap 95% confidence intervals of each claim's statistic, from
  resampling sentences (records) with a fixed seed (see :func:`~.stats.bootstrap`); for the
  consistency/accuracy correlation, groups and then their sentences
  (:func:`~.stats.group_bootstrap`), beside a permutation test
  (:func:`~.stats.permutation_test`). The resampling statistics live in
  :mod:`.stats`.

Every source is explained by default; sources without a word role are grouped by
position where roles are needed (consistency), and roles stay labelled where known.
Route records are read from ``routes`` (and from ``baselines`` in files written
before the rename).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..results import Pattern
from .agreement_tasks import TASKS, nouns
from .stats import (
    RESAMPLES,
    SEED,
    bootstrap,
    finite_mean,
    finite_median,
    is_finite,
    ratio,
)

Record = Dict[str, Any]
#: A pattern's ``|g|`` below this share of its example's ``sum |g|`` is near zero.
NEAR_ZERO = 0.01


# -------------------------------------------------------------------------- helpers
def group_records(records: Sequence[Record], *keys: str) -> Dict[Any, List[Record]]:
    """Records grouped by the values of ``keys`` (one key: the value; else a tuple)."""
    groups: Dict[Any, List[Record]] = {}
    for record in records:
        value = tuple(record.get(k) for k in keys)
        groups.setdefault(value[0] if len(keys) == 1 else value, []).append(record)
    return groups


def route_records(record: Record) -> Dict[str, List[Dict[str, Any]]]:
    """Reference route name -> pattern dicts of one record (``routes``, or
    ``baselines`` in files written before the rename; empty when none)."""
    return record.get("routes") or record.get("baselines") or {}


def route_names(records: Sequence[Record]) -> List[str]:
    """The reference route names present in any record, sorted."""
    return sorted({m for r in records for m in route_records(r)})


def patterns_of(record: Record, method: str = "guided") -> List[Pattern]:
    """The patterns of one record: ``"guided"`` or a reference route's name (none
    when the record lacks that route)."""
    rows = (
        record["patterns"]
        if method == "guided"
        else route_records(record).get(method, [])
    )
    return [Pattern.from_dict(p) for p in rows]


def role_of(record: Record, source: int) -> Optional[str]:
    """The word role of source position ``source`` in ``record`` (None without one)."""
    return record.get("source_roles", {}).get(str(source))


# ---------------------------------------------------------------- simple statistics
def accuracy(records: Sequence[Record]) -> float:
    """Share of records with QoI > 0 (nan for none)."""
    return finite_mean(1.0 if r["qoi"] > 0 else 0.0 for r in records)


def role_influence(records: Sequence[Record]) -> Dict[str, float]:
    """Mean token influence ``g`` per word role of the sources."""
    values: Dict[str, List[float]] = {}
    for record in records:
        for source in record["sources"]:
            role = role_of(record, source)
            if role is not None:
                values.setdefault(role, []).append(record["token_influence"][source])
    return {role: finite_mean(v) for role, v in values.items()}


def _abs_g_total(record: Record) -> float:
    """The example's ``sum |g|`` (over every position that has one)."""
    values = record.get("token_influence") or [
        p["token_influence"] for p in record["patterns"]
    ]
    return sum(abs(v) for v in values if v is not None and math.isfinite(v))


def sufficiency(records: Sequence[Record], method: str = "guided") -> Dict[str, Any]:
    """``I(pi^e)/g`` (``embedding_*``) and ``I(pi^a)/g`` (``attention_*``) over
    patterns: ``*_ratio`` (ratio of sums), ``*_median``, ``*_mean`` (near-zero
    ``g`` left out) and ``*_mean_all`` (every pattern with ``g != 0``), with ``n``
    patterns and ``near_zero`` (see the module docstring).
    """
    sums = {"embedding": [0.0, 0.0], "attention": [0.0, 0.0]}
    ratios: Dict[str, List[float]] = {"embedding": [], "attention": []}
    kept: Dict[str, List[float]] = {"embedding": [], "attention": []}
    count = near = 0
    for record in records:
        floor = NEAR_ZERO * _abs_g_total(record)
        for pattern in patterns_of(record, method):
            g = pattern.token_influence
            if not math.isfinite(g):
                continue
            count += 1
            small = abs(g) < floor or g == 0
            near += small
            values = {
                "embedding": pattern.embedding_influence,
                "attention": pattern.influence,
            }
            for level, value in values.items():
                if not math.isfinite(value):
                    continue
                sums[level][0] += math.copysign(1.0, g) * value
                sums[level][1] += abs(g)
                if g != 0:
                    ratios[level].append(value / g)
                    if not small:
                        kept[level].append(value / g)
    out: Dict[str, Any] = {"n": count, "near_zero": near}
    for level in ("embedding", "attention"):
        out[f"{level}_ratio"] = ratio(*sums[level])
        out[f"{level}_median"] = finite_median(ratios[level])
        out[f"{level}_mean"] = finite_mean(kept[level])
        out[f"{level}_mean_all"] = finite_mean(ratios[level])
    return out


def skip_sums(record: Record, method: str = "guided") -> np.ndarray:
    """Per record: (skips, layers, skip ``|I|``, all ``|I|``, skip flow, all flow, layers the
    route shape leaves free, layers that stay at their position, skips among those,
    routes, routes that move once, routes that stay at the source and move at the
    last layer)."""
    return _pattern_skip_sums(patterns_of(record, method))


def _pattern_skip_sums(patterns: Iterable[Pattern]) -> np.ndarray:
    """:func:`skip_sums` of some patterns."""
    sums = np.zeros(12)
    for pattern in patterns:
        positions = pattern.positions
        for layer, (node, candidates) in enumerate(zip(
            pattern.nodes, pattern.node_candidates or [None] * len(pattern.nodes)
        )):
            is_skip = node.kind == "skip"
            stays = positions[layer + 1] == positions[layer]
            sums[:2] += (is_skip, 1)
            sums[7:9] += (stays, stays and is_skip)
            if math.isfinite(node.influence):
                sums[2:4] += (abs(node.influence) * is_skip, abs(node.influence))
            if candidates:
                sums[4:6] += (abs(candidates[-1]), sum(abs(v) for v in candidates))
        moves = sum(a != b for a, b in zip(positions[:-1], positions[1:]))
        # A route that ends away from its source must cross one layer by a head.
        sums[6] += len(pattern.nodes) - (positions[0] != positions[-1])
        sums[9:] += (
            1,
            moves == 1,
            moves == 1 and positions[-2] == positions[0] != positions[-1],
        )
    return sums


def skip_ratios(sums: np.ndarray) -> Dict[str, float]:
    """The skip shares of summed :func:`skip_sums` (``layers``, ``weighted``,
    ``flow``, ...)."""
    return {
        "layers": ratio(sums[0], sums[1]),
        "weighted": ratio(sums[2], sums[3]),
        "flow": ratio(sums[4], sums[5]),
        "ceiling": ratio(sums[6], sums[1]),
        "of_ceiling": ratio(sums[0], sums[6]),
        "stays": ratio(sums[8], sums[7]),
    }


def skip_share(records: Sequence[Record], method: str = "guided") -> Dict[str, float]:
    """Share of the route through skip connections (``layers``, ``weighted``,
    ``flow``), the structural ceiling of ``layers`` (``ceiling``), ``layers`` as a
    share of it (``of_ceiling``), the share of the skip among the layers where the
    route stays at its position (``stays``), and the shares of routes that move once
    (``single_move``) and that stay at the source until the last layer
    (``stay_then_jump``); see the module docstring."""
    sums = sum((skip_sums(r, method) for r in records), np.zeros(12))
    return {
        **skip_ratios(sums),
        "single_move": ratio(sums[10], sums[9]),
        "stay_then_jump": ratio(sums[11], sums[9]),
    }


def skip_null(
    records: Sequence[Record], n_resamples: int = RESAMPLES, seed: int = SEED
) -> Dict[str, Any]:
    """Claim 1's null: the skip shares of the routes in the records' ``skip_null``
    (kind -> patterns: ``guided``, and random routes of the same sources through the
    search's stage B, ``scripts/skip_null.py``), each with bootstrap intervals
    (sentences resampled), and the differences guided minus each random kind.

    Returns:
        dict: ``n`` sentences, ``kinds`` (kind -> ``routes`` and the intervals of
        ``flow`` and ``layers``), ``difference`` (random kind -> interval of the
        guided minus its candidate-flow share) and ``check`` (the largest relative
        difference of the recomputed guided candidates from the recorded ones);
        ``{"n": 0}`` without such records.
    """
    rows = [r for r in records if r.get("skip_null")]
    if not rows:
        return {"n": 0}
    kinds = sorted({k for r in rows for k in r["skip_null"]},
                   key=lambda k: (k != "guided", k))
    units = [
        {k: _pattern_skip_sums(Pattern.from_dict(p) for p in r["skip_null"].get(k, []))
         for k in kinds}
        for r in rows
    ]

    def shares(picked: List[Dict[str, np.ndarray]]) -> Dict[str, float]:
        out = {}
        for kind in kinds:
            ratios = skip_ratios(sum((u[kind] for u in picked), np.zeros(12)))
            out[f"{kind}/flow"], out[f"{kind}/layers"] = ratios["flow"], ratios["layers"]
        for kind in kinds[1:]:
            out[f"difference/{kind}"] = out["guided/flow"] - out[f"{kind}/flow"]
        return out

    boot = bootstrap(units, shares, n_resamples, seed)
    checks = [r.get("skip_null_check") for r in rows]
    return {
        "n": len(rows),
        "kinds": {
            kind: {
                "routes": int(sum(u[kind][9] for u in units)),
                "flow": boot[f"{kind}/flow"],
                "layers": boot[f"{kind}/layers"],
            }
            for kind in kinds
        },
        "difference": {kind: boot[f"difference/{kind}"] for kind in kinds[1:]},
        "check": max((c for c in checks if is_finite(c)), default=math.nan),
    }


# --------------------------------------------------------------- held-out subjects
def _noun_split_of(record: Record) -> Optional[str]:
    """``"training"`` or ``"held_out"``: whether the record's subject is one of the
    nouns the shipped readout was fitted on (:func:`~.agreement_tasks.nouns`,
    ``"train"``) or a held-out one (``"test"``); None off the built-in tasks."""
    spec = TASKS.get(str(record.get("task")))
    position = (record.get("roles") or {}).get("subject")
    tokens = record.get("tokens") or []
    if spec is None or not isinstance(position, int) or position >= len(tokens):
        return None
    word = tokens[position]
    for split, name in (("train", "training"), ("test", "held_out")):
        if any(word in pair for pair in nouns(spec.feature, split)):
            return name
    return None


def subject_split(
    records: Sequence[Record], n_resamples: int = RESAMPLES, seed: int = SEED
) -> Dict[str, Any]:
    """Accuracy of the sentences whose subject is a training noun of the readout
    against those whose subject is a held-out noun.

    Returns:
        dict: ``training`` and ``held_out`` (``n``, ``accuracy``, ``mean_qoi``, and
        two claim statistics of their patterns: the ratio-of-sums
        ``embedding_ratio`` of I(pi^e)/g and the candidate-flow ``skip_flow``) and
        ``difference`` (held-out minus training accuracy, with a bootstrap interval
        resampling sentences within each split); empty without such records.
    """
    splits = [_noun_split_of(r) for r in records]
    units = [
        (split, 1.0 if r["qoi"] > 0 else 0.0, r["qoi"])
        for r, split in zip(records, splits)
        if split is not None
    ]
    if not units:
        return {}

    def difference(picked: List[Tuple[str, float, float]]) -> Dict[str, float]:
        held = [c for s, c, _ in picked if s == "held_out"]
        trained = [c for s, c, _ in picked if s == "training"]
        return {"difference": finite_mean(held) - finite_mean(trained)}

    out: Dict[str, Any] = {}
    for name in ("training", "held_out"):
        rows = [r for r, split in zip(records, splits) if split == name]
        out[name] = {
            "n": len(rows),
            "accuracy": finite_mean(c for s, c, _ in units if s == name),
            "mean_qoi": finite_mean(q for s, _, q in units if s == name),
            "embedding_ratio": sufficiency(rows)["embedding_ratio"],
            "skip_flow": skip_share(rows)["flow"],
        }
    out.update(bootstrap(units, difference, n_resamples, seed,
                         strata=[s for s, _, _ in units]))
    return out


# ------------------------------------------------------------------- route identity
def _route_key(pattern: Dict[str, Any]) -> Tuple:
    return tuple(pattern["positions"]) + tuple(
        (node["kind"], node.get("head")) for node in pattern["nodes"]
    )


def identical_routes(records: Sequence[Record]) -> Dict[str, Dict[str, Any]]:
    """For every pair of methods (guided and the reference routes), how many sources
    both explain with the same route (same positions and nodes).

    Returns:
        dict: ``{a: {b: {"same", "n", "share"}}}`` for every pair (``n``: sources
        both explain; ``a`` before ``b`` in the order guided, then route names).
    """
    methods = ["guided", *route_names(records)]
    counts: Dict[Tuple[str, str], List[int]] = {}
    for record in records:
        routes = {
            m: {
                p["source"]: _route_key(p)
                for p in (
                    record["patterns"]
                    if m == "guided"
                    else route_records(record).get(m, [])
                )
            }
            for m in methods
        }
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                shared = routes[a].keys() & routes[b].keys()
                entry = counts.setdefault((a, b), [0, 0])
                entry[0] += sum(routes[a][k] == routes[b][k] for k in shared)
                entry[1] += len(shared)
    out: Dict[str, Dict[str, Any]] = {}
    for (a, b), (same, n) in counts.items():
        if n:
            out.setdefault(a, {})[b] = {"same": same, "n": n, "share": ratio(same, n)}
    return out


def completeness(records: Sequence[Record]) -> Dict[str, float]:
    """``|sum g - (QoI(x) - QoI(x'))|`` as recorded (``convergence_delta``): median
    and largest, beside the mean ``|QoI|`` for scale."""
    deltas = [
        abs(r["convergence_delta"])
        for r in records
        if is_finite(r.get("convergence_delta"))
    ]
    return {
        "median": finite_median(deltas),
        "max": max(deltas, default=math.nan),
        "mean_abs_qoi": finite_mean(abs(r["qoi"]) for r in records),
    }


# ------------------------------------------------------------------------ ablation
def ablation_metrics(records: Sequence[Record]) -> Dict[str, Any]:
    """Accuracy and QoI retained under every ablation the records hold.

    Stats per ablation: ``accuracy`` (share of ablated QoIs > 0), ``retained``
    (``sum(QoI_ablated - QoI_nothing) / sum(QoI - QoI_nothing)``: 1 when the ablation
    changes nothing, 0 when it is as bad as replacing every node), ``retained_raw``
    (``sum(QoI_ablated) / sum(QoI)``) and ``n``.

    Returns:
        dict: ``{reference: {"nothing": stats, method: {set: {mode: stats}}}}``;
        empty when no record was ablated.
    """
    values: Dict[Tuple[str, ...], List[Tuple[float, float, float]]] = {}
    for record in (r for r in records if r.get("ablation")):
        for reference, entry in record["ablation"].items():
            nothing = entry["nothing"]
            triple = (nothing, record["qoi"], nothing)
            values.setdefault((reference, "nothing"), []).append(triple)
            for method, sets in entry.items():
                if method == "nothing":
                    continue
                for which, modes in sets.items():
                    for mode, value in modes.items():
                        key = (reference, method, which, mode)
                        triple = (value, record["qoi"], nothing)
                        values.setdefault(key, []).append(triple)
    out: Dict[str, Any] = {}
    for key, triples in values.items():
        node = out.setdefault(key[0], {})
        for part in key[1:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = _ablation_stats(triples)
    return out


def _ablation_stats(triples: Sequence[Tuple[Any, float, Any]]) -> Dict[str, float]:
    """Stats of (ablated QoI, QoI, reference QoI) triples (None values left out)."""
    kept = [
        (a, q, r)
        for a, q, r in triples
        if a is not None and r is not None and math.isfinite(a) and math.isfinite(r)
    ]
    return {
        "accuracy": finite_mean(1.0 if a > 0 else 0.0 for a, _, _ in kept),
        "retained": ratio(
            sum(a - r for a, _, r in kept), sum(q - r for _, q, r in kept)
        ),
        "retained_raw": ratio(sum(a for a, _, _ in kept), sum(q for _, q, _ in kept)),
        "n": len(kept),
    }
