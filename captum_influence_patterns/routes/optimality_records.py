"""The records of the optimality test (:func:`.optimality.optimality_test`): each
explained route beside the best route of each opponent, and the shortfall, as typed
rows (:class:`OptimalityRow`) whose :meth:`~OptimalityRow.to_dict` is the JSON object
an evaluation record holds under ``optimality``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import torch

from ..results import Level, Pattern

#: Relative shortfalls reported as ``within_1pct`` and ``within_5pct``.
WITHIN = {"within_1pct": 0.01, "within_5pct": 0.05}


@dataclass(frozen=True)
class RouteNode:
    """The node a scored route takes at one layer (its position is the route's).

    Attributes:
        kind (str): ``"skip"`` or ``"head"``.
        head (int or None): The head for ``kind == "head"``, else None.
        ffn (str or None): ``"mlp"`` or ``"residual"`` with the MLP split off, else
            None.
    """

    kind: str
    head: Optional[int]
    ffn: Optional[str]

    def to_dict(self) -> Dict[str, Any]:
        """``{"kind", "head", "ffn"}``, as a record holds it."""
        return {"kind": self.kind, "head": self.head, "ffn": self.ffn}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RouteNode":
        """Read a node of a record."""
        return cls(data["kind"], data["head"], data["ffn"])


def _nodes(route: Pattern) -> List[RouteNode]:
    return [RouteNode(n.kind, n.head, n.ffn) for n in route.nodes]


def _read_nodes(data: Mapping[str, Any]) -> Optional[List[RouteNode]]:
    nodes = data.get("nodes")
    return None if nodes is None else [RouteNode.from_dict(n) for n in nodes]


@dataclass(frozen=True)
class ScoredRoute:
    """One random route and its influence (``return_routes=True``).

    Attributes:
        positions (list of int): ``j_0 .. j_L``.
        nodes (list of RouteNode): The node at each layer (empty at the embedding
            level).
        influence (float): Its influence under the result's settings.
    """

    positions: List[int]
    nodes: List[RouteNode]
    influence: float

    def to_dict(self) -> Dict[str, Any]:
        """``{"positions", "nodes", "influence"}``, as a record holds it."""
        return {
            "positions": list(self.positions),
            "nodes": [n.to_dict() for n in self.nodes],
            "influence": self.influence,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ScoredRoute":
        """Read a random route of a record."""
        return cls(list(data["positions"]), _read_nodes(data) or [], data["influence"])


@dataclass(frozen=True)
class OpponentRoute:
    """The best route (largest sign-adjusted influence) one opponent found for a
    source; a field that does not apply to the opponent is None and left out of
    :meth:`to_dict`.

    Attributes:
        influence (float): Its influence (raw, not sign-adjusted).
        positions (list of int): ``j_0 .. j_L``.
        nodes (list of RouteNode or None): The node at each layer, at the attention
            level only.
        search (str or None): ``"optimum"``: ``"exhaustive"`` (every route scored)
            or ``"beam"``.
        routes (int or None): ``"optimum"`` by ``"exhaustive"``: how many routes.
        width (int or None): ``"optimum"`` by ``"beam"``: the beam's width.
        route (str or None): ``"attention_route"`` and ``"contribution_route"``: the
            reference route's name.
        n (int or None): ``"random"`` and ``"attention_random"``: routes drawn.
        mean (float or None): ``"random"`` and ``"attention_random"``: their mean
            influence.
    """

    influence: float
    positions: List[int]
    nodes: Optional[List[RouteNode]] = None
    search: Optional[str] = None
    routes: Optional[int] = None
    width: Optional[int] = None
    route: Optional[str] = None
    n: Optional[int] = None
    mean: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object of a record (keys in field order, None ones left out)."""
        out: Dict[str, Any] = {
            "influence": self.influence, "positions": list(self.positions)
        }
        if self.nodes is not None:
            out["nodes"] = [n.to_dict() for n in self.nodes]
        given = ((k, getattr(self, k)) for k in _OPTIONAL)
        return {**out, **{k: v for k, v in given if v is not None}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OpponentRoute":
        """Read an opponent's route of a record (a field it lacks is None)."""
        return cls(
            influence=data["influence"],
            positions=list(data["positions"]),
            nodes=_read_nodes(data),
            **{k: data.get(k) for k in _OPTIONAL},
        )


#: The fields of an opponent's route that only some opponents have.
_OPTIONAL = ("search", "routes", "width", "route", "n", "mean")


@dataclass(frozen=True)
class OptimalityRow:
    """The optimality test of one explained source (docs/beam.md).

    Influences are raw; "sign-adjusted" is times ``sign``, so that larger is better
    for either sign.

    Attributes:
        example (int): The example's index in the batch.
        source (int): The source position.
        level (str): ``"embedding"`` (``I(pi^e)``) or ``"attention"``
            (``I(pi^a)``).
        sign (int): The search's sign (+1, or -1 where g < 0).
        n_random (int): Uniform random routes drawn.
        guided (float): The explained route's influence.
        random_best (float): The uniform random route with the largest
            sign-adjusted influence (its raw value).
        random_mean (float): The uniform random routes' mean influence.
        share_beaten (float): Share of uniform random routes whose sign-adjusted
            influence is strictly below the guided one's.
        gap (float): ``sign * (guided - random_best)``.
        gap_relative (float or None): ``gap / |guided|``; None where guided is 0.
        opponents (dict or None): Opponent name -> its best route
            (:class:`OpponentRoute`), in the order run (``"random"`` last); None
            only in rows of records written before the opponents existed (0.2.0),
            which have none of the five fields below either.
        best_found (float or None): The largest sign-adjusted influence of the
            guided route and every opponent (its raw value).
        best_found_by (str or None): ``"guided"`` or the opponent that found it
            (ties: guided, then the order run).
        shortfall (float or None): ``sign * (best_found - guided) / |best_found|``:
            0 when guided is the best found; None when best_found is 0 and guided
            is below it.
        within_1pct (bool or None): ``shortfall <= 0.01`` (:data:`WITHIN`).
        within_5pct (bool or None): ``shortfall <= 0.05``.
        random (list of ScoredRoute or None): With ``return_routes``: every
            uniform random route.
        attention_random (list of ScoredRoute or None): With ``return_routes``:
            every attention-drawn random route.
    """

    example: int
    source: int
    level: Level
    sign: int
    n_random: int
    guided: float
    random_best: float
    random_mean: float
    share_beaten: float
    gap: float
    gap_relative: Optional[float]
    opponents: Optional[Dict[str, OpponentRoute]] = None
    best_found: Optional[float] = None
    best_found_by: Optional[str] = None
    shortfall: Optional[float] = None
    within_1pct: Optional[bool] = None
    within_5pct: Optional[bool] = None
    random: Optional[List[ScoredRoute]] = None
    attention_random: Optional[List[ScoredRoute]] = None

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object an evaluation record holds: the fields (``random`` and
        ``attention_random`` only when given), then ``opponents``, ``best_found``,
        ``best_found_by``, ``shortfall``, ``within_1pct`` and ``within_5pct`` (only
        with opponents)."""
        out: Dict[str, Any] = {
            name: getattr(self, name)
            for name in ("example", "source", "level", "sign", "n_random", "guided",
                         "random_best", "random_mean", "share_beaten", "gap",
                         "gap_relative")
        }
        for name in ("random", "attention_random"):
            routes = getattr(self, name)
            if routes is not None:
                out[name] = [r.to_dict() for r in routes]
        if self.opponents is not None:
            out["opponents"] = {k: v.to_dict() for k, v in self.opponents.items()}
            out.update({name: getattr(self, name) for name in _COMPARISON})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OptimalityRow":
        """Read a row of a record (any version: ``OptimalityRow.from_dict(d)
        .to_dict() == d``)."""
        opponents = data.get("opponents")
        routes = {
            name: None if data.get(name) is None
            else [ScoredRoute.from_dict(r) for r in data[name]]
            for name in ("random", "attention_random")
        }
        return cls(
            **{name: data[name] for name in (
                "example", "source", "level", "sign", "n_random", "guided",
                "random_best", "random_mean", "share_beaten", "gap", "gap_relative")},
            opponents=None if opponents is None else {
                k: OpponentRoute.from_dict(v) for k, v in opponents.items()
            },
            **{name: data.get(name) for name in _COMPARISON},
            **routes,
        )


#: The fields of a row that compare the guided route with its opponents.
_COMPARISON = ("best_found", "best_found_by", "shortfall", *WITHIN)


def comparison(
    guided: float, opponents: Dict[str, OpponentRoute], sign: int
) -> Dict[str, Any]:
    """The best found and the guided route's shortfall (:data:`_COMPARISON`)."""
    best_by, best = "guided", guided
    for name, opponent in opponents.items():
        if sign * opponent.influence > sign * best:
            best_by, best = name, opponent.influence
    if best != 0:
        shortfall: Optional[float] = sign * (best - guided) / abs(best) + 0.0
    else:
        shortfall = 0.0 if sign * guided >= 0 else None
    out: Dict[str, Any] = {
        "best_found": best, "best_found_by": best_by, "shortfall": shortfall
    }
    for key, bound in WITHIN.items():
        out[key] = shortfall is not None and shortfall <= bound
    return out


def best_route(
    name: str,
    routes: List[Pattern],
    fields: Dict[str, Any],
    values: List[float],
    sign: int,
    level: Level,
) -> OpponentRoute:
    """The best route of one opponent (sign-adjusted)."""
    best = max(range(len(values)), key=lambda k: (sign * values[k], -k))
    route = routes[best]
    labelled = name in ("attention_route", "contribution_route")
    drawn = name in ("random", "attention_random")
    return OpponentRoute(
        influence=values[best],
        positions=list(route.positions),
        nodes=_nodes(route) if level == "attention" else None,
        route=route.label if labelled else None,
        n=len(values) if drawn else None,
        mean=sum(values) / len(values) if drawn else None,
        **fields,
    )


def scored_routes(routes: List[Pattern], values: List[float]) -> List[ScoredRoute]:
    """Every route with its influence (``return_routes``)."""
    return [
        ScoredRoute(list(route.positions), _nodes(route), value)
        for route, value in zip(routes, values)
    ]


def source_fields(
    example: int, pattern: Pattern, level: Level, guided: float, values: List[float]
) -> Dict[str, Any]:
    """The row's fields against the uniform random routes (``values``)."""
    sign = pattern.sign
    scores = torch.tensor(values, dtype=torch.float64)
    adjusted = sign * scores
    best = sign * float(adjusted.max())
    gap = sign * (guided - best)
    return dict(
        example=example,
        source=pattern.source,
        level=level,
        sign=sign,
        n_random=len(values),
        guided=guided,
        random_best=best,
        random_mean=float(scores.mean()),
        share_beaten=float((adjusted < sign * guided).double().mean()),
        gap=gap,
        gap_relative=gap / abs(guided) if guided != 0 else None,
    )
