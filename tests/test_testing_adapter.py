"""check_adapter: passes on every supported family, and catches what it checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from captum_influence_patterns.search import SEARCHES, reference_search
from captum_influence_patterns.testing import (
    AdapterCheck,
    check_adapter,
    classifier,
    family_model,
)

NAMES = [
    "captum",
    "completeness",
    "fast == reference",
    "brute force",
    "attention slots",
    "left as it was",
]


@pytest.mark.parametrize("family", ["bert", "distilbert", "gpt2"])
def test_every_check_passes_on_a_supported_family(family):
    checks = check_adapter(family_model(family, weight_scale=4.0), n_steps=16)
    assert [check.name for check in checks] == NAMES
    assert all(isinstance(check, AdapterCheck) and check.passed for check in checks)


def test_a_classifier_reads_cls():
    checks = check_adapter(classifier(), n_steps=16)
    assert all(check.passed for check in checks)


@pytest.fixture
def wrong_fast_search():
    """A "fast" search that reports every influence 1% too large."""
    saved = SEARCHES["fast"]

    def skewed(problem, sources, output_position, done):
        state, g = reference_search(problem, sources, output_position, done)
        for name in ("position_candidates", "node_candidates"):
            setattr(state, name, getattr(state, name) * 1.01)
        return state, g

    SEARCHES["fast"] = dataclasses.replace(saved, run=skewed, stages=lambda n: ())
    yield
    SEARCHES["fast"] = saved


@pytest.mark.usefixtures("wrong_fast_search")
def test_wrong_fast_influences_are_caught():
    with pytest.raises(AssertionError, match="fast == reference: FAILED.*brute force"):
        check_adapter(family_model("bert", weight_scale=4.0), n_steps=8)
    checks = check_adapter(
        family_model("bert", weight_scale=4.0), n_steps=8, raise_on_failure=False
    )
    assert [check.name for check in checks if not check.passed] == [
        "fast == reference",
        "brute force",
    ]


def test_an_unconverged_integral_fails_completeness_with_a_hint():
    with pytest.raises(AssertionError, match="completeness: FAILED.*raise n_steps"):
        check_adapter(family_model("bert", weight_scale=40.0), n_steps=1)
