"""models/explanation.py: ``explain`` refuses a request built for another text or with
other integration settings."""

from __future__ import annotations

import pytest

from captum_influence_patterns.paper import example


def test_explain_refuses_a_request_of_another_text(loaded, items, evaluation_settings):
    from captum_influence_patterns.attribution import InfluencePatterns
    from captum_influence_patterns.models.explanation import explain

    first, second = (
        example._prepare(loaded, item, evaluation_settings) for item in items[:2]
    )
    ip = InfluencePatterns(first.forward_func, loaded.model)
    with pytest.raises(ValueError, match="request: built for other token ids"):
        explain(loaded, first, attribution=ip, request=second.request(ip, n_steps=4))
    with pytest.raises(ValueError, match="n_steps: the request carries them"):
        explain(loaded, first, 8, attribution=ip, request=first.request(ip, n_steps=4))
