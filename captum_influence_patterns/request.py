"""One call's arguments, validated once.

:meth:`InfluencePatterns.request <captum_influence_patterns.attribution.InfluencePatterns.request>`
checks the inputs, baselines, target, attention mask, output positions and integration
settings and returns an :class:`AttributionRequest`. ``attribute``,
``pattern_influence``, :func:`~captum_influence_patterns.routes.compare.compare` and the
tools built on them take it in place of ``inputs`` and do not validate again, so a
pipeline that runs several of them on one batch (the comparison, the evaluation)
validates once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from torch import Tensor

from .utils._captum_compat import TargetType
from .quadrature import DEFAULT_METHOD, DEFAULT_N_STEPS, IntegrationSettings

#: The keyword arguments a request carries, with the defaults of ``attribute``:
#: passed next to a request, they must keep these values.
REQUEST_DEFAULTS: Dict[str, Any] = dict(
    baselines=None,
    target=None,
    additional_forward_args=None,
    attention_mask=None,
    n_steps=DEFAULT_N_STEPS,
    method=DEFAULT_METHOD,
    internal_batch_size=None,
)


@dataclass(frozen=True)
class AttributionRequest:
    """The validated arguments of one batch.

    Attributes:
        inputs (Tensor): (B, T) token ids.
        baselines (int, Tensor or None): The baselines as given (for reports).
        baseline_ids (Tensor): (B, T) baseline ids (token id 0 for ``baselines=None``,
            as in Captum's LayerIntegratedGradients).
        target (TargetType): The Captum target.
        additional_forward_args (Any): Extra arguments of the forward function.
        attention_mask (Tensor or None): (B, T) 0/1 mask on the inputs' device.
        output_positions (list): Per example, the output position (None: pooled).
        settings (IntegrationSettings): ``n_steps``, ``method``,
            ``internal_batch_size``.
    """

    inputs: Tensor
    baselines: Union[None, int, Tensor]
    baseline_ids: Optional[Tensor]
    target: TargetType
    additional_forward_args: Any
    attention_mask: Optional[Tensor]
    output_positions: List[Optional[int]]
    settings: IntegrationSettings
    #: In-place edit counters of the tensors at validation (see :func:`check_request`).
    versions: Tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.versions:
            object.__setattr__(self, "versions", _versions(self))

    @property
    def batch(self) -> int:
        return self.inputs.shape[0]


def _versions(request: AttributionRequest) -> Tuple[int, ...]:
    tensors = (request.inputs, request.baseline_ids, request.attention_mask)
    return tuple(-1 if t is None else t._version for t in tensors)


def check_request(request: AttributionRequest, vocab_size: int) -> None:
    """Refuse a request whose validated tensors were edited in place since, or
    whose ids do not fit this model's vocabulary (a request built for another
    model), before any pass."""
    if _versions(request) != request.versions:
        raise ValueError(
            "inputs: the AttributionRequest's inputs, baselines or attention mask "
            "were edited in place after it was built, so its checks no longer hold; "
            "build it again with InfluencePatterns.request"
        )
    for name, ids in (("inputs", request.inputs), ("baselines", request.baseline_ids)):
        if ids is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise ValueError(
                f"inputs: the AttributionRequest's {name} hold token ids up to "
                f"{int(ids.max())}, outside this model's vocabulary of {vocab_size} "
                "(a request built for another model); build it with this model's "
                "InfluencePatterns.request"
            )


def check_beside_request(given: Dict[str, Any]) -> None:
    """Refuse arguments passed next to a request that would differ from it."""
    changed = [
        name
        for name, value in given.items()
        if not _is_default(value, REQUEST_DEFAULTS[name])
    ]
    if changed:
        raise ValueError(
            f"inputs: an AttributionRequest carries {', '.join(changed)}; pass them "
            "when building it (InfluencePatterns.request), not next to it"
        )


def _is_default(value: Any, default: Any) -> bool:
    if default is None or value is None:
        return value is default
    return isinstance(value, type(default)) and value == default
