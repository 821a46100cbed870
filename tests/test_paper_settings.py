"""paper/settings.py: bad evaluation settings are refused when they are made, and a
run's duration is estimated from the measured seconds."""

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


def test_evaluate_estimates_its_duration_from_the_measured_seconds() -> None:
    from captum_influence_patterns.paper.settings import EvaluationSettings, estimate

    # 120 sentences x (1.45 s search + 6.1 s routes) x 20/50 steps = 362 s
    line = estimate(EvaluationSettings(n_steps=20, routes=("greedy",)), 120)
    assert line.startswith("120 item(s): about 6 min") and "(3.0 s each" in line
    line = estimate(EvaluationSettings(n_steps=50, optimality=20), 60)
    assert line.startswith("60 item(s): about 10 min")  # 60 x 10.45 s = 627 s
    # a decoder reads SmolLM2's: 600 x (12.3 + 51.4) s = 637 min
    line = estimate(EvaluationSettings(n_steps=50, routes=("alti",)), 600, "causal_lm")
    assert line.startswith("600 item(s): about 637 min") and "SmolLM2" in line
    assert "needs 100 steps takes about twice as long" in line
    # run 2's settings: 60 x (12.3 + 52.0) s = 64 min
    line = estimate(EvaluationSettings(n_steps=50, optimality=20), 60, "causal_lm")
    assert line.startswith("60 item(s): about 64 min")
