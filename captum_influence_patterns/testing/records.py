"""Hand-made evaluation records for tests of the paper's harness: a route as a record
stores it, and a record of one sentence, with numbers small enough to work out by hand.

Two records on 8 tokens, 2 layers and 2 heads (node candidates: head 0, head 1, skip):
:data:`RECORD_1` (task ``t1``, form ``SS``, QoI 2: subject route 2 -> 2 -> 7, skip
then head 0; attractor route 5 -> 5 -> 7, two skips) and :data:`RECORD_2` (form
``SP``, QoI -1, a wrong prediction: subject route 2 -> 3 -> 7, head 1 then head 0).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

#: Tokens per hand-made sentence.
TOKENS = 8
#: The word roles of :data:`RECORD_1`.
ROLES = {"subject": 2, "attractor": 5}


def route_dict(
    source: int,
    positions: List[int],
    nodes: Sequence[Tuple[Optional[int], float]],
    g: float,
    e: float,
    a: float,
    candidates: Optional[List[List[float]]] = None,
) -> Dict[str, Any]:
    """A guided route as a record stores it: ``positions`` per layer (layer 0 first),
    ``nodes`` (head or None for the skip, influence) per layer, token influence ``g``,
    ``I(pi^e)`` = ``e`` and ``I(pi^a)`` = ``a``."""
    return {
        "source": source,
        "sign": 1 if g >= 0 else -1,
        "token_influence": g,
        "positions": positions,
        "position_influence": [e, e],
        "embedding_influence": e,
        "nodes": [
            {
                "layer": k + 1,
                "position": positions[k + 1],
                "kind": "skip" if head is None else "head",
                "head": head,
                "influence": i,
            }
            for k, (head, i) in enumerate(nodes)
        ],
        "influence": a,
        "position_candidates": [],
        "node_candidates": candidates or [],
        "label": "guided",
    }


def record_dict(
    task: str,
    form: str,
    qoi: float,
    patterns: List[Dict[str, Any]],
    roles: Dict[str, int],
    ablation: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """An evaluation record of one sentence of :data:`TOKENS` tokens with these routes
    (g of a source is its route's; 0 elsewhere)."""
    g = [0.0] * TOKENS
    for p in patterns:
        g[p["source"]] = p["token_influence"]
    record = {
        "id": f"{task}-{form}-{qoi}",
        "index": 0,
        "task": task,
        "form": form,
        "qoi": qoi,
        "prediction_correct": qoi > 0,
        "input_ids": list(range(TOKENS)),
        "sources": [p["source"] for p in patterns],
        "source_roles": {str(pos): role for role, pos in roles.items()},
        "token_influence": g,
        "patterns": patterns,
    }
    if ablation is not None:
        record["ablation"] = ablation
    return record


RECORD_1 = record_dict(
    "t1",
    "SS",
    2.0,
    [
        route_dict(
            2,
            [2, 2, 7],
            [(None, 0.9), (0, 0.5)],
            g=2.0,
            e=1.0,
            a=0.5,
            candidates=[[0.1, -0.2, 0.7], [0.5, 0.0, 0.0]],
        ),
        route_dict(
            5,
            [5, 5, 7],
            [(None, -0.6), (None, -0.2)],
            g=-1.0,
            e=-0.8,
            a=-0.2,
            candidates=[[0.0, 0.1, -0.6], [0.3, 0.1, -0.2]],
        ),
    ],
    ROLES,
)
RECORD_2 = record_dict(
    "t1",
    "SP",
    -1.0,
    [route_dict(2, [2, 3, 7], [(1, 0.4), (0, 0.3)], g=1.0, e=0.5, a=0.3)],
    {"subject": 2},
)


def assert_json_close(
    actual: Any, expected: Any, rel: float = 1e-9, tol: float = 1e-12,
    where: str = "records",
) -> None:
    """The same JSON value: equal keys, lengths and non-numbers, every number within
    ``tol + rel * |expected|`` (``where`` names the first place that differs)."""
    numbers = (isinstance(actual, float) or isinstance(expected, float)) and not (
        isinstance(actual, bool) or isinstance(expected, bool)
    )
    if numbers:
        assert abs(actual - expected) <= tol + rel * abs(expected), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            assert_json_close(actual[key], expected[key], rel, tol, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for k, (a, b) in enumerate(zip(actual, expected)):
            assert_json_close(a, b, rel, tol, f"{where}[{k}]")
    else:
        assert actual == expected, where
