"""The records of the optimality test (:func:`.optimality.optimality_test`): each
explained route beside the best route of each opponent, and the shortfall."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from ..results import Level, Pattern

#: Relative shortfalls reported as ``within_1pct`` and ``within_5pct``.
WITHIN = {"within_1pct": 0.01, "within_5pct": 0.05}


def best_route(
    name: str,
    routes: List[Pattern],
    fields: Dict[str, Any],
    values: List[float],
    sign: int,
    level: Level,
    return_routes: bool,
) -> Dict[str, Any]:
    """The best route of one opponent (sign-adjusted), as a JSON-safe dict."""
    best = max(range(len(values)), key=lambda k: (sign * values[k], -k))
    out: Dict[str, Any] = {
        "influence": values[best],
        **route_fields(routes[best], level),
        **fields,
    }
    if name in ("attention_route", "contribution_route"):
        out["route"] = routes[best].label
    if name in ("random", "attention_random"):
        out["n"] = len(values)
        out["mean"] = sum(values) / len(values)
    if return_routes and name == "attention_random":
        out["routes"] = [
            {**route_fields(route, level, nodes_always=True), "influence": value}
            for route, value in zip(routes, values)
        ]
    return out


def route_fields(
    route: Pattern, level: Level, nodes_always: bool = False
) -> Dict[str, Any]:
    fields: Dict[str, Any] = {"positions": list(route.positions)}
    if level == "attention" or nodes_always:
        fields["nodes"] = [
            {"kind": n.kind, "head": n.head, "ffn": n.ffn} for n in route.nodes
        ]
    return fields


def compare_record(
    record: Dict[str, Any], found: Dict[str, Dict[str, Any]], sign: int
) -> Dict[str, Any]:
    """Add the opponents, the best found and the guided route's shortfall."""
    guided = record["guided"]
    best_by, best = "guided", guided
    for name, opponent in found.items():
        if sign * opponent["influence"] > sign * best:
            best_by, best = name, opponent["influence"]
    if best != 0:
        shortfall: Optional[float] = sign * (best - guided) / abs(best) + 0.0
    else:
        shortfall = 0.0 if sign * guided >= 0 else None
    record["opponents"] = found
    record["best_found"] = best
    record["best_found_by"] = best_by
    record["shortfall"] = shortfall
    for key, bound in WITHIN.items():
        record[key] = shortfall is not None and shortfall <= bound
    return record


def source_record(
    example: int,
    pattern: Pattern,
    level: str,
    guided: float,
    routes: List[Pattern],
    values: List[float],
    return_routes: bool,
) -> Dict[str, Any]:
    """The record's fields against the uniform random routes."""
    sign = pattern.sign
    scores = torch.tensor(values, dtype=torch.float64)
    adjusted = sign * scores
    best = sign * float(adjusted.max())
    gap = sign * (guided - best)
    record = {
        "example": example,
        "source": pattern.source,
        "level": level,
        "sign": sign,
        "n_random": len(values),
        "guided": guided,
        "random_best": best,
        "random_mean": float(scores.mean()),
        "share_beaten": float((adjusted < sign * guided).double().mean()),
        "gap": gap,
        "gap_relative": gap / abs(guided) if guided != 0 else None,
    }
    if return_routes:
        record["random"] = [
            {
                "positions": list(route.positions),
                "nodes": [
                    {"kind": n.kind, "head": n.head, "ffn": n.ffn} for n in route.nodes
                ],
                "influence": value,
            }
            for route, value in zip(routes, values)
        ]
    return record
