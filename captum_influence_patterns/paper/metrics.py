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
from collections import Counter
from typing import (
    Any,
    Dict,
    Hashable,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
)

import numpy as np

from ..files import json_safe
from ..optimality import WITHIN
from ..results import Pattern
from .agreement_tasks import TASKS, nouns
from .stats import (
    LEVEL,
    RESAMPLES,
    SEED,
    bootstrap,
    correlation,
    finite_mean,
    finite_median,
    group_bootstrap,
    is_finite,
    permutation_test,
    wilcoxon_signed_rank,
)

Record = Dict[str, Any]
#: A pattern's ``|g|`` below this share of its example's ``sum |g|`` is near zero.
NEAR_ZERO = 0.01


# -------------------------------------------------------------------------- helpers
def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0 else math.nan


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


def _role_of(record: Record, source: int) -> Optional[str]:
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
            role = _role_of(record, source)
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
        out[f"{level}_ratio"] = _ratio(*sums[level])
        out[f"{level}_median"] = finite_median(ratios[level])
        out[f"{level}_mean"] = finite_mean(kept[level])
        out[f"{level}_mean_all"] = finite_mean(ratios[level])
    return out


def _skip_sums(record: Record, method: str = "guided") -> np.ndarray:
    """Per record: (skips, layers, skip |I|, all |I|, skip flow, all flow, layers the
    route shape leaves free, layers that stay at their position, skips among those,
    routes, routes that move once, routes that stay at the source and move at the
    last layer)."""
    return _pattern_skip_sums(patterns_of(record, method))


def _pattern_skip_sums(patterns: Iterable[Pattern]) -> np.ndarray:
    """:func:`_skip_sums` of some patterns."""
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


def _skip_ratios(sums: np.ndarray) -> Dict[str, float]:
    return {
        "layers": _ratio(sums[0], sums[1]),
        "weighted": _ratio(sums[2], sums[3]),
        "flow": _ratio(sums[4], sums[5]),
        "ceiling": _ratio(sums[6], sums[1]),
        "of_ceiling": _ratio(sums[0], sums[6]),
        "stays": _ratio(sums[8], sums[7]),
    }


def skip_share(records: Sequence[Record], method: str = "guided") -> Dict[str, float]:
    """Share of the route through skip connections (``layers``, ``weighted``,
    ``flow``), the structural ceiling of ``layers`` (``ceiling``), ``layers`` as a
    share of it (``of_ceiling``), the share of the skip among the layers where the
    route stays at its position (``stays``), and the shares of routes that move once
    (``single_move``) and that stay at the source until the last layer
    (``stay_then_jump``); see the module docstring."""
    sums = sum((_skip_sums(r, method) for r in records), np.zeros(12))
    return {
        **_skip_ratios(sums),
        "single_move": _ratio(sums[10], sums[9]),
        "stay_then_jump": _ratio(sums[11], sums[9]),
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
            ratios = _skip_ratios(sum((u[kind] for u in picked), np.zeros(12)))
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


# -------------------------------------------------------------------- consistency
def normalized_entropy(values: Sequence[Hashable], num_categories: int) -> float:
    """Entropy of the empirical distribution of ``values`` over ``log(min(n, K))``.

    Args:
        values (sequence): The choices of n instances.
        num_categories (int): K, the number of possible choices.

    Returns:
        float: in [0, 1]; 0 when n < 2 or K < 2.
    """
    k = min(len(values), num_categories)
    if k < 2:
        return 0.0
    counts = np.array(list(Counter(values).values()), dtype=float)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() / math.log(k))


def _node_label(pattern: Pattern, layer: int) -> Hashable:
    node = pattern.nodes[layer]
    return "skip" if node.kind == "skip" else int(node.head)  # type: ignore[arg-type]


def _num_heads(records: Sequence[Record]) -> int:
    for record in records:
        for pattern in record["patterns"]:
            if pattern.get("node_candidates"):
                return len(pattern["node_candidates"][0]) - 1
    heads = [
        node["head"]
        for r in records
        for p in r["patterns"]
        for node in p["nodes"]
        if node["head"] is not None
    ]
    return max(heads, default=0) + 1


