"""Test helpers, like ``captum.testing``: tiny models of every supported family, tiny
checkpoints on disk, and assertions with strict length checks.

Tests, benchmarks and scripts import their models from here (never from ``tests``).
"""

from .assertions import ModelState, assert_no_hooks, assert_same_patterns
from .checkpoints import (
    CHECKPOINT_SHAPE,
    MLM_TEXT,
    WORDS,
    broken_checkpoints,
    save_tiny_checkpoints,
    tiny_tokenizer,
)
from .models import (
    FAMILIES,
    MASK_ID,
    MORE_FAMILIES,
    SHAPE,
    VOCAB,
    agreement_batch,
    attribution,
    classifier,
    family_model,
    gated_outputs_equal,
    masked_lm,
    problem,
    run_search,
)

__all__ = [
    "CHECKPOINT_SHAPE",
    "FAMILIES",
    "MASK_ID",
    "MLM_TEXT",
    "MORE_FAMILIES",
    "ModelState",
    "SHAPE",
    "VOCAB",
    "WORDS",
    "agreement_batch",
    "assert_no_hooks",
    "assert_same_patterns",
    "attribution",
    "broken_checkpoints",
    "classifier",
    "family_model",
    "gated_outputs_equal",
    "masked_lm",
    "problem",
    "run_search",
    "save_tiny_checkpoints",
    "tiny_tokenizer",
]
