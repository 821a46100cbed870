"""Integration rules along the straight-line path ``x(alpha) = x' + alpha (x - x')``.

Every influence is ``sum_k w_k f(alpha_k)`` for a rule's points ``alpha_k`` and weights
``w_k``. Captum's rules (``gausslegendre``, ``riemann_*``) come from Captum; this module
adds the rule of the authors' released code:

- ``"authors"``: ``n_steps`` points ``linspace(0, 1, n_steps)``, both endpoints
  included, each with weight ``1 / n_steps``. It is what the paper's code computes
  (with ``n_steps = 51``), so it reproduces their numbers. It is biased: the endpoints
  count in full where the trapezoid rule halves them, an error of order ``1 / n_steps``
  (completeness off by a few percent) where Gauss-Legendre's is negligible.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Tuple

from .utils._captum_compat import SUPPORTED_METHODS, approximation_parameters

AUTHORS = "authors"
METHODS: Tuple[str, ...] = (*SUPPORTED_METHODS, AUTHORS)
"""Every accepted ``method``: Captum's approximation methods and ``"authors"``."""


@dataclass(frozen=True)
class IntegrationSettings:
    """What every pass of an example shares: the rule and the rows per pass.

    Built once, validated, by ``_validation.validate_settings`` from the keyword
    arguments of :meth:`~.request.RequestBuilder.request`; every pass, route scorer
    and ablation of that request takes this one object. Its defaults are those of
    every entry point (Captum's LayerIntegratedGradients' ``n_steps`` and
    ``method``), written here once (:data:`DEFAULT_N_STEPS`, :data:`DEFAULT_METHOD`).

    Attributes:
        n_steps (int): Interpolation points. Default: 50
        method (str): One of :data:`METHODS`. Default: ``"gausslegendre"``
        internal_batch_size (int, optional): Most rows per pass (memory only).
    """

    n_steps: int = 50
    method: str = "gausslegendre"
    internal_batch_size: Optional[int] = None


#: The default ``n_steps`` and ``method`` of every entry point: those of
#: :class:`IntegrationSettings`.
DEFAULT_N_STEPS: int = IntegrationSettings.n_steps
DEFAULT_METHOD: str = IntegrationSettings.method


def min_steps(method: str) -> int:
    """The fewest ``n_steps`` ``method`` accepts: 2 for ``"authors"`` (one point of
    ``linspace(0, 1, 1)`` is the baseline alone, the input never visited) and for
    Captum's Riemann rules (their step sizes divide by ``n_steps - 1``), else 1."""
    return 2 if method == AUTHORS or method.startswith("riemann") else 1


#: The most interpolation points accepted: far beyond any useful rule (Gauss-Legendre
#: converges with tens), and small enough for the rule's tables and each pass's rows.
MAX_STEPS = 100_000


def check_rule(method: str, n_steps: int) -> None:
    """Raise a ValueError naming the argument for an unknown ``method`` or too few
    (or more than :data:`MAX_STEPS`) ``n_steps`` for it."""
    if n_steps > MAX_STEPS:
        raise ValueError(
            f"n_steps: at most {MAX_STEPS} interpolation points, got {n_steps}; tens "
            "to hundreds are enough (raise them until completeness holds)"
        )
    if method not in METHODS:
        raise ValueError(
            f"method: unknown approximation method {method!r}; use one of "
            f"{', '.join(METHODS)}"
        )
    if n_steps < min_steps(method):
        raise ValueError(
            f"n_steps: method {method!r} needs n_steps >= {min_steps(method)}, got "
            f"{n_steps}; pass more steps or method='gausslegendre'"
        )


def integration_rule(method: str, n_steps: int) -> Tuple[List[float], List[float]]:
    """Points and weights of ``method``'s rule with ``n_steps`` points.

    Args:
        method (str): One of :data:`METHODS`.
        n_steps (int): Number of points, at least :func:`min_steps`.

    Returns:
        (alphas, weights): two lists of ``n_steps`` floats.

    Raises:
        ValueError: for an unknown method or too few steps.
    """
    alphas, weights = _rule(method, n_steps)
    return list(alphas), list(weights)


@lru_cache(maxsize=None)
def _rule(method: str, n_steps: int) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The rule, checked and computed once per (method, n_steps), not per example."""
    check_rule(method, n_steps)
    if method == AUTHORS:
        alphas = [k / (n_steps - 1) for k in range(n_steps)]
        return tuple(alphas), (1.0 / n_steps,) * n_steps
    step_sizes, points = approximation_parameters(method)
    return tuple(points(n_steps)), tuple(step_sizes(n_steps))