class ChoiceTable:
    """The positions and nodes the patterns of some records chose, as integer codes,
    so consistency can be recomputed quickly for any subset or resample of them.

    ``positions[r, k, l]`` is ``j_{l+1}`` of record ``r``'s pattern whose source has
    role (or, without a role, position) ``k``; ``nodes[r, k, l]`` its node at layer
    ``l + 1`` (head index, ``num_heads`` for the skip); -1 where record ``r`` has no
    such source.
    """

    def __init__(
        self,
        records: Sequence[Record],
        length: int,
        num_heads: int,
        method: str = "guided",
    ) -> None:
        rows = [patterns_of(r, method) for r in records]
        keys: Dict[Hashable, int] = {}
        for record, row in zip(records, rows):
            for pattern in row:
                keys.setdefault(
                    _role_of(record, pattern.source) or pattern.source, len(keys)
                )
        layers = next((len(p.nodes) for row in rows for p in row), 0)
        self.positions = np.full((len(records), len(keys), layers), -1)
        self.nodes = np.full((len(records), len(keys), layers), -1)
        for r, (record, row) in enumerate(zip(records, rows)):
            for pattern in row:
                k = keys[_role_of(record, pattern.source) or pattern.source]
                self.positions[r, k] = pattern.positions[1:]
                self.nodes[r, k] = [
                    num_heads if label == "skip" else label
                    for label in (_node_label(pattern, j) for j in range(layers))
                ]
        self.length = length
        self.num_heads = num_heads

    def consistency(self, index: Optional[np.ndarray] = None) -> Dict[str, Any]:
        """Per-layer entropies and the summary consistency of the records ``index``
        (all by default; repeats allowed), as in :func:`layer_consistency`."""
        positions = self.positions if index is None else self.positions[index]
        nodes = self.nodes if index is None else self.nodes[index]
        if positions.size == 0:
            return {"positions": [], "heads": [], "consistency": math.nan}
        position_curve = _mean_entropy(positions, self.length)
        head_curve = _mean_entropy(nodes, self.num_heads + 1)
        layers = len(position_curve)
        searched = position_curve[:-1] if layers > 1 else position_curve
        return {
            "positions": position_curve.tolist(),
            "heads": head_curve.tolist(),
            "consistency": 1.0
            - (float(searched.mean()) + float(head_curve.mean())) / 2,
        }


def _mean_entropy(codes: np.ndarray, categories: int) -> np.ndarray:
    """Per layer, :func:`normalized_entropy` of each key's codes over records,
    averaged over the keys present (codes: (records, keys, layers), -1 absent)."""
    _, keys, layers = codes.shape
    cells = np.arange(keys * layers).reshape(keys, layers)
    present = codes >= 0
    values = int(codes.max()) + 1
    flat = (cells[None] * values + codes)[present]
    counts = np.bincount(flat, minlength=keys * layers * values).reshape(
        keys, layers, values
    )
    n = counts.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = counts / n[..., None]
        entropy = -np.where(counts > 0, p * np.log(p), 0.0).sum(-1)
        k = np.minimum(n, categories)
        normalized = np.where(k >= 2, entropy / np.log(np.maximum(k, 2)), 0.0)
    seen = n > 0  # (keys, layers): keys absent from these records do not count
    return (normalized * seen).sum(0) / np.maximum(seen.sum(0), 1)


def _length(records: Sequence[Record]) -> int:
    return max(len(r["input_ids"]) for r in records)


def layer_consistency(
    records: Sequence[Record], method: str = "guided", num_heads: Optional[int] = None
) -> Dict[str, Any]:
    """Per layer 1..L, normalized entropies of chosen positions and nodes.

    Entropies are computed per source role (sources without a role are grouped by
    position) across the records, then averaged over roles.

    Returns:
        dict: ``positions`` and ``heads`` (lists over layers 1..L, nan without
        records), ``consistency`` (the summary, see the module docstring) and ``n``.
    """
    if not records:
        return {"positions": [], "heads": [], "consistency": math.nan, "n": 0}
    table = ChoiceTable(
        records, _length(records), num_heads or _num_heads(records), method
    )
    return {**table.consistency(), "n": len(records)}


