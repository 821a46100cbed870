"""Faithfulness of token attributions (docs/method.md, section 8.4): ERASER's
comprehensiveness and sufficiency and the Spearman correlation with blank-out, for g
and the token scores of the reference methods, with 95% intervals over sentences.

Token scores (:func:`token_scores`), each a (T,) tensor toward the QoI at the output
position ``t``:

- ``g``: integrated gradients restricted to each token (Captum's
  LayerIntegratedGradients on the word embeddings, which g equals);
- ``gradient_x_input``: ``dQoI/dx_i . x_i`` at the input;
- ``alti``: ALTI rollout ``R^L[t, i]``; ``alti_logit``: ALTI-Logit's
  ``sum_l sum_j Delta^l[j] R^{l-1}[j, i]``; ``attention_norm``: the rollout of the
  attention-norm matrices; ``rollout``: Abnar & Zuidema's ``R[t, i]``;
  ``raw_attention``: the last layer's head-mean attention of ``t`` to ``i``;
- ``random``: scores drawn uniformly (a seeded row every method must beat).

Removals (:data:`BLANKS`): a token is replaced by ``[UNK]`` or ``[MASK]`` (encoders),
or deleted or replaced (decoders). Deleting token ``i`` drops it and pads the sequence
on the left with one masked token, so the output position keeps its index. Blank-out
by the integrated-gradient baseline token (``[MASK]`` for the masked-LM encoders) is
partly circular for g, whose path ends at that token.

Measures (DeYoung et al. 2020, ERASER; the QoI in place of the class probability):
comprehensiveness ``QoI(x) - QoI(x without its top-k tokens)`` and sufficiency
``QoI(x) - QoI(x with only its top-k tokens)``, each averaged over ``k`` (AOPC), top
by descending score among the scored positions; and the Spearman correlation of the
scores with each position's blank-out effect ``QoI(x) - QoI(x with i removed)``.
"""

from __future__ import annotations

import math
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..attribution import InfluencePatterns
from ..influence import token_influence
from ..graph import analysis_mode
from ..request import AttributionRequest
from ..routes.attention import attention_matrices, attention_rollout
from ..routes.compare import request_contributions
from ..routes.contributions import norm_matrices
from .stats import bootstrap, correlation

#: Token-score methods, in the order of the report's table.
TOKEN_METHODS = (
    "g",
    "gradient_x_input",
    "alti",
    "alti_logit",
    "attention_norm",
    "rollout",
    "raw_attention",
    "random",
)
#: Default numbers of top tokens removed or kept (AOPC over k = 1..3).
TOP_K = (1, 2, 3)
#: The removals of each kind of model.
BLANKS = {"encoder": ("unk", "mask"), "decoder": ("deletion", "replacement")}
#: Scalars of one sentence that the summary averages.
MEASURES = ("comprehensiveness", "sufficiency", "spearman")


def token_scores(
    ip: InfluencePatterns,
    request: AttributionRequest,
    b: int,
    output_position: int,
    seed: int = 0,
    g: Optional[Tensor] = None,
) -> Dict[str, Tensor]:
    """The token scores of :data:`TOKEN_METHODS` for example ``b`` (see the module
    docstring): one reverse pass over the integration steps (g, unless given: e.g.
    the ``token_influence`` of the example's attribution) and one decomposed pass
    (:func:`~..routes.compare.request_contributions`), which also gives the
    attention."""
    with analysis_mode(ip.model):
        problem = ip.request_problem(request, b)
        if g is None:
            g, _ = token_influence(problem)
        found = request_contributions(ip, request, b, output_position)
    attention = found.attention
    embeds = problem.baseline_embeds + problem.delta
    norms = norm_matrices(found)
    norm_rollout = torch.eye(norms.shape[-1], dtype=norms.dtype)
    for matrix in norms:
        norm_rollout = matrix @ norm_rollout
    length = embeds.shape[0]
    # seeded by the sentence itself: each sentence its own draw, the same every run
    rng = random.Random(f"{seed}/{request.inputs[b].tolist()}")
    scores = {
        "g": g,
        "gradient_x_input": (found.input_gradient * embeds).sum(-1),
        "alti": found.alti_rollout()[-1, output_position],
        "alti_logit": found.alti_logit().sum((0, 1)),
        "attention_norm": norm_rollout[output_position],
        "rollout": attention_rollout(attention)[output_position],
        "raw_attention": attention_matrices(attention)[-1, output_position],
        "random": torch.tensor([rng.random() for _ in range(length)]),
    }
    return {name: value.detach() for name, value in scores.items()}


