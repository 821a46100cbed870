"""Metrics of docs/method.md, section 9, computed from saved evaluation records.

Every function takes the records of :mod:`.evaluation` (dicts, one per example, as read
by :func:`~.evaluation.load_results`) and returns plain floats, lists and dicts.
Definitions (``g`` is a source's token influence; a pattern's node is the head or skip
it chose at a layer):

- accuracy: share of examples with QoI > 0 (the correct form wins).
- mean g per role: mean of ``g`` over the sources with that word role.
- sufficiency: mean (and median) over patterns of ``I(pi^e)/g`` and ``I(pi^a)/g``
  (patterns with ``g = 0`` or a non-finite value are left out).
- skip share: ``layers``, the share of (pattern, layer) pairs whose node is the skip;
  ``weighted``, the same weighted by ``|influence|`` of the chosen node (the route
  prefix up to that layer); ``flow``, the skip's share of the absolute influence of
  every candidate node at the route's position, ``sum |I(s)| / sum (|I(s)| +
  sum_n |I(a_n)|)`` from ``node_candidates`` (guided patterns only).
- consistency: per source role and layer, the normalized entropy of the chosen
  positions ``j_l`` (over T positions) and of the chosen nodes (A heads or the skip)
  across instances, ``H / log(min(n, K))`` (0: every instance makes the same choice,
  1: as spread as n instances can be over K choices; 0 when n < 2). Per-layer values
  are averaged over roles. The summary *consistency* is
  ``1 - (mean position entropy over layers 1..L-1 + mean node entropy over layers
  1..L) / 2`` (``j_L`` is fixed, so layer L's position entropy is left out).
- ablation: per reference, method, route set and mode, accuracy of the ablated QoI
  and the share of the QoI retained relative to the reference QoI (every node
  replaced), ``sum(QoI_ablated - QoI_ref) / sum(QoI - QoI_ref)``, and the raw share
  ``sum(QoI_ablated) / sum(QoI)`` (see :func:`ablation_metrics`).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..files import json_safe
from ..results import Pattern

Record = Dict[str, Any]


# -------------------------------------------------------------------------- helpers
def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _median(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0 else math.nan


def group_records(records: Sequence[Record], *keys: str) -> Dict[Any, List[Record]]:
    """Records grouped by the values of ``keys`` (one key: the value; else a tuple)."""
    groups: Dict[Any, List[Record]] = {}
    for record in records:
        value = tuple(record.get(k) for k in keys)
        groups.setdefault(value[0] if len(keys) == 1 else value, []).append(record)
    return groups


def patterns_of(record: Record, method: str = "guided") -> List[Pattern]:
    """The patterns of one record: ``"guided"`` or a baseline's name."""
    rows = record["patterns"] if method == "guided" else record["baselines"][method]
    return [Pattern.from_dict(p) for p in rows]


def _role_of(record: Record, source: int) -> Optional[str]:
    return record.get("source_roles", {}).get(str(source))


# ---------------------------------------------------------------- simple statistics
def accuracy(records: Sequence[Record]) -> float:
    """Share of records with QoI > 0 (nan for none)."""
    return _mean(1.0 if r["qoi"] > 0 else 0.0 for r in records)


def role_influence(records: Sequence[Record]) -> Dict[str, float]:
    """Mean token influence ``g`` per word role of the sources."""
    values: Dict[str, List[float]] = {}
    for record in records:
        for source in record["sources"]:
            role = _role_of(record, source)
            if role is not None:
                values.setdefault(role, []).append(record["token_influence"][source])
    return {role: _mean(v) for role, v in values.items()}


def sufficiency(records: Sequence[Record], method: str = "guided") -> Dict[str, float]:
    """Mean ``I(pi^e)/g`` (``embedding``) and ``I(pi^a)/g`` (``attention``) over
    patterns, their medians (``embedding_median``, ``attention_median``: a ratio with a
    small ``g`` can dominate a mean) and the number of patterns (``n``)."""
    patterns = [p for r in records for p in patterns_of(r, method)]
    embedding = [p.embedding_sufficiency for p in patterns]
    attention = [p.sufficiency for p in patterns]
    return {
        "embedding": _mean(embedding),
        "attention": _mean(attention),
        "embedding_median": _median(embedding),
        "attention_median": _median(attention),
        "n": len(patterns),
    }


