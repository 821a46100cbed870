"""``check_adapter``: the library's own checks, run on a user's model.

Before trusting routes on a model of your own (a new checkpoint, a fine-tuned head, a
family registered by hand), run :func:`check_adapter` on it. Each check compares two
computations that share as little as possible:

- ``"captum"``: the token influence ``g`` against Captum's own
  :class:`~captum.attr.IntegratedGradients` on the word embeddings (the forward pass
  with the word-embedding output replaced; no gate, tangent or node hook);
- ``"completeness"``: ``sum_j g_j`` against ``QoI(x) - QoI(x')`` from two plain
  forward passes (an integration error, so the tolerance is looser);
- ``"fast == reference"``: the fast schedule's patterns against the authors' per-layer
  schedule (every route, node, influence and candidate);
- ``"brute force"``: each reported pattern influence against the gated integrated
  gradient of that pattern, reverse mode only
  (:meth:`~captum_influence_patterns.attribution.InfluencePatterns.pattern_influence`);
- ``"attention slots"``: the attention weights recomputed from the family's query and
  key slots (with its input norm and rotation) against the attention module's own,
  and the head contexts against those weights times the value slot's values; a
  failure names the slot (a query and key swapped, a wrong value projection);
- ``"left as it was"``: train flags, attention setting, ``requires_grad``, weights and
  hooks after the calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from captum.attr import IntegratedGradients
from torch import Tensor, nn

from ..attribution import InfluencePatterns
from ..graph import analysis_mode, model_graph
from ..graph.hooks import Hook, hooks_in_place
from ..search.rowwise.driver import RecordedModel
from ..search.rowwise.linearisation import RowwiseMismatch
from ..search.rowwise.recording import rowwise_blocks
from .assertions import ModelState, assert_same_patterns

#: Relative tolerance per dtype for the exact checks (Captum keeps its quadrature
#: weights in float32, hence 1e-6 in float64); completeness gets 1000 times it.
_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-3}


@dataclass(frozen=True)
class AdapterCheck:
    """The outcome of one check: its largest error against its tolerance."""

    name: str
    error: float
    tolerance: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        text = f"{self.name}: {verdict} (error {self.error:.2e}, tol {self.tolerance:.0e})"
        return f"{text}: {self.detail}" if self.detail and not self.passed else text


def check_adapter(
    model: nn.Module,
    forward_func: Optional[Callable[..., Tensor]] = None,
    inputs: Optional[Tensor] = None,
    additional_forward_args: Tuple[Any, ...] = (),
    *,
    baselines: Union[None, int, Tensor] = None,
    output_position: Optional[int] = None,
    n_steps: int = 32,
    raise_on_failure: bool = True,
) -> List[AdapterCheck]:
    """Run the known-answer and reference-vs-fast checks on ``model``.

    Args:
        model (nn.Module): A Hugging Face model of a supported family (its graph
            adapter is what is checked).
        forward_func (Callable, optional): The QoI, as for :class:`InfluencePatterns`.
            Default: ``logit[0] - logit[1]`` of the model's output at
            ``output_position``.
        inputs (Tensor, optional): (B, T) token ids. Default: one row of 7 ids drawn
            (seed 0) from the vocabulary.
        additional_forward_args (tuple, optional): Extra arguments of
            ``forward_func``. Default: ()
        baselines (int or Tensor, optional): As in :meth:`InfluencePatterns.attribute`.
            Default: None (token id 0, as in Captum)
        output_position (int, optional): Default: the last position, or 0 ([CLS]) for
            an encoder whose output has no position axis (a sequence classifier).
        n_steps (int, optional): Integration points. Default: 32
        raise_on_failure (bool, optional): Raise an AssertionError naming the failed
            checks. Default: True

    Returns:
        list of AdapterCheck: one per check, in the order of the module docstring.

    Example::

        >>> from captum_influence_patterns.testing import check_adapter, family_model
        >>> for check in check_adapter(family_model("bert")):
        ...     print(check)
    """
    graph = model_graph(model)
    if inputs is None:
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randint(0, graph.vocab_size, (1, 7), generator=generator)
        inputs = inputs.to(graph.word_embeddings.weight.device)
    if output_position is None:
        output_position = _default_position(model, inputs, graph.is_causal)
    if forward_func is None:
        forward_func = _first_logit_difference(model, output_position)
    dtype = graph.word_embeddings.weight.dtype
    tolerance = _TOLERANCE.get(dtype, 1e-2)
    before = ModelState.of(model)
    ip = InfluencePatterns(forward_func, model)
    settings = dict(
        baselines=baselines,
        additional_forward_args=additional_forward_args,
        output_position=output_position,
        n_steps=n_steps,
    )
    fast = ip.attribute(inputs, return_convergence_delta=True, **settings)
    reference = ip.attribute(inputs, schedule="reference", **settings)
    scale = float(fast.token_influence.abs().max()) or 1.0
    checks = [
        AdapterCheck(
            "captum",
            _captum_gap(ip, inputs, fast.token_influence, baselines, settings) / scale,
            tolerance,
        ),
        AdapterCheck(
            "completeness",
            float(fast.convergence_delta.abs().max()) / scale,
            1000 * tolerance,
        ),
        AdapterCheck(
            "fast == reference", _patterns_gap(fast, reference, tolerance), 0.0
        ),
        AdapterCheck(
            "brute force",
            _brute_force_gap(ip, inputs, fast, settings) / scale,
            tolerance,
        ),
        AdapterCheck("attention slots", *_slots_gap(ip, inputs, settings)),
        AdapterCheck("left as it was", _state_gap(before, model), 0.0),
    ]
    failed = [str(check) for check in checks if not check.passed]
    if failed and raise_on_failure:
        hint = " (an integration error: raise n_steps)" if not checks[1].passed else ""
        raise AssertionError("check_adapter: " + "; ".join(failed) + hint)
    return checks


def _default_position(model: nn.Module, inputs: Tensor, causal: bool) -> int:
    """The last position, or 0 for an encoder without a position axis (pooled)."""
    with analysis_mode(model), torch.no_grad():
        logits = model(input_ids=inputs[:1]).logits
    return inputs.shape[1] - 1 if logits.dim() == 3 or causal else 0


def _first_logit_difference(model: nn.Module, position: int) -> Callable[..., Tensor]:
    def forward(input_ids: Tensor, *args: Any) -> Tensor:
        logits = model(input_ids=input_ids).logits
        if logits.dim() == 3:
            logits = logits[:, position]
        return logits[:, 0] - logits[:, 1]

    return forward


def _captum_gap(
    ip: InfluencePatterns,
    inputs: Tensor,
    token_influence: Tensor,
    baselines: Union[None, int, Tensor],
    settings: dict,
) -> float:
    """Largest gap between g and Captum's IntegratedGradients on the word
    embeddings (summed over D)."""
    embeddings = ip.graph.word_embeddings
    with analysis_mode(ip.model), torch.no_grad():
        embeds = embeddings(inputs)
        ids = 0 if baselines is None else baselines  # Captum's None: token id 0
        baseline_embeds = embeddings(torch.as_tensor(ids).expand_as(inputs))

    def forward(word_embeds: Tensor, *args: Any) -> Tensor:
        with hooks_in_place([Hook(embeddings, lambda m, i, output: word_embeds)]):
            return ip.forward_func(inputs.expand(word_embeds.shape[0], -1), *args)

    with analysis_mode(ip.model):
        expected = IntegratedGradients(forward).attribute(
            embeds,
            baselines=baseline_embeds,
            additional_forward_args=settings["additional_forward_args"] or None,
            n_steps=settings["n_steps"],
            internal_batch_size=1,
        )
    gap = token_influence - expected.sum(-1).double().cpu()
    return float(gap.abs().max())


def _patterns_gap(first: Any, second: Any, tolerance: float) -> float:
    """0 when the two results hold the same patterns (within ``tolerance``), else 1."""
    try:
        assert_same_patterns(first, second, atol=tolerance, rtol=tolerance)
    except AssertionError:
        return 1.0
    return 0.0


def _brute_force_gap(
    ip: InfluencePatterns, inputs: Tensor, result: Any, settings: dict
) -> float:
    """Largest gap between reported and brute-force pattern influences."""
    scored = ip.pattern_influence(
        inputs,
        result.patterns,
        settings["baselines"],
        None,
        settings["additional_forward_args"],
        n_steps=settings["n_steps"],
    )
    gaps = [
        (values - torch.tensor([p.influence for p in row], dtype=values.dtype)).abs()
        for row, values in zip(result.patterns, scored)
        if row
    ]
    return max((float(gap.max()) for gap in gaps), default=0.0)


def _slots_gap(
    ip: InfluencePatterns, inputs: Tensor, settings: dict
) -> Tuple[float, float, str]:
    """1 (with the row-wise self-check's message naming the slot) when the attention
    recomputed from the declared slots is not the module's, else 0; the tolerance
    and the detail for :class:`AdapterCheck`. Models the row-wise schedule does not
    read (relative positions, a user's hooks) pass: no slot is read for them."""
    request = ip.request(inputs, **settings)
    with analysis_mode(ip.model):
        problem = ip.request_problem(request, 0)
        blocks = rowwise_blocks(problem)
        if blocks is None:
            return 0.0, 0.0, ""
        try:
            RecordedModel(problem, blocks)
        except RowwiseMismatch as error:
            return 1.0, 0.0, str(error)
    return 0.0, 0.0, ""


def _state_gap(before: ModelState, model: nn.Module) -> float:
    """0 when ``model`` is as it was, else 1."""
    try:
        before.assert_unchanged(model)
    except AssertionError:
        return 1.0
    return 0.0