def _top(scores: Tensor, positions: Sequence[int], k: int) -> List[int]:
    """The ``k`` scored positions of largest score (ties: the earlier position)."""
    values = [float(scores[j]) for j in positions]
    order = sorted(range(len(positions)), key=lambda n: (-values[n], n))
    return [positions[n] for n in order[:k]]


def _counts(ks: Sequence[float], size: int) -> List[int]:
    """Numbers of tokens: an int as it is, a fraction of ``size`` rounded up; at
    least 1 and at most ``size``."""
    return [
        min(size, max(1, int(k) if float(k) >= 1 else math.ceil(float(k) * size)))
        for k in ks
    ]


class _Removals:
    """Rows of one example with some positions removed, run in one batch.

    ``blank`` is a token id (the positions are replaced by it) or ``"deletion"``
    (they are dropped and the sequence is left-padded with masked ``pad`` tokens, so
    the output position keeps its index)."""

    def __init__(
        self,
        ip: InfluencePatterns,
        ids: Tensor,
        args: Tuple[Any, ...],
        mask: Optional[Tensor],
        output_position: int,
        pad: int,
    ) -> None:
        self.ip, self.ids, self.args, self.mask = ip, ids, args, mask
        self.output_position, self.pad = output_position, pad
        self.rows: List[Tuple[Tensor, Tensor]] = []

    def add(self, removed: Sequence[int], blank: Any) -> int:
        """Queue the example with ``removed`` blanked; return its row."""
        ids = self.ids.clone()
        mask = (
            torch.ones_like(ids) if self.mask is None else self.mask.clone()
        )
        if blank == "deletion":
            if any(j >= self.output_position for j in removed):
                raise ValueError(
                    "faithfulness: deletion removes only positions before the output "
                    f"position {self.output_position}; got {sorted(removed)}"
                )
            keep = [j for j in range(len(ids)) if j not in set(removed)]
            count = len(ids) - len(keep)
            ids = torch.cat([ids.new_full((count,), self.pad), ids[keep]])
            mask = torch.cat([mask.new_zeros(count), mask[keep]])
        else:
            ids[list(removed)] = int(blank)
        self.rows.append((ids, mask))
        return len(self.rows) - 1

    def run(self, chunk: int = 64) -> List[float]:
        """The QoI of every queued row."""
        values: List[float] = []
        for start in range(0, len(self.rows), chunk):
            rows = self.rows[start : start + chunk]
            ids = torch.stack([r[0] for r in rows])
            mask = torch.stack([r[1] for r in rows])
            args = tuple(
                arg.expand(len(rows), *arg.shape[1:])
                if isinstance(arg, Tensor) and arg.dim()
                else arg
                for arg in self.args
            )
            with torch.no_grad(), analysis_mode(self.ip.model):
                output = self.ip.forward_func(ids, *args, attention_mask=mask)
            values += output.reshape(len(rows)).tolist()
        return values


def _removed_and_kept(
    removals: _Removals, top: List[int], positions: List[int], blank: Any
) -> Tuple[int, int]:
    """Rows of the example without its ``top`` positions and with only them."""
    rest = [j for j in positions if j not in top]
    return removals.add(top, blank), removals.add(rest, blank)


