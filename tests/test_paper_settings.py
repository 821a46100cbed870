"""paper/settings.py: bad evaluation settings are refused when they are made."""

from __future__ import annotations

import pytest

from captum_influence_patterns.paper.datasets import EvaluationError
from captum_influence_patterns.paper.settings import EvaluationSettings


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(n_steps=0), "n_steps"),
        (dict(n_steps=1, method="riemann_trapezoid"), "needs n_steps >= 2"),
        (dict(method="simpson"), "method"),
        (dict(baseline="unk"), "baseline"),
        (dict(routes=("nosuch",)), "routes: unknown"),
        (dict(references=()), "references"),
        (dict(ablation_level="neuron"), "ablation_level"),
        (dict(sources=" , "), "sources"),
        (dict(internal_batch_size=0), "internal_batch_size"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(EvaluationError, match=message):
        EvaluationSettings(**settings)