def consistency_by_prediction(
    records: Sequence[Record], method: str = "guided"
) -> Dict[str, Dict[str, Any]]:
    """:func:`layer_consistency` of the correctly and the incorrectly predicted
    records separately (``"correct"``, ``"incorrect"``)."""
    num_heads = _num_heads(records) if records else None
    return {
        name: layer_consistency(
            [r for r in records if (r["qoi"] > 0) == wanted], method, num_heads
        )
        for name, wanted in (("correct", True), ("incorrect", False))
    }


# -------------------------------------------------------------------- correlation
class _Groups:
    """Records split into groups, with each group's choices and correctness, so the
    consistency/accuracy points can be recomputed for resamples (by local index)."""

    def __init__(self, records: Sequence[Record], keys: Tuple[str, ...]) -> None:
        heads = _num_heads(records)
        groups = group_records(records, *keys)
        self.names = sorted(groups, key=str)
        # K of the positions' entropy is each group's own length, as everywhere.
        self.tables = [
            ChoiceTable(groups[g], _length(groups[g]), heads) for g in self.names
        ]
        self.correct = [
            np.array([1.0 if r["qoi"] > 0 else 0.0 for r in groups[g]])
            for g in self.names
        ]

    def point(self, g: int, index: Optional[np.ndarray] = None) -> Dict[str, Any]:
        """Accuracy and consistency of group ``g``'s records ``index`` (all by
        default; repeats allowed)."""
        name = self.names[g]
        if index is None:
            index = np.arange(len(self.correct[g]))
        return {
            "group": list(name) if isinstance(name, tuple) else [name],
            "n": len(index),
            "accuracy": float(self.correct[g][index].mean()),
            "consistency": self.tables[g].consistency(index)["consistency"],
        }

    def points(self) -> List[Dict[str, Any]]:
        """Accuracy and consistency of every group."""
        return [self.point(g) for g in range(len(self.names))]

