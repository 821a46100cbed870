"""Test settings (tiny models run fastest on one thread, and plots need no display) and
the tiny checkpoints on disk, saved once per session."""

from typing import Dict, Tuple

import matplotlib
import pytest
import torch

from captum_influence_patterns.testing import save_tiny_checkpoints

matplotlib.use("Agg")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> Tuple[str, Dict[str, str]]:
    """A temporary root and the directories of the tiny checkpoints saved in it."""
    root = str(tmp_path_factory.mktemp("checkpoints"))
    return root, save_tiny_checkpoints(root)


@pytest.fixture(scope="class")
def class_checkpoints(request, tiny_checkpoints) -> None:
    """Sets ``root`` and ``paths`` on a test class."""
    request.cls.root, request.cls.paths = tiny_checkpoints