def skip_share(records: Sequence[Record], method: str = "guided") -> Dict[str, float]:
    """Share of the route through skip connections (``layers``, ``weighted``,
    ``flow``; see the module docstring)."""
    count = skips = 0
    weight = skip_weight = 0.0
    flow = skip_flow = 0.0
    for pattern in (p for r in records for p in patterns_of(r, method)):
        for node, candidates in zip(
            pattern.nodes, pattern.node_candidates or [None] * len(pattern.nodes)
        ):
            is_skip = node.kind == "skip"
            count += 1
            skips += is_skip
            if math.isfinite(node.influence):
                weight += abs(node.influence)
                skip_weight += abs(node.influence) * is_skip
            if candidates:
                flow += sum(abs(v) for v in candidates)
                skip_flow += abs(candidates[-1])
    return {
        "layers": _ratio(skips, count),
        "weighted": _ratio(skip_weight, weight),
        "flow": _ratio(skip_flow, flow),
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
    num_heads = num_heads or _num_heads(records)
    length = max(len(r["input_ids"]) for r in records)
    by_role: Dict[Any, List[Pattern]] = {}
    for record in records:
        for pattern in patterns_of(record, method):
            role = _role_of(record, pattern.source) or pattern.source
            by_role.setdefault(role, []).append(pattern)
    num_layers = len(next(iter(by_role.values()))[0].nodes)
    positions = np.zeros((len(by_role), num_layers))
    heads = np.zeros((len(by_role), num_layers))
    for k, patterns in enumerate(by_role.values()):
        for layer in range(num_layers):
            chosen = [p.positions[layer + 1] for p in patterns]
            positions[k, layer] = normalized_entropy(chosen, length)
            nodes = [_node_label(p, layer) for p in patterns]
            heads[k, layer] = normalized_entropy(nodes, num_heads + 1)
    position_curve = positions.mean(0)
    head_curve = heads.mean(0)
    searched = position_curve[:-1] if num_layers > 1 else position_curve
    return {
        "positions": position_curve.tolist(),
        "heads": head_curve.tolist(),
        "consistency": 1.0 - (float(searched.mean()) + float(head_curve.mean())) / 2,
        "n": len(records),
    }


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
def _ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    array = np.asarray(values, dtype=float)
    order = np.argsort(array, kind="mergesort")
    ranks = np.empty(len(array))
    sorted_values = array[order]
    start = 0
    while start < len(array):
        end = start
        while end + 1 < len(array) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    return float((dx * dy).sum()) / denominator if denominator > 0 else math.nan


def correlation(xs: Sequence[float], ys: Sequence[float]) -> Dict[str, float]:
    """Pearson and Spearman correlation of paired values (nan pairs dropped).

    Returns:
        dict: ``pearson``, ``spearman`` (nan when n < 3 or a side is constant) and
        ``n``.
    """
    pairs = [
        (x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)
    ]
    if len(pairs) < 3:
        return {"pearson": math.nan, "spearman": math.nan, "n": len(pairs)}
    x = np.array([p[0] for p in pairs])
    y = np.array([p[1] for p in pairs])
    return {
        "pearson": _pearson(x, y),
        "spearman": _pearson(_ranks(x), _ranks(y)),
        "n": len(pairs),
    }


def consistency_accuracy(
    records: Sequence[Record], keys: Tuple[str, ...] = ("task", "form")
) -> Dict[str, Any]:
    """Correlation of pattern consistency with accuracy across groups of records.

    Args:
        records (sequence of dict): Records of several tasks.
        keys (tuple of str, optional): What a group is: ``("task", "form")`` or
            ``("task",)``. Default: ``("task", "form")``

    Returns:
        dict: ``points`` (group, n, accuracy, consistency) and the correlation
        (``pearson``, ``spearman``, ``n`` groups).
    """
    num_heads = _num_heads(records) if records else None
    points = []
    for group, rows in sorted(group_records(records, *keys).items(), key=str):
        points.append(
            {
                "group": list(group) if isinstance(group, tuple) else [group],
                "n": len(rows),
                "accuracy": accuracy(rows),
                "consistency": layer_consistency(rows, "guided", num_heads)[
                    "consistency"
                ],
            }
        )
    result = correlation(
        [p["consistency"] for p in points], [p["accuracy"] for p in points]
    )
    return {"points": points, **result}


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
        "accuracy": _mean(1.0 if a > 0 else 0.0 for a, _, _ in kept),
        "retained": _ratio(
            sum(a - r for a, _, r in kept), sum(q - r for _, q, r in kept)
        ),
        "retained_raw": _ratio(sum(a for a, _, _ in kept), sum(q for _, q, _ in kept)),
        "n": len(kept),
    }


# ------------------------------------------------------------------------- summary
def task_metrics(records: Sequence[Record]) -> Dict[str, Any]:
    """Every metric of one group of records (e.g. one task)."""
    methods = sorted({m for r in records for m in r.get("baselines", {})})
    return {
        "n": len(records),
        "accuracy": accuracy(records),
        "mean_qoi": _mean(r["qoi"] for r in records),
        "role_influence": role_influence(records),
        "sufficiency": sufficiency(records),
        "baseline_sufficiency": {m: sufficiency(records, m) for m in methods},
        "skip_share": skip_share(records),
        "baseline_skip_share": {m: skip_share(records, m)["layers"] for m in methods},
        "consistency": layer_consistency(records),
        "consistency_by_prediction": consistency_by_prediction(records),
        "ablation": ablation_metrics(records),
    }


def summarize(records: Sequence[Record]) -> Dict[str, Any]:
    """Per-task metrics, the pooled metrics and the consistency/accuracy correlations.

    Returns:
        dict (JSON-safe: non-finite floats become None): ``tasks`` (task -> metrics),
        ``overall`` (all records), ``correlation`` (``task_form`` and ``task``, see
        :func:`consistency_accuracy`).
    """
    tasks = group_records(records, "task")
    return json_safe(
        {
            "tasks": {task: task_metrics(rows) for task, rows in tasks.items()},
            "overall": task_metrics(records),
            "correlation": {
                "task_form": consistency_accuracy(records, ("task", "form")),
                "task": consistency_accuracy(records, ("task",)),
            },
        }
    )
