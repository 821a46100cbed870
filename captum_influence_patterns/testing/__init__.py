"""Test helpers, like ``captum.testing``: tiny models of every supported family, tiny
checkpoints on disk, assertions with strict length checks, and :func:`check_adapter`,
which runs the library's known-answer and reference-vs-fast checks on a user's model.

Tests, benchmarks and scripts import their models from here (never from ``tests``).
"""

from .adapter import AdapterCheck, check_adapter
from .assertions import (
    ModelState,
    assert_brute_force_influences,
    assert_no_hooks,
    assert_same_patterns,
)
from .checkpoints import (
    CHECKPOINT_SHAPE,
    MLM_TEXT,
    WORDS,
    broken_checkpoints,
    save_tiny_checkpoints,
    tiny_tokenizer,
)
from .loaded import tiny_loaded_model
from .models import (
    FAMILIES,
    MASK_ID,
    MORE_FAMILIES,
    SHAPE,
    VOCAB,
    agreement_batch,
    agreement_keywords,
    attribution,
    classifier,
    family_model,
    gated_outputs_equal,
    masked_lm,
    mean_pooled_qoi,
    problem,
    run_search,
)

__all__ = [
    "AdapterCheck",
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
    "agreement_keywords",
    "assert_no_hooks",
    "assert_brute_force_influences",
    "assert_same_patterns",
    "attribution",
    "broken_checkpoints",
    "check_adapter",
    "classifier",
    "family_model",
    "gated_outputs_equal",
    "masked_lm",
    "mean_pooled_qoi",
    "problem",
    "run_search",
    "save_tiny_checkpoints",
    "tiny_loaded_model",
    "tiny_tokenizer",
]
