"""Convergence of the path integral, checked and never assumed.

Integrated gradients satisfy completeness, ``sum_j g_j = QoI(x) - QoI(x')``, only in
the limit of many steps. The gap (Captum's convergence delta) relative to the QoI
difference says whether ``n_steps`` was enough: on a real language model a poor
baseline makes the QoI swing along the path, and 50 steps can give a ``g`` with the
wrong sign (docs/decoders.md). Every influence of a pattern is an integral along the
same path, so a pattern is only as sound as its ``g``.

:func:`attribute_converged` runs :meth:`InfluencePatterns.search` on a request,
checks ``|delta| / |QoI(x) - QoI(x')|`` per example against a tolerance (5% by default),
and, above it, doubles ``n_steps`` up to a limit: the doubling is tried on ``g`` alone
(one reverse pass, the cost of one LayerIntegratedGradients call), and the search
runs again only once at the step count that converges. A result that does not
converge within the limit is flagged (a :class:`ConvergenceWarning` with the numbers,
``converged: false`` in its metadata) or refused (``strict=True``).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import replace
from typing import Any, Dict, Sequence, Tuple

from .attribution import InfluencePatterns
from .graph import analysis_mode
from .influence import token_influence
from .request import AttributionRequest, expect_request
from .results import (  # noqa: F401 - the convergence API, re-exported
    DEFAULT_TOLERANCE,
    Convergence,
    ConvergenceWarning,
    InfluencePatternsResult,
    relative_delta,
    result_convergence,
)

#: Default most ``n_steps`` the doubling reaches.
DEFAULT_MAX_STEPS = 400


class ConvergenceError(ValueError):
    """An attribution did not converge and ``strict=True`` refused it."""


def token_influence_convergence(
    ip: InfluencePatterns, request: AttributionRequest, n_steps: int, b: int = 0
) -> Tuple[float, float]:
    """(delta, QoI difference) of ``g`` alone for example ``b`` at ``n_steps``: one
    reverse pass over the steps, no search."""
    expect_request(request)
    settings = replace(request.settings, n_steps=n_steps)
    with analysis_mode(ip.model):
        problem = ip.request_problem(request, b, settings)
        end, start = problem.endpoint_qoi()
        g, _ = token_influence(problem)
    difference = end - start
    return float(g.double().sum()) - difference, difference


def check_tolerance(tolerance: float, max_steps: int) -> None:
    """Refuse a tolerance outside (0, 1] or a step limit under 1."""
    if isinstance(tolerance, bool) or not 0 < float(tolerance) <= 1:
        raise ValueError(
            f"tolerance: expected a fraction in (0, 1] of |QoI(x) - QoI(x')|, got "
            f"{tolerance!r}"
        )
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps: expected an int >= 1, got {max_steps!r}")


def attribute_converged(
    ip: InfluencePatterns,
    request: AttributionRequest,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    max_steps: int = DEFAULT_MAX_STEPS,
    strict: bool = False,
    **attribute_kwargs: Any,
) -> InfluencePatternsResult:
    """:meth:`InfluencePatterns.search` with ``n_steps`` doubled until every
    example's ``|delta| / |QoI(x) - QoI(x')|`` is within ``tolerance``.

    Args:
        ip: The attribution.
        request: Its validated request (:meth:`InfluencePatterns.request`); its
            ``n_steps`` is the first count tried.
        tolerance: Largest accepted relative delta. Default: 0.05
        max_steps: Most steps the doubling reaches (the first count is always
            tried). Default: 400
        strict: Raise :class:`ConvergenceError` instead of warning when an example
            does not converge. Default: False
        **attribute_kwargs: Further arguments of ``search`` (``sources``,
            ``schedule``, ``show_progress``, ``beam_width``).

    Returns:
        InfluencePatternsResult: at the step count used, with the convergence delta,
        and ``metadata["convergence"]``: one :meth:`Convergence.to_dict` per example
        (``n_steps``, ``delta``, ``qoi_difference``, ``relative``, ``converged``,
        ``tried``).

    Raises:
        ConvergenceError: ``strict`` and an example did not converge.
        TypeError: for a ``request`` that is not an :class:`AttributionRequest`.
        ValueError: a bad ``tolerance`` or ``max_steps``, and as ``attribute``.
    """
    expect_request(request)
    check_tolerance(tolerance, max_steps)
    attribute_kwargs["return_convergence_delta"] = True
    result = _attribute_quietly(ip, request, attribute_kwargs)
    report = result_convergence(result, tolerance)
    steps = request.settings.n_steps
    histories = [list(c.tried) for c in report]
    while not all(c.converged for c in report) and steps * 2 <= max_steps:
        steps *= 2
        for b, history in enumerate(histories):
            delta, difference = token_influence_convergence(ip, request, steps, b)
            history.append([steps, relative_delta(delta, difference)])
        if all(history[-1][1] <= tolerance for history in histories):
            settings = replace(request.settings, n_steps=steps)
            request = replace(request, settings=settings)
            result = _attribute_quietly(ip, request, attribute_kwargs)
            report = result_convergence(result, tolerance)
    for c, history in zip(report, histories):
        if history[-1][0] == c.n_steps:
            history[-1][1] = c.relative  # the search's own g, not the check's
        c.tried = history
    result.metadata["convergence"] = [c.to_dict() for c in report]
    failed = [(b, c) for b, c in enumerate(report) if not c.converged]
    if failed:
        message = "; ".join(f"example {b}: {c.describe()}" for b, c in failed)
        message += (
            f". The attribution is unreliable: raise max_steps (now {max_steps}) or "
            "choose a baseline nearer the input"
        )
        if strict:
            raise ConvergenceError(message)
        warnings.warn(message, ConvergenceWarning, stacklevel=2)
    return result


def _attribute_quietly(
    ip: InfluencePatterns, request: AttributionRequest, kwargs: Dict[str, Any]
) -> InfluencePatternsResult:
    """``attribute``'s result without its own ConvergenceWarning: the doubling
    decides, and warns once with every count it tried."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return ip.search(request, **kwargs).result


def records_convergence(records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """How the evaluation records' integrals converged: ``n`` records with a
    ``convergence`` entry (records written before the check have none), how many
    ``converged``, the ids of those that did not, the distribution of ``n_steps``
    used, and the largest relative delta."""
    entries = [(r.get("id"), r["convergence"]) for r in records if r.get("convergence")]
    steps = Counter(int(entry["n_steps"]) for _, entry in entries)
    return {
        "n": len(entries),
        "without_check": len(records) - len(entries),
        "converged": sum(bool(entry["converged"]) for _, entry in entries),
        "unconverged_ids": [i for i, entry in entries if not entry["converged"]],
        "steps": {str(k): steps[k] for k in sorted(steps)},
        "max_relative": max((float(e["relative"]) for _, e in entries), default=None),
    }
