"""Test settings (tiny models run fastest on one thread, and plots need no display),
the tiny checkpoints on disk, saved once per session, and the tiny loaded model with
the agreement sentences and evaluation settings that the paper's harness tests share.

The harness's modules are imported inside the fixtures: a test of the core alone does
not import them."""

from typing import Dict, Tuple

import matplotlib
import pytest
import torch

from captum_influence_patterns.testing import save_tiny_checkpoints, tiny_loaded_model

matplotlib.use("Agg")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> Tuple[str, Dict[str, str]]:
    """A temporary root and the directories of the tiny checkpoints saved in it."""
    root = str(tmp_path_factory.mktemp("checkpoints"))
    return root, save_tiny_checkpoints(root)


@pytest.fixture(autouse=True)
def _cli_tests(request) -> None:
    """Gives a test of a :class:`~captum_influence_patterns.testing.cli.CliTests`
    class the tiny checkpoints and a folder of its own."""
    if request.instance is None:
        return
    from captum_influence_patterns.testing.cli import CliTests

    if isinstance(request.instance, CliTests):
        root, paths = request.getfixturevalue("tiny_checkpoints")
        request.instance.use(root, paths, request.node.name)


@pytest.fixture(scope="class")
def class_checkpoints(request, tiny_checkpoints) -> None:
    """Sets ``root`` and ``paths`` on a test class."""
    request.cls.root, request.cls.paths = tiny_checkpoints


#: How many sentences :func:`items` holds.
ITEMS = 6


@pytest.fixture(scope="module")
def loaded():
    """A tiny random BERT masked LM on the real (uncased BERT) vocabulary."""
    return tiny_loaded_model()


@pytest.fixture(scope="module")
def items(loaded):
    """The first :data:`ITEMS` sentences of the ``sva_obj_rc`` agreement task."""
    from captum_influence_patterns.paper.datasets import task_items

    return task_items(["sva_obj_rc"], ITEMS, loaded.tokenizer)


@pytest.fixture(scope="session")
def evaluation_settings():
    """Evaluation settings that exercise every part of a record: 4 steps, the roles'
    sources, two reference routes and the ablation against two references."""
    from captum_influence_patterns.paper.settings import EvaluationSettings

    return EvaluationSettings(
        n_steps=4,
        sources="roles",
        routes=("greedy", "rollout"),
        ablation=True,
        references=("mean", "zero"),
    )
