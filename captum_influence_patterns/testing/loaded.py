"""A tiny model as :func:`~captum_influence_patterns.models.loading.load_model` returns
it, for tests of what runs on a loaded model (evaluations, merges, the command line)."""

from __future__ import annotations

from ..models.embedded import load_embedded_tokenizer
from ..models.loading import LoadedModel
from .models import masked_lm


def tiny_loaded_model(name: str = "tiny") -> LoadedModel:
    """A tiny random BERT masked LM on the embedded model's tokenizer (the real
    uncased BERT vocabulary, so the agreement tasks tokenize as for the embedded
    model), as a :class:`LoadedModel` of kind ``"masked_lm"``.

    Raises:
        EmbeddedModelMissing: The embedded model's package (the ``embedded`` extra),
            which ships the tokenizer, is not installed.
    """
    tokenizer = load_embedded_tokenizer()
    model = masked_lm("bert", vocab_size=tokenizer.vocab_size)
    return LoadedModel(model=model, tokenizer=tokenizer, kind="masked_lm", name=name)
