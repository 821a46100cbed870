"""Result objects of an influence-pattern search: nodes, patterns, and the batch result.

Everything here is plain data: floats, ints and lists, with the batch's token influence
as a tensor. ``to_dict`` / ``from_dict`` give a JSON-safe form (never pickle).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Literal, Optional, get_args

import torch
from torch import Tensor

from .utils.files import write_json_atomic
from .viz.ratios import RATIO_NOTE, format_ratio, ratio_floor

#: How a route crosses a layer: the skip connection around attention, or one head.
NodeKind = Literal["skip", "head"]
NODE_KINDS = get_args(NodeKind)
#: In graphs with the MLP split off: through the feed-forward branch, or around it.
FfnKind = Literal["mlp", "residual"]
#: The two pattern levels: positions only (``pi^e``), or positions and nodes (``pi^a``).
Level = Literal["attention", "embedding"]
LEVELS = get_args(Level)


@dataclass
class PatternNode:
    """The node a route passes through at one layer.

    Attributes:
        layer (int): Layer number, 1..L; layer ``l`` maps ``h^{l-1}`` to ``h^l``.
        position (int): Token position ``j_l`` of the node.
        kind (str): ``"skip"`` (the residual around attention) or ``"head"``.
        head (int or None): Head index for ``kind == "head"``, else None.
        influence (float): Influence of the route prefix ending at this node.
        ffn (str, optional): In graphs with the MLP split off: ``"mlp"`` when the route
            goes through the layer's feed-forward branch, ``"residual"`` when around it.
        ffn_influence (float, optional): Influence of the route prefix ending at the
            ``ffn`` node.
    """

    layer: int
    position: int
    kind: NodeKind
    head: Optional[int]
    influence: float
    ffn: Optional[FfnKind] = None
    ffn_influence: Optional[float] = None

    def __post_init__(self) -> None:
        if self.kind not in NODE_KINDS:
            raise ValueError(f"kind must be one of {NODE_KINDS}, got {self.kind!r}")
        if (self.kind == "head") != (self.head is not None):
            raise ValueError("head must be an int exactly when kind == 'head'")


@dataclass
class Pattern:
    """An influence pattern of one source token (docs/method.md, section 6).

    Attributes:
        source (int): Source position ``i`` (equal to ``positions[0]``).
        sign (int): +1, or -1 when the search maximised negative influence (g < 0).
        token_influence (float): ``g(x_i)``, integrated gradients restricted to token i.
        positions (list of int): ``j_0 .. j_L``; ``positions[0]`` is the source and
            ``positions[L]`` the output position (searched, for a pooled QoI).
        position_influence (list of float): For layers 1..L, the influence of the
            embedding-level route prefix ``j_0..j_l`` (the chosen stage-A node).
        embedding_influence (float): ``I(pi^e)``, the embedding-level pattern's
            influence.
        nodes (list of PatternNode): The attention-level route, one node per layer.
        influence (float): ``I(pi^a)``, the attention-level pattern's influence.
        position_candidates (list of list of float): Per layer 1..L, ``I(h^l_j)`` for
            every position j, the distribution stage A chose from.
        node_candidates (list of list of float): Per layer 1..L, the influences of every
            head at ``j_l`` followed by the skip's, the distribution stage B chose from.
        ffn_candidates (list of list of float): With the MLP split off, per layer
            ``[I(mlp), I(residual)]`` at ``j_l``; empty otherwise.
        label (str, optional): Where the route came from ("guided" for the search;
            baselines name themselves).
        alternatives (list of dict): With ``beam_width > 1``, the beam's other
            complete routes, best first, each ``{"positions": [j_0, ..., j_L],
            "embedding_influence": I(pi^e)}``; empty for the greedy search.
    """

    source: int
    sign: int
    token_influence: float
    positions: List[int]
    position_influence: List[float]
    embedding_influence: float
    nodes: List[PatternNode]
    influence: float
    position_candidates: List[List[float]] = field(default_factory=list)
    node_candidates: List[List[float]] = field(default_factory=list)
    ffn_candidates: List[List[float]] = field(default_factory=list)
    label: str = "guided"
    alternatives: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return len(self.nodes)

    @property
    def embedding_sufficiency(self) -> float:
        """``I(pi^e) / g`` (nan when g is 0)."""
        return ratio(self.embedding_influence, self.token_influence)

    @property
    def sufficiency(self) -> float:
        """``I(pi^a) / g`` (nan when g is 0)."""
        return ratio(self.influence, self.token_influence)

    def route_description(self) -> str:
        """The attention-level route in words, e.g. ``"skip x5, head 3 at layer 6"``."""
        parts: List[str] = []
        run = 0
        for node in self.nodes:
            if node.kind == "skip":
                run += 1
                continue
            if run:
                parts.append(f"skip x{run}")
                run = 0
            parts.append(
                f"head {node.head} at layer {node.layer} " f"(pos {node.position})"
            )
        if run:
            parts.append(f"skip x{run}")
        through_mlp = [str(n.layer) for n in self.nodes if n.ffn == "mlp"]
        if any(n.ffn is not None for n in self.nodes):
            parts.append(f"MLP at layers {', '.join(through_mlp) or 'none'}")
        return ", ".join(parts)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Pattern":
        data = dict(data)
        data["nodes"] = [PatternNode(**node) for node in data["nodes"]]
        return cls(**data)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0 else float("nan")


@dataclass
class InfluencePatternsResult:
    """What :meth:`InfluencePatterns.attribute` returns for a batch.

    Attributes:
        token_influence (Tensor): (B, T) ``g`` at every position (sources or not).
        patterns (list of list of Pattern): ``patterns[b]`` in source order.
        output_positions (list of int or None): The output position of each example
            (None for a pooled QoI, whose last layer was searched).
        input_ids (list of list of int): The explained token ids.
        convergence_delta (Tensor, optional): (B,) completeness error
            ``sum_j g_j - (QoI(x) - QoI(x'))`` over all positions, when asked for.
        tokens (list of list of str, optional): Token strings for display.
        metadata (dict): n_steps, method, schedule and similar settings.
    """

    token_influence: Tensor
    patterns: List[List[Pattern]]
    output_positions: List[Optional[int]]
    input_ids: List[List[int]]
    convergence_delta: Optional[Tensor] = None
    tokens: Optional[List[List[str]]] = None
    metadata: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.patterns)

    def set_tokens(self, tokenizer: Any) -> "InfluencePatternsResult":
        """Fill :attr:`tokens` from a Hugging Face tokenizer; returns self."""
        self.tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in self.input_ids]
        return self

    def token_labels(self, example: int = 0) -> List[str]:
        """Token strings of one example, or ``"#j"`` placeholders without tokens."""
        if self.tokens is not None:
            return list(self.tokens[example])
        return [f"#{j}" for j in range(len(self.input_ids[example]))]

    def pattern(self, example: int, source: int) -> Pattern:
        """The pattern of ``source`` in ``example``."""
        for pattern in self.patterns[example]:
            if pattern.source == source:
                return pattern
        raise KeyError(f"position {source} is not a source of example {example}")

    def to_dict(self) -> Dict[str, Any]:
        delta = self.convergence_delta
        return {
            "token_influence": self.token_influence.tolist(),
            "patterns": [[p.to_dict() for p in row] for row in self.patterns],
            "output_positions": list(self.output_positions),
            "input_ids": [list(ids) for ids in self.input_ids],
            "convergence_delta": None if delta is None else delta.tolist(),
            "tokens": self.tokens,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "InfluencePatternsResult":
        delta = data.get("convergence_delta")
        return cls(
            token_influence=torch.tensor(data["token_influence"], dtype=torch.float64),
            patterns=[[Pattern.from_dict(p) for p in row] for row in data["patterns"]],
            output_positions=list(data["output_positions"]),
            input_ids=[list(ids) for ids in data["input_ids"]],
            convergence_delta=(
                None if delta is None else torch.tensor(delta, dtype=torch.float64)
            ),
            tokens=data.get("tokens"),
            metadata=dict(data.get("metadata", {})),
        )

    def save_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as JSON atomically (no half-written file)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> "InfluencePatternsResult":
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def table(self, example: int = 0) -> str:
        """A per-token table: token, g, I(pi^e)/g, I(pi^a)/g and the route.

        Ratios of tokens with ``|g|`` under 1% of the example's ``sum |g|`` show as
        "-" (:mod:`~captum_influence_patterns.viz.ratios`), with a footnote.
        """
        labels = self.token_labels(example)
        floor = ratio_floor(p.token_influence for p in self.patterns[example])
        width = max([len("token")] + [len(t) for t in labels])
        header = (
            f"{'pos':>3}  {'token':<{width}}  {'g':>10}  {'I(e)/g':>7}  "
            f"{'I(a)/g':>7}  route"
        )
        lines = [
            _output_line(example, self.output_positions[example], labels)
            + _baseline_note(self.metadata.get("baseline")),
            header,
            "-" * len(header),
        ]
        for p in self.patterns[example]:
            e_ratio = format_ratio(p.embedding_sufficiency, p.token_influence, floor)
            a_ratio = format_ratio(p.sufficiency, p.token_influence, floor)
            lines.append(
                f"{p.source:>3}  {labels[p.source]:<{width}}  "
                f"{p.token_influence:>10.4f}  {e_ratio:>7}  {a_ratio:>7}  "
                f"{p.route_description()}"
            )
        if any(abs(p.token_influence) < floor for p in self.patterns[example]):
            lines.append(RATIO_NOTE)
        return "\n".join(lines)

    def __str__(self) -> str:
        return "\n\n".join(self.table(b) for b in range(len(self)))

    def plot(self, example: int = 0, **kwargs: Any) -> Any:
        """Draw one example's patterns; see :func:`visualize_pattern`."""
        from .viz.plots import visualize_pattern

        return visualize_pattern(self, example=example, **kwargs)

    def to_html(self, example: int = 0, routes: Any = None) -> str:
        """The interactive route viewer of one example as a self-contained page; see
        :func:`~captum_influence_patterns.viz.interactive.viewer_html`."""
        from .viz.interactive import viewer_html

        return viewer_html(self, example=example, routes=routes)

    def _repr_html_(self) -> str:
        """Jupyter: the route viewer of example 0, in a sandboxed frame."""
        from .viz.interactive import viewer_iframe

        return viewer_iframe(self)


# ------------------------------------------------------------------ convergence
#: Default tolerance on ``|convergence delta| / |QoI(x) - QoI(x')|``.
DEFAULT_TOLERANCE = 0.05


class ConvergenceWarning(UserWarning):
    """An attribution did not converge within the tolerance (numbers in the text)."""


@dataclass
class Convergence:
    """How one example's integral converged.

    Attributes:
        n_steps (int): The steps of the reported result.
        delta (float): ``sum_j g_j - (QoI(x) - QoI(x'))`` at those steps.
        qoi_difference (float): ``QoI(x) - QoI(x')``.
        relative (float): ``|delta| / |qoi_difference|`` (inf when the difference
            is zero and the delta is not).
        tolerance (float): The tolerance it was checked against.
        converged (bool): ``relative <= tolerance``.
        tried (list of [int, float]): Every (n_steps, relative) tried, in order.
    """

    n_steps: int
    delta: float
    qoi_difference: float
    relative: float
    tolerance: float
    converged: bool
    tried: List[List[float]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Convergence":
        return cls(**data)

    def describe(self) -> str:
        """One line: the relative delta, the steps, and whether it converged."""
        verdict = "converged" if self.converged else "NOT CONVERGED"
        steps = ", ".join(f"{int(n)}: {r:.1%}" for n, r in self.tried)
        return (
            f"convergence: |delta|/|dQoI| = {self.relative:.2%} at {self.n_steps} "
            f"steps (delta {self.delta:+.3g}, dQoI {self.qoi_difference:+.4g}, "
            f"tolerance {self.tolerance:.0%}): {verdict}"
            + (f" (tried {steps})" if len(self.tried) > 1 else "")
        )


def relative_delta(delta: float, qoi_difference: float) -> float:
    """``|delta| / |qoi_difference|``; 0 when both are 0, inf when only it is."""
    if qoi_difference == 0:
        return 0.0 if delta == 0 else float("inf")
    return abs(delta) / abs(qoi_difference)


def example_convergence(
    g_sum: float, delta: float, n_steps: int, tolerance: float = DEFAULT_TOLERANCE
) -> Convergence:
    """The :class:`Convergence` of one example from ``sum_j g_j`` and its delta."""
    difference = g_sum - delta
    relative = relative_delta(delta, difference)
    return Convergence(
        n_steps, delta, difference, relative, tolerance, relative <= tolerance,
        [[n_steps, relative]],
    )


def result_convergence(
    result: "InfluencePatternsResult", tolerance: float = DEFAULT_TOLERANCE
) -> List[Convergence]:
    """The :class:`Convergence` of every example of a result computed with
    ``return_convergence_delta=True``."""
    if result.convergence_delta is None:
        raise ValueError(
            "result: no convergence delta; attribute with return_convergence_delta"
            "=True"
        )
    steps = int(result.metadata["n_steps"])
    return [
        example_convergence(float(result.token_influence[b].sum()), delta, steps,
                            tolerance)
        for b, delta in enumerate(result.convergence_delta.tolist())
    ]


class Attributions(Tensor):
    """Captum's LayerIntegratedGradients attributions, (B, T, D) on the output of the
    interpolated layer, that also carry the search's result.

    :attr:`result` is the :class:`InfluencePatternsResult`, and its attributes read
    through (``attributions.patterns``, ``attributions.table(0)``); ``str`` gives its
    tables. Operations return plain tensors (``attributions.sum(-1)`` is ``g``).
    """

    result: InfluencePatternsResult
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def of(values: Tensor, result: InfluencePatternsResult) -> "Attributions":
        attributions = values.as_subclass(Attributions)
        attributions.result = result
        return attributions

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "result":
            raise AttributeError(name)
        return getattr(self.result, name)

    def __str__(self) -> str:
        return str(self.result)

    def _repr_html_(self) -> str:  # Jupyter looks it up on the class, not through
        return self.result._repr_html_()

    def __deepcopy__(self, memo: Dict[int, Any]) -> "Attributions":
        values = self.as_subclass(Tensor).clone()
        return Attributions.of(values, copy.deepcopy(self.result, memo))

    def __reduce_ex__(self, protocol: Any) -> Any:
        return Attributions.of, (self.as_subclass(Tensor), self.result)


class AttributionsAndDelta(tuple):
    """``(attributions, delta)``, what LayerIntegratedGradients returns with
    ``return_convergence_delta=True``: :class:`Attributions` and the (B,)
    completeness error. Attributes read through to ``attributions.result``."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self[0], name)

    def __str__(self) -> str:
        return str(self[0])

    def _repr_html_(self) -> str:
        return self[0]._repr_html_()


def _baseline_note(baseline: Any) -> str:
    """The baseline, where one description covers every position (a given tensor of
    ids is the caller's own)."""
    if isinstance(baseline, str):
        return f"; baseline: {baseline}"
    if isinstance(baseline, int):
        return f"; baseline: token id {baseline} at every position"
    return ""


def _output_line(example: int, position: Optional[int], labels: List[str]) -> str:
    if position is None:
        return f"example {example}: pooled QoI (the last layer's position is searched)"
    return f"example {example}: output position {position} ({labels[position]})"