def faithfulness_record(
    ip: InfluencePatterns,
    request: AttributionRequest,
    b: int,
    output_position: int,
    positions: Sequence[int],
    blanks: Dict[str, Any],
    scores: Optional[Dict[str, Tensor]] = None,
    ks: Sequence[float] = TOP_K,
    pad: int = 0,
    seed: int = 0,
) -> Dict[str, Any]:
    """The faithfulness measures of every token score for example ``b``.

    Args:
        ip (InfluencePatterns): The attribution object (its model and QoI, which
            must accept an ``attention_mask`` keyword).
        request (AttributionRequest): The example's request.
        b (int): The example's row.
        output_position (int): ``t``.
        positions (sequence of int): The scored positions (word tokens; the output
            position and special tokens left out): only they are ranked and
            removed.
        blanks (dict): Removal name -> a token id, or ``"deletion"``
            (:data:`BLANKS` names them).
        scores (dict, optional): Method -> (T,) scores; default
            :func:`token_scores`.
        ks (sequence, optional): Numbers (ints) or fractions (in (0, 1)) of the
            scored positions removed or kept; AOPC averages over them. Default:
            :data:`TOP_K`
        pad (int, optional): The pad token of deletion. Default: 0
        seed (int, optional): Seed of the random scores. Default: 0

    Returns:
        dict: JSON-safe: ``positions``, ``qoi``, ``scores`` (method -> score per
        scored position), ``blank_out`` (removal -> effect per scored position), and
        per removal and method ``comprehensiveness``, ``sufficiency`` (AOPC) and
        ``spearman`` (nan when fewer than 3 positions or constant scores).
    """
    positions = list(positions)
    if len(positions) < 1:
        raise ValueError("positions: at least one scored position is needed")
    if scores is None:
        scores = token_scores(ip, request, b, output_position, seed)
    removals = _Removals(
        ip,
        request.inputs[b],
        tuple(
            arg[b : b + 1] if isinstance(arg, Tensor) and arg.dim() else arg
            for arg in (request.additional_forward_args or ())
        ),
        None if request.attention_mask is None else request.attention_mask[b],
        output_position,
        pad,
    )
    counts = _counts(ks, len(positions))
    rows: Dict[str, Dict[str, Any]] = {}
    for name, blank in blanks.items():
        rows[name] = {
            "blank_out": [removals.add([j], blank) for j in positions],
            "top": {
                method: [
                    _removed_and_kept(
                        removals, _top(values, positions, k), positions, blank
                    )
                    for k in counts
                ]
                for method, values in scores.items()
            },
        }
    original = removals.add([], 0)
    qoi = removals.run()
    full = qoi[original]
    record: Dict[str, Any] = {
        "positions": positions,
        "qoi": full,
        "scores": {m: [float(v[j]) for j in positions] for m, v in scores.items()},
        "blank_out": {},
        "comprehensiveness": {},
        "sufficiency": {},
        "spearman": {},
    }
    for name, row in rows.items():
        effects = [full - qoi[r] for r in row["blank_out"]]
        record["blank_out"][name] = effects
        record["comprehensiveness"][name] = {
            m: float(np.mean([full - qoi[r] for r, _ in pairs]))
            for m, pairs in row["top"].items()
        }
        record["sufficiency"][name] = {
            m: float(np.mean([full - qoi[r] for _, r in pairs]))
            for m, pairs in row["top"].items()
        }
        record["spearman"][name] = {
            m: correlation(record["scores"][m], effects)["spearman"]
            for m in scores
        }
    return record


def faithfulness_summary(
    records: Sequence[Dict[str, Any]], n_resamples: int = 1000, seed: int = 0
) -> Dict[str, Dict[str, Dict[str, Dict[str, float]]]]:
    """Per removal, method and measure (:data:`MEASURES`), the mean over sentences
    with a 95% percentile bootstrap interval (sentences resampled; nan values left
    out).

    Args:
        records (sequence of dict): :func:`faithfulness_record` results.

    Returns:
        dict: ``[removal][method][measure]`` -> ``value``, ``low``, ``high``,
        ``resamples`` (:func:`~.stats.bootstrap`) and ``n`` (sentences with a
        finite value).
    """
    out: Dict[str, Dict[str, Dict[str, Dict[str, float]]]] = {}
    removals = list(dict.fromkeys(r for record in records for r in record["spearman"]))
    for removal in removals:  # runs of several models: each removal its records
        out[removal] = {}
        having = [record for record in records if removal in record["spearman"]]
        methods = dict.fromkeys(m for r in having for m in r["spearman"][removal])
        for method in methods:

            def statistic(units: List[Dict[str, Any]]) -> Dict[str, float]:
                means = {}
                for measure in MEASURES:
                    values = [
                        u[measure][removal][method]
                        for u in units
                        if u[measure][removal].get(method) is not None
                        and math.isfinite(u[measure][removal][method])
                    ]
                    means[measure] = float(np.mean(values)) if values else math.nan
                return means

            intervals = bootstrap(having, statistic, n_resamples, seed)
            for measure in MEASURES:
                intervals[measure]["n"] = sum(
                    1
                    for r in having
                    if r[measure][removal].get(method) is not None
                    and math.isfinite(r[measure][removal][method])
                )
            out[removal][method] = intervals
    return out
