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


@pytest.fixture
def class_checkpoints_paths(tiny_checkpoints) -> Dict[str, str]:
    """The directories of the tiny checkpoints, by kind."""
    return tiny_checkpoints[1]


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory):
    """The tiny Llama GGUF written by the tests (a byte-level BPE where " are" and
    " is" are one token each), loaded in float64; skips without the ``gguf``
    package."""
    pytest.importorskip("gguf")
    from captum_influence_patterns.models.gguf import CACHE_ENV
    from captum_influence_patterns.models.loading import load_model
    from captum_influence_patterns.testing.gguf_files import write_tiny_gguf

    root = tmp_path_factory.mktemp("decoder")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(root / "cache"))
        path = str(root / "tiny.gguf")
        write_tiny_gguf(path)
        loaded = load_model(path, dtype="float64")
    return loaded


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


#: The output position of :func:`routes_setting`'s sentences, and its token ids.
ROUTES_OUTPUT, ROUTES_MASK, ROUTES_CORRECT, ROUTES_WRONG = 4, 3, 10, 11


@pytest.fixture(scope="session")
def routes_setting():
    """A random BERT masked LM (3 layers, 32 hidden, 4 heads), two sentences of 6 tokens
    with [MASK] at position 4, and :func:`~captum_influence_patterns.routes.compare.compare`
    of every route on them at 8 steps: ``(model, ip, ids, args, result)``."""
    from transformers import BertConfig, BertForMaskedLM

    from captum_influence_patterns import InfluencePatterns, masked_lm_logit_difference
    from captum_influence_patterns.routes.compare import ROUTES, compare

    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                   intermediate_size=64, vocab_size=60)
    ).double()
    output, mask = ROUTES_OUTPUT, ROUTES_MASK
    ids = torch.randint(5, 60, (2, 6))
    ids[:, output] = mask
    args = (
        torch.tensor([output, output]),
        torch.tensor([ROUTES_CORRECT, 12]),
        torch.tensor([ROUTES_WRONG, 13]),
    )
    ip = InfluencePatterns(masked_lm_logit_difference(model), model)
    result = compare(
        ip,
        ip.request(ids, mask, None, args, output_position=output, n_steps=8),
        methods=list(ROUTES),
    )
    return model, ip, ids, args, result
