"""Consistency of the chosen routes across instances (docs/method.md, section 9): the
normalized entropy of the positions and nodes chosen per layer, and its correlation
with accuracy across groups of sentences (claim 2).

Every group (a task, a task x form group, a split) normalizes the positions' entropy
by its own sentence length. The correlation's intervals resample the groups and then
their sentences (:func:`~.stats.group_bootstrap`); its permutation test
(:func:`~.stats.permutation_test`) decides the claim.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np

from ..results import Pattern
from .metrics import Record, group_records, patterns_of, role_of
from .stats import (
    RESAMPLES,
    SEED,
    correlation,
    group_bootstrap,
    permutation_test,
)


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
                    role_of(record, pattern.source) or pattern.source, len(keys)
                )
        layers = next((len(p.nodes) for row in rows for p in row), 0)
        self.positions = np.full((len(records), len(keys), layers), -1)
        self.nodes = np.full((len(records), len(keys), layers), -1)
        for r, (record, row) in enumerate(zip(records, rows)):
            for pattern in row:
                k = keys[role_of(record, pattern.source) or pattern.source]
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


def correlation_intervals(
    records: Sequence[Record], n_resamples: int = RESAMPLES, seed: int = SEED
) -> Dict[str, Dict[str, float]]:
    """Bootstrap intervals of the consistency/accuracy correlations across task x form
    groups: the groups, then their sentences, resampled
    (:func:`~.stats.group_bootstrap`). Resampled sentences repeat, which lowers each
    group's entropy, so the resamples' ``mean`` runs low; the permutation test of
    :func:`consistency_accuracy` has no such bias.

    Returns:
        dict: ``pearson`` and ``spearman``, each ``value``, ``low``, ``high``,
        ``resamples`` and ``mean``.
    """
    groups = _Groups(records, ("task", "form"))
    return group_bootstrap(
        [len(correct) for correct in groups.correct],
        lambda picks: _pearson_spearman([groups.point(g, i) for g, i in picks]),
        n_resamples,
        seed,
    )
