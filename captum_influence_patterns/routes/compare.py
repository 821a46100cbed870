"""Reference routes (docs/method.md, section 8) next to guided patterns, scored alike.

Attention routes follow attention weights captured from the model
(:mod:`.attention`, searched by :mod:`.finders`); layer routes follow Captum's
:class:`~captum.attr.LayerConductance` (:mod:`.conductance`). Every route becomes a
:class:`~captum_influence_patterns.results.Pattern` (``label`` = the route's name) and
is scored by :meth:`InfluencePatterns.pattern_influence`, the same gated integrated
gradient that checks the guided search, so :func:`compare` is like for like.

"Baseline" keeps Captum's meaning throughout: the reference input of integrated
gradients (``baselines`` arguments). The comparison methods are *routes*.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union, get_args

from torch import Tensor

from ..attribution import InfluencePatterns
from ..utils.files import finite, json_safe
from ..graph import analysis_mode
from ..request import AttributionRequest, expect_request
from ..results import (
    InfluencePatternsResult,
    Pattern,
    PatternNode,
    ratio,
)
from .attention import HeadAggregation, capture_attention
from .conductance import layer_conductance
from .contributions import (
    INFORMATION_FLOW_THRESHOLD,
    Contributions,
    example_contributions,
)
from .finders import (
    ORIENTATIONS,
    ROUTE_FINDERS,
    Orientation,
    Route,
    RouteQuery,
    check_orientation,
)
from .scoring import route_nodes, route_pattern, score_patterns


# ------------------------------------------------------------------- the route specs
@dataclass(frozen=True)
class RouteSpec:
    """How one reference route chooses its positions and nodes.

    Attributes:
        search (str): A key of :data:`.finders.ROUTE_FINDERS`: ``"greedy"``,
            ``"best"`` (dynamic programming), ``"attention_beam"`` (a beam over
            attention routes, not the influence search's beam), ``"rollout"``, ``"flow"``,
            ``"conductance"`` (one source interpolated) or ``"conductance_all"``
            (every position interpolated).
        heads (str): Head aggregation for greedy/best/beam: ``"mean"`` or ``"max"``.
        residual (bool): Add the identity, ``(M + I) / 2``, for greedy/best/beam.
        normalize (bool): Renormalize rows for greedy/best/beam.
        width (int): Beam width.
        skip_threshold (float): Head/skip rule of :func:`~.scoring.route_nodes` for in-place
            steps.
        orientation (str): For greedy/best/beam: ``"flow"`` (follow the direction
            information moves, key to query) or ``"attends"`` (follow what a token
            attends to, as the authors' released code does; greedy and beam then also
            leave layer 1 unsearched, as that code does). Rollout, flow and
            conductance ignore it, as do the contribution routes. See
            docs/routes.md.
        threshold (float): ``"information_flow"``'s tau: edges whose importance
            is at most tau leave the graph (Ferrando & Voita 2024; LLM-TT's
            default 0.04).
    """

    search: str
    heads: HeadAggregation = "mean"
    residual: bool = False
    normalize: bool = False
    width: int = 3
    skip_threshold: float = 0.5
    orientation: Orientation = "flow"
    threshold: float = INFORMATION_FLOW_THRESHOLD

    def __post_init__(self) -> None:
        checks = (
            ("search", self.search, tuple(ROUTE_FINDERS)),
            ("heads", self.heads, get_args(HeadAggregation)),
            ("orientation", self.orientation, ORIENTATIONS),
        )
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(
                    f"RouteSpec.{name}: expected one of {', '.join(allowed)}, "
                    f"got {value!r}"
                )
        if self.width < 1:
            raise ValueError(f"RouteSpec.width must be >= 1, got {self.width}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(
                f"RouteSpec.threshold must be in [0, 1), got {self.threshold}"
            )


#: Named reference routes accepted by :func:`compare`'s ``methods``. Rollout and flow
#: always use Abnar & Zuidema's matrices; conductance routes never use a head in place.
ROUTES: Dict[str, RouteSpec] = {
    "greedy": RouteSpec("greedy"),
    "greedy_max": RouteSpec("greedy", heads="max", normalize=True),
    "greedy_residual": RouteSpec("greedy", residual=True, normalize=True),
    "best": RouteSpec("best", residual=True, normalize=True),
    "best_raw": RouteSpec("best"),
    "beam": RouteSpec("attention_beam", residual=True, normalize=True, width=3),
    "rollout": RouteSpec("rollout"),
    "flow": RouteSpec("flow"),
    "conductance": RouteSpec("conductance", skip_threshold=1.0),
    "conductance_all": RouteSpec("conductance_all", skip_threshold=1.0),
    "alti": RouteSpec("alti"),
    "alti_logit": RouteSpec("alti_logit"),
    "attention_norm": RouteSpec("attention_norm"),
    "information_flow": RouteSpec("information_flow"),
}
#: The contribution-based routes (docs/method.md, section 8.3).
CONTRIBUTION_ROUTES = ("alti", "alti_logit", "attention_norm", "information_flow")

DEFAULT_METHODS = (
    "greedy",
    "greedy_residual",
    "best",
    "beam",
    "rollout",
    "flow",
    "conductance",
)

MethodsType = Sequence[Union[str, Tuple[str, RouteSpec]]]


def resolve_methods(
    methods: MethodsType, orientation: Optional[Orientation] = None
) -> List[Tuple[str, RouteSpec]]:
    """``(name, RouteSpec)`` pairs for names of :data:`ROUTES` and given pairs.

    Args:
        methods (sequence): Names of :data:`ROUTES` or ``(name, RouteSpec)`` pairs.
        orientation (str, optional): Replaces the orientation of every attention
            route (greedy/best/beam). Default: None (each spec's own)

    Raises:
        ValueError: an unknown name or orientation, repeated names, or ``"guided"``.
    """
    if orientation is not None:
        check_orientation(orientation)
    resolved = []
    for entry in methods:
        if isinstance(entry, tuple):
            name, spec = entry
        elif entry in ROUTES:
            name, spec = entry, ROUTES[entry]
        else:
            raise ValueError(
                f"methods: unknown route {entry!r}; use one of "
                f"{', '.join(ROUTES)} or a (name, RouteSpec) pair"
            )
        if orientation is not None and ROUTE_FINDERS[spec.search].oriented:
            spec = replace(spec, orientation=orientation)
        resolved.append((name, spec))
    names = [name for name, _ in resolved]
    if len(set(names)) != len(names) or "guided" in names:
        raise ValueError(f"methods: names must be unique and not 'guided', got {names}")
    return resolved


# ------------------------------------------------------------------------ the routes
def reference_routes(
    spec: RouteSpec,
    attention: Tensor,
    sources: Sequence[int],
    output_position: int,
    conductance: Optional[Tensor] = None,
    signs: Optional[Sequence[int]] = None,
    contributions: Optional[Contributions] = None,
) -> List[Route]:
    """Routes of one reference method for the sources of one example.

    Args:
        spec (RouteSpec): The method.
        attention (Tensor): (L, A, T, T) probabilities of the example.
        sources (sequence of int): Source positions.
        output_position (int): The output position every route ends at.
        conductance (Tensor, optional): (S or 1, L - 1, T) from
            :func:`~.conductance.layer_conductance`; needed by the conductance routes.
        signs (sequence of int, optional): Per source, the search sign (-1 when g < 0).
        contributions (Contributions, optional): The example's decompositions
            (:func:`~.contributions.example_contributions`); needed by the
            contribution routes.
    """
    finder = ROUTE_FINDERS[spec.search]
    if finder.conductance is not None and conductance is None:
        raise ValueError(f"{spec.search}: conductance is required")
    if finder.contributions and contributions is None:
        raise ValueError(f"{spec.search}: contributions are required")
    signs = list(signs) if signs is not None else [1] * len(sources)
    return finder.find(
        spec,
        RouteQuery(
            attention, sources, output_position, conductance, signs, contributions
        ),
    )


# ------------------------------------------------------------------------- comparison
@dataclass
class RouteComparison:
    """What :func:`compare` returns: the guided pattern next to each reference route.

    Attributes:
        records (list of dict): One JSON-safe dict per (example, source) with
            ``example``, ``source``, ``output_position``, ``token_influence`` (g) and,
            for ``"guided"`` and each route name, ``positions``, ``heads`` (head
            index per layer, None for the skip), ``embedding_influence`` (I(pi^e)),
            ``influence`` (I(pi^a)), ``embedding_sufficiency`` and ``sufficiency`` (I/g,
            None when g is 0) and ``score`` (the route's own score; None for guided).
        patterns (list of dict): Per example, method name -> patterns in source order.
        methods (list of str): Route names, in the order asked.
        metadata (dict): n_steps, method, the route specs (``routes``) and similar
            settings.
    """

    records: List[Dict[str, Any]]
    patterns: List[Dict[str, List[Pattern]]]
    methods: List[str]
    metadata: Dict[str, Any] = field(default_factory=dict)

    def summary(self) -> Dict[str, Dict[str, Optional[float]]]:
        """Per method, the mean of ``sufficiency`` and ``embedding_sufficiency``."""
        out: Dict[str, Dict[str, Optional[float]]] = {}
        for name in ["guided"] + self.methods:
            out[name] = {}
            for key in ("embedding_sufficiency", "sufficiency"):
                values = [
                    r[name][key] for r in self.records if r[name][key] is not None
                ]
                out[name][key] = sum(values) / len(values) if values else None
        return out

    def table(self) -> str:
        """Mean sufficiencies per method as text."""
        lines = [f"{'method':<16} {'I(e)/g':>8} {'I(a)/g':>8}"]
        for name, values in self.summary().items():
            cells = [
                "n/a" if v is None else f"{v:.3f}"
                for v in (values["embedding_sufficiency"], values["sufficiency"])
            ]
            lines.append(f"{name:<16} {cells[0]:>8} {cells[1]:>8}")
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe form (non-finite floats become None)."""
        return json_safe(
            {
                "records": self.records,
                "patterns": [
                    {name: [p.to_dict() for p in row] for name, row in example.items()}
                    for example in self.patterns
                ],
                "methods": list(self.methods),
                "metadata": dict(self.metadata),
            }
        )


def compare(
    ip: InfluencePatterns,
    request: AttributionRequest,
    *,
    sources: Any = None,
    methods: MethodsType = DEFAULT_METHODS,
    guided: Optional[InfluencePatternsResult] = None,
    orientation: Optional[Orientation] = None,
) -> RouteComparison:
    """Guided patterns next to reference routes, all scored by the same gated IG.

    Runs :meth:`InfluencePatterns.search` (unless ``guided`` is given), captures the
    attention, builds each reference route per source (:data:`ROUTES`), and scores
    every route with :meth:`InfluencePatterns.score` at both levels.

    Args:
        ip (InfluencePatterns): The attribution object (its model and QoI).
        request (AttributionRequest): The batch and its arguments, built by
            :meth:`InfluencePatterns.request` (``baselines`` is the
            integrated-gradient reference input), e.g.
            ``compare(ip, ip.request(inputs, baselines=mask_id, output_position=4))``.
            It is validated once: the search, the attention capture, the
            conductance and the scoring all read it, and the model's analysis mode
            is entered once.
        sources (sequence, optional): As in :meth:`InfluencePatterns.attribute`.
            Default: None
        methods (sequence, optional): Route names of :data:`ROUTES`, or
            ``(name, RouteSpec)`` pairs. Default: :data:`DEFAULT_METHODS`
        guided (InfluencePatternsResult, optional): A result of ``ip.search`` for the
            same request, to skip the search. Default: None
        orientation (str, optional): ``"flow"`` or ``"attends"`` for every attention
            route (greedy/best/beam; see :class:`RouteSpec`). Default: None (each
            spec's own, ``"flow"`` for the named routes)

    Without ``internal_batch_size`` in the request the routes are scored in chunks
    (:func:`~.scoring.score_routes`), not all at once.

    Returns:
        RouteComparison: JSON-safe records per example and source, and the patterns.

    Raises:
        TypeError: for a ``request`` that is not an :class:`AttributionRequest`.
    """
    expect_request(request)
    specs = resolve_methods(methods, orientation)
    with analysis_mode(ip.model):
        if guided is None:
            guided = ip.search(request, sources=sources).result
        attention = capture_attention(
            ip.model,
            ip.forward_func,
            request.inputs,
            request.additional_forward_args,
            ip.graph,
        )
        patterns, scores = _example_routes(ip, request, guided, attention, specs)
        names = [name for name, _ in specs]
        score_patterns(
            ip, request, [[p for n in names for p in row[n]] for row in patterns]
        )
    return RouteComparison(
        records=_records(patterns, scores, guided.output_positions),
        patterns=patterns,
        methods=names,
        metadata=dict(guided.metadata) | {"routes": {n: asdict(s) for n, s in specs}},
    )


def _example_routes(
    ip: InfluencePatterns,
    request: AttributionRequest,
    guided: InfluencePatternsResult,
    attention: Tensor,
    specs: List[Tuple[str, RouteSpec]],
) -> Tuple[List[Dict[str, List[Pattern]]], List[Dict[str, List[float]]]]:
    """Per example, the unscored route patterns and route scores of every method."""
    kinds = {ROUTE_FINDERS[s.search].conductance for _, s in specs} - {None}
    decompose = any(ROUTE_FINDERS[s.search].contributions for _, s in specs)
    patterns: List[Dict[str, List[Pattern]]] = []
    scores: List[Dict[str, List[float]]] = []
    for b, guided_row in enumerate(guided.patterns):
        sources = [p.source for p in guided_row]
        output = guided.output_positions[b]
        conductance = _example_conductance(ip, request, b, sources, kinds)
        contributions = (
            request_contributions(ip, request, b, output) if decompose else None
        )
        routes, route_scores = route_patterns(
            specs, attention[b], guided_row, output, conductance, contributions
        )
        patterns.append({"guided": list(guided_row), **routes})
        scores.append(route_scores)
    return patterns, scores


def route_patterns(
    specs: Sequence[Tuple[str, RouteSpec]],
    attention: Tensor,
    guided: Sequence[Pattern],
    output_position: int,
    conductance: Optional[Dict[str, Tensor]] = None,
    contributions: Optional[Contributions] = None,
) -> Tuple[Dict[str, List[Pattern]], Dict[str, List[float]]]:
    """The unscored reference routes of one example's sources, and their own scores.

    Args:
        specs (sequence): ``(name, RouteSpec)`` pairs (:func:`resolve_methods`).
        attention (Tensor): (L, A, T, T) probabilities of the example.
        guided (sequence of Pattern): The guided patterns, one per source: their
            sources, signs and token influences.
        output_position (int): The output position every route ends at.
        conductance (dict, optional): Conductance kind (``"sources"`` or
            ``"positions"``, :attr:`.finders.RouteFinder.conductance`) -> layer
            conductance, for the conductance routes. Default: None
        contributions (Contributions, optional): The example's decompositions, for
            the contribution routes. Default: None

    Returns:
        (dict, dict): route name -> patterns in source order; route name -> each
        route's own score.
    """
    sources = [p.source for p in guided]
    patterns: Dict[str, List[Pattern]] = {}
    scores: Dict[str, List[float]] = {}
    for name, spec in specs:
        routes = reference_routes(
            spec,
            attention,
            sources,
            output_position,
            (conductance or {}).get(ROUTE_FINDERS[spec.search].conductance),
            [p.sign for p in guided],
            contributions,
        )
        patterns[name] = [
            route_pattern(
                name,
                route.positions,
                chosen_nodes(route)
                if route.nodes is not None
                else route_nodes(
                    attention,
                    route.positions,
                    spec.skip_threshold,
                    _node_orientation(spec),
                ),
                guide.token_influence,
                guide.sign,
            )
            for route, guide in zip(routes, guided)
        ]
        scores[name] = [route.score for route in routes]
    return patterns, scores


def chosen_nodes(route: Route) -> List[PatternNode]:
    """The nodes of a route whose finder chose them (:attr:`Route.nodes`)."""
    return [
        PatternNode(
            layer=layer,
            position=route.positions[layer],
            kind="skip" if head is None else "head",
            head=head,
            influence=math.nan,
            ffn=ffn,
        )
        for layer, (head, ffn) in enumerate(route.nodes or [], start=1)
    ]


def request_contributions(
    ip: InfluencePatterns, request: AttributionRequest, b: int, output_position: int
) -> Contributions:
    """The decompositions of example ``b`` of ``request`` at its input
    (:func:`~.contributions.example_contributions`)."""
    with analysis_mode(ip.model):
        return example_contributions(ip.request_problem(request, b), output_position)


def _node_orientation(spec: RouteSpec) -> Orientation:
    """Rollout, flow and conductance routes read heads in the flow direction."""
    return spec.orientation if ROUTE_FINDERS[spec.search].oriented else "flow"


def _example_conductance(
    ip: InfluencePatterns,
    request: AttributionRequest,
    b: int,
    sources: List[int],
    kinds: set,
) -> Dict[str, Tensor]:
    """Layer conductance of example ``b`` for each kind asked for (``"sources"``:
    one row per source, ``"positions"``: one row, every position interpolated)."""
    if not kinds:
        return {}
    with analysis_mode(ip.model):
        problem = ip.request_problem(request, b)
        return {
            kind: layer_conductance(
                problem,
                sources if kind == "sources" else None,
                request.settings.method,
            )
            for kind in kinds
        }


def _records(
    patterns: List[Dict[str, List[Pattern]]],
    scores: List[Dict[str, List[float]]],
    output_positions: List[int],
) -> List[Dict[str, Any]]:
    """One JSON-safe record per (example, source)."""
    records = []
    for b, example in enumerate(patterns):
        for s, guide in enumerate(example["guided"]):
            record: Dict[str, Any] = {
                "example": b,
                "source": guide.source,
                "output_position": output_positions[b],
                "token_influence": finite(guide.token_influence),
            }
            for name, row in example.items():
                score = scores[b][name][s] if name in scores[b] else None
                record[name] = _pattern_record(row[s], score)
            records.append(record)
    return records


def _pattern_record(pattern: Pattern, score: Optional[float]) -> Dict[str, Any]:
    return {
        "positions": list(pattern.positions),
        "heads": [node.head for node in pattern.nodes],
        "embedding_influence": finite(pattern.embedding_influence),
        "influence": finite(pattern.influence),
        "embedding_sufficiency": finite(
            ratio(pattern.embedding_influence, pattern.token_influence)
        ),
        "sufficiency": finite(ratio(pattern.influence, pattern.token_influence)),
        "score": None if score is None else finite(score),
    }


# ------------------------------------------------------------- deprecated old names
_DEPRECATED = {
    "BASELINES": ("ROUTES", lambda: ROUTES),
    "BaselineSpec": ("RouteSpec", lambda: RouteSpec),
    "BaselineComparison": ("RouteComparison", lambda: RouteComparison),
    "baseline_routes": ("reference_routes", lambda: reference_routes),
}


def __getattr__(name: str) -> Any:
    """The names of the previous release, with a DeprecationWarning (one release)."""
    if name in _DEPRECATED:
        new, value = _DEPRECATED[name]
        warnings.warn(
            f"{name} is deprecated; use {new} ('baseline' now means only the "
            "integrated-gradient reference input)",
            DeprecationWarning,
            stacklevel=2,
        )
        return value()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
