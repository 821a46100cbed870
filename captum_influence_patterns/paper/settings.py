"""What an evaluation computes per example (:class:`EvaluationSettings`, everything that
changes a result line) and how long it takes (:func:`estimate`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from .ablation import REFERENCES
from .._validation import validate_settings
from ..convergence import DEFAULT_MAX_STEPS, DEFAULT_TOLERANCE, check_tolerance
from ..quadrature import DEFAULT_METHOD, DEFAULT_N_STEPS
from ..models.explanation import BASELINES as INPUT_BASELINES
from ..results import LEVELS
from ..routes.compare import ROUTES
from ..routes.finders import ORIENTATIONS
from .datasets import EvaluationError


#: Word roles explained by default (``sources="roles"``): the subject, the attractor
#: and the verbs. Other positions are explained with ``sources="all"``.
ROLE_SOURCES = ("subject", "attractor", "rc_verb", "matrix_verb", "verb")


#: Levels of the ablation (see :mod:`.ablation`).
ABLATION_LEVELS = LEVELS


@dataclass
class EvaluationSettings:
    """What is computed per example (everything that changes a result line).

    Attributes:
        n_steps (int): Interpolation points.
        method (str): Captum approximation method.
        sources (str): ``"all"`` (every token, as the authors do: every position
            but the output, plus the output position where its embedding differs
            from the baseline's), ``"roles"`` (the positions of :data:`ROLE_SOURCES`;
            every non-special position when an example has no roles) or
            comma-separated role names.
        baseline (str): Baseline input: ``"mask"``, ``"pad"`` or ``"zero"``.
        routes (tuple of str): Reference routes to compute and score
            (:data:`~..routes.compare.ROUTES`); empty for none.
        route_orientation (str): Orientation of the attention routes: ``"flow"``
            (the direction information flows) or ``"attends"`` (what a token attends
            to, as in the authors' released code).
        optimality (int): Random routes per source (of each kind) for the
            optimality test (:func:`~..optimality.optimality_test`, every opponent);
            0 for none.
        ablation (bool): Ablate the subject's route and the union of routes of the
            guided patterns and every reference route
            (:func:`~.ablation.ablation_record`).
        references (tuple of str): Ablation reference values, ``"mean"`` and/or
            ``"zero"``.
        ablation_level (str): ``"attention"`` or ``"embedding"`` (which nodes a route
            keeps, see :mod:`.ablation`).
        faithfulness (bool): Score the token attributions of g and the reference
            methods against removals of the scored tokens
            (:func:`~.faithfulness.faithfulness_record`).
        internal_batch_size (int, optional): Rows per pass (memory only).
        tolerance (float): Largest accepted ``|convergence delta| / |dQoI|``; above
            it ``n_steps`` is doubled for that sentence (:mod:`~..convergence`),
            and every later phase runs at the steps used.
        max_steps (int): Most steps the doubling reaches; a sentence that does not
            converge is recorded with ``converged: false``.
    """

    n_steps: int = DEFAULT_N_STEPS
    method: str = DEFAULT_METHOD
    sources: str = "all"
    baseline: str = "mask"
    routes: Tuple[str, ...] = ()
    route_orientation: str = "flow"
    optimality: int = 0
    ablation: bool = False
    references: Tuple[str, ...] = ("mean",)
    ablation_level: str = "attention"
    internal_batch_size: Optional[int] = None
    faithfulness: bool = False
    tolerance: float = DEFAULT_TOLERANCE
    max_steps: int = DEFAULT_MAX_STEPS

    def __post_init__(self) -> None:
        self.routes = tuple(self.routes)
        self.references = tuple(self.references)
        try:
            validate_settings(self.n_steps, self.method, self.internal_batch_size)
            check_tolerance(self.tolerance, self.max_steps)
        except ValueError as error:
            raise EvaluationError(str(error)) from error
        unknown = [name for name in self.routes if name not in ROUTES]
        if unknown:
            raise EvaluationError(f"routes: unknown {unknown}; use {', '.join(ROUTES)}")
        _choose("route_orientation", self.route_orientation, ORIENTATIONS)
        if (
            isinstance(self.optimality, bool)
            or not isinstance(self.optimality, int)
            or self.optimality < 0
        ):
            raise EvaluationError(
                f"optimality: expected an int >= 0 (random routes per source), got "
                f"{self.optimality!r}"
            )
        bad = [name for name in self.references if name not in REFERENCES]
        if bad or not self.references:
            raise EvaluationError(
                f"references: expected some of {REFERENCES}, got {bad}"
            )
        _choose("baseline", self.baseline, INPUT_BASELINES)
        _choose("ablation_level", self.ablation_level, ABLATION_LEVELS)
        if not isinstance(self.sources, str) or not self.sources.strip(" ,"):
            raise EvaluationError(
                "sources: expected 'roles', 'all' or comma-separated role names, "
                f"got {self.sources!r}"
            )

    def fingerprint(self) -> Dict[str, Any]:
        """The settings that change results (``internal_batch_size`` does not)."""
        data = asdict(self)
        data.pop("internal_batch_size")
        if not self.faithfulness:  # results from before the setting resume as they are
            data.pop("faithfulness")
        for name, default in (
            ("tolerance", DEFAULT_TOLERANCE), ("max_steps", DEFAULT_MAX_STEPS)
        ):  # files written before the check carry neither; the defaults match them
            if data[name] == default:
                data.pop(name)
        data["routes"] = list(self.routes)
        data["references"] = list(self.references)
        return data


def _choose(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise EvaluationError(
            f"{name}: expected one of {', '.join(choices)}, got {value!r}"
        )


#: Seconds per item at 50 steps on one CPU thread (docs/performance.md, "The
#: evaluation, per sentence"): the search, and what ``--routes`` (with or without
#: ``--ablation``) and ``--optimality 20`` add to it; for the embedded model on 11-token
#: sentences (an idle thread), and for a decoder, SmolLM2-135M's 6-9-token prefixes
#: (one thread of the shared 2-core machine while other work ran on it).
SECONDS_PER_SENTENCE = {
    "embedded": {"search": 1.45, "routes": 6.1, "optimality": 9.0},
    "causal_lm": {"search": 12.3, "routes": 51.4, "optimality": 52.0},
}
_MEASURED_ON = {
    "embedded": "on one idle CPU thread for the embedded model and 11-token sentences",
    "causal_lm": "on one CPU thread of a shared machine for SmolLM2-135M and 6-9-token "
    "prefixes",
}
#: What the convergence check adds (results/agreement_smollm2/RUNS.md: of its 600
#: prefixes, 147 needed 100 steps or more at the 5% tolerance).
_DOUBLING = {
    "embedded": "",
    "causal_lm": "; a prefix whose integral needs 100 steps takes about twice as long, "
    "as a quarter of SmolLM2's agreement prefixes did",
}


def estimate(settings: EvaluationSettings, count: int, kind: str = "embedded") -> str:
    """A line on how long ``count`` items take, from the measured seconds above;
    ``kind`` is the loaded model's (``"causal_lm"`` for decoders, whose measurements
    are SmolLM2's; any other kind reads the embedded model's)."""
    kind = kind if kind in SECONDS_PER_SENTENCE else "embedded"
    phases = SECONDS_PER_SENTENCE[kind]
    seconds = phases["search"] + (phases["routes"] if settings.routes else 0.0)
    seconds += phases["optimality"] * settings.optimality / 20
    each = seconds * settings.n_steps / 50
    return (
        f"{count} item(s): about {each * count / 60:.0f} min {_MEASURED_ON[kind]} "
        f"({each:.1f} s each, docs/performance.md){_DOUBLING[kind]}; longer inputs, "
        "larger models and a busy machine take several times that"
    )
