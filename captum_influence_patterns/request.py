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
from typing import Any, Dict, List, Optional, Union

from torch import Tensor

from ._captum_compat import TargetType
from .integration import IntegrationSettings

#: The keyword arguments a request carries, with the defaults of ``attribute``:
#: passed next to a request, they must keep these values.
REQUEST_DEFAULTS: Dict[str, Any] = dict(
    baselines=None,
    target=None,
    additional_forward_args=None,
    attention_mask=None,
    n_steps=50,
    method="gausslegendre",
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

    @property
    def batch(self) -> int:
        return self.inputs.shape[0]


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