def _correlation_of(points: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    return correlation(
        [p["consistency"] for p in points], [p["accuracy"] for p in points]
    )


def _pearson_spearman(points: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    return {k: v for k, v in _correlation_of(points).items() if k != "n"}


def consistency_accuracy(
    records: Sequence[Record], keys: Tuple[str, ...] = ("task", "form")
) -> Dict[str, Any]:
    """Correlation of pattern consistency with accuracy across groups of records.

    Args:
        records (sequence of dict): Records of several tasks.
        keys (tuple of str, optional): What a group is: ``("task", "form")`` or
            ``("task",)``. Default: ``("task", "form")``

    Returns:
        dict: ``points`` (group, n, accuracy, consistency), the correlation
        (``pearson``, ``spearman``, ``n`` groups), its ``permutation`` test
        (:func:`~.stats.permutation_test`) and the groups' ``accuracy_min`` and
        ``accuracy_max``.
    """
    points = _Groups(records, keys).points() if records else []
    accuracies = [p["accuracy"] for p in points]
    return {
        "points": points,
        **_correlation_of(points),
        "permutation": permutation_test(
            [p["consistency"] for p in points], accuracies
        ),
        "accuracy_min": min(accuracies, default=math.nan),
        "accuracy_max": max(accuracies, default=math.nan),
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
            out.setdefault(a, {})[b] = {"same": same, "n": n, "share": _ratio(same, n)}
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
        "retained": _ratio(
            sum(a - r for a, _, r in kept), sum(q - r for _, q, r in kept)
        ),
        "retained_raw": _ratio(sum(a for a, _, _ in kept), sum(q for _, q, _ in kept)),
        "n": len(kept),
    }


# ----------------------------------------------------------------------- optimality
def _optimality_entries(record: Record) -> List[Dict[str, Any]]:
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
    entries = [e for r in records for e in _optimality_entries(r)]
    beats = [e["share_beaten"] for e in entries if is_finite(e.get("share_beaten"))]
    # The best random route's size against the source's |g|: a weak opponent
    # carries almost nothing.
    opponent = [
        abs(e["random_best"]) / abs(g)
        for r in records
        for e in _optimality_entries(r)
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
        e for r in records for e in _optimality_entries(r) if "shortfall" in e
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
        m: _ratio(sum(u[m][0] for u in units), sum(u[m][1] for u in units))
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
    skip = [_skip_sums(r) for r in records]
    out: Dict[str, Any] = {
        "settings": {"n_resamples": n_resamples, "seed": seed, "level": LEVEL},
        "skip_share": bootstrap(
            skip, lambda u: _skip_ratios(sum(u, np.zeros(12))), n_resamples, seed
        ),
    }
    if records:
        groups = _Groups(records, ("task", "form"))
        # groups, then their sentences (resampling sentences biases the entropies
        # down; the permutation test of consistency_accuracy has no such bias)
        out["correlation"] = group_bootstrap(
            [len(correct) for correct in groups.correct],
            lambda picks: _pearson_spearman([groups.point(g, i) for g, i in picks]),
            n_resamples,
            seed,
        )
    for name, reference in (("ablation", "mean"), ("ablation_zero", "zero")):
        ablated = [_union_keep(r, reference) for r in records if r.get("ablation")]
        if any(ablated):
            out[name] = bootstrap(ablated, _ablation_margin, n_resamples, seed)
    beats = [
        np.array([sum(b), len(b)])
        for b in (
            [
                e["share_beaten"]
                for e in _optimality_entries(r)
                if is_finite(e.get("share_beaten"))
            ]
            for r in records
        )
        if b
    ]
    if beats:
        out["optimality"] = bootstrap(
            beats,
            lambda u: {"share_beaten": _ratio(*sum(u, np.zeros(2)))},
            n_resamples,
            seed,
        )
    shortfalls = [
        [e["shortfall"] for e in _optimality_entries(r) if "shortfall" in e]
        for r in records
    ]
    shortfalls = [row for row in shortfalls if row]
    if shortfalls:
        out["opponents"] = bootstrap(shortfalls, _shortfall_stats, n_resamples, seed)
    return out


# ------------------------------------------------------------- claim 3, paired
#: Sentences per sequential look of claim 3 (the interleaved items of the run cover
#: the tasks evenly at every multiple of it).
LOOK_STEP = 60
#: Quantiles of the optimality test's shortfall distribution.
SHORTFALL_QUANTILES = (0.5, 0.75, 0.85, 0.9, 0.95, 0.99)


def _best_reference(units: List[Dict[str, Tuple]]) -> Optional[str]:
    """The reference route whose union retains most (ratio of sums) over ``units``."""
    methods = set.intersection(*(set(u) for u in units)) - {"guided"} if units else set()
    retained = {
        m: _ratio(sum(u[m][0] for u in units), sum(u[m][1] for u in units))
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
    error = {m: _ratio(finite_mean(u[m] for u in units), scale) for m in methods}
    others = [v for m, v in error.items() if m != "guided" and math.isfinite(v)]
    guided = error.get("guided", math.nan)
    best = min(others) if others else math.nan
    return {"guided": guided, "best": best, "margin": best - guided}


def ablation_test(
    records: Sequence[Record],
    n_resamples: int = RESAMPLES,
    seed: int = SEED,
    step: int = LOOK_STEP,
) -> Dict[str, Any]:
    """Claim 3's statistics beyond the margin: the paired per-sentence test, the
    closeness of the kept QoI to the QoI (defined for every sentence), and the
    margin at every sequential look.

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
        (Bonferroni), with that ``level``.
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


# ------------------------------------------------------------------------- summary
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
    records: Sequence[Record], n_resamples: int = RESAMPLES, seed: int = SEED
) -> Dict[str, Any]:
    """Per-task metrics, the pooled metrics, the consistency/accuracy correlations and
    the bootstrap intervals of the claims.

    Args:
        records (sequence of dict): Evaluation records.
        n_resamples (int, optional): Bootstrap resamples. Default: :data:`~.stats.RESAMPLES`
        seed (int, optional): Bootstrap seed. Default: :data:`~.stats.SEED`

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
            "ablation_test": ablation_test(records, n_resamples, seed),
            "skip_null": skip_null(records, n_resamples, seed),
            "optimum_sweep": optimum_sweep(records),
            "identical_routes": identical_routes(records),
            "subjects": subject_split(records, n_resamples, seed),
        }
    )
