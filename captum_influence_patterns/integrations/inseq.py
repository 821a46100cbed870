"""An inseq attribution method: influence patterns of every generated token.

Importing this module registers the method ``"influence_patterns"`` with inseq
(``pip install captum-influence-patterns[inseq]``)::

    import inseq
    import captum_influence_patterns.integrations.inseq  # registers the method

    model = inseq.load_model(hf_model, "influence_patterns", tokenizer=tokenizer)
    out = model.attribute("the cat that", generation_args={"max_new_tokens": 3})

At each generation step the quantity of interest is the logit of the generated (or
forced) token at the last position of the prefix. The step's
``target_attributions`` hold ``g`` of every prefix position (the token influence,
docs/method.md); its ``sequence_scores`` carry the routes, one per source position.
inseq crops sequence scores to the generated length on their first two axes, so each
has a leading axis of 1 and a fixed-width position axis (the model's
``max_position_embeddings``); in the assembled sequence, ``scores[name][0, step, i]``
is source position ``i``'s entry at generation step ``step``:

- ``"pattern_influence"``: ``I(pi^a)``, the influence along the source's route;
- ``"pattern_positions"``: the route's positions ``j_0 .. j_L`` (prefix indices);
- ``"pattern_heads"``: the head of each layer, -1 where the route takes the skip.

Positions that are not sources (padding, or past the prefix) hold nan. The step scores hold the
completeness error as ``"deltas"``, like inseq's integrated gradients, its ratio to
the QoI difference as ``"relative_deltas"`` and the steps used as ``"n_steps_used"``:
each step runs through ``convergence.attribute_converged``, which doubles ``n_steps`` until the relative delta is within
``tolerance`` (5%) and warns with the numbers when ``max_steps`` (400) is reached first
(``strict=True`` refuses). Keyword arguments of ``model.attribute`` that
:meth:`InfluencePatterns.attribute` takes (``n_steps``, ``method``,
``internal_batch_size``, ``schedule``, ``beam_width``) and ``tolerance``,
``max_steps``, ``strict`` reach it; ``baselines`` (a token id, or None for token id 0, as in
Captum) is set when loading:
``inseq.load_model(..., "influence_patterns", tokenizer=..., baselines=id)``.

Decoder-only models only: the library explains causal and masked language models, and
an encoder-decoder's cross-attention has no adapter here.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor

try:
    from inseq.attr.feat.feature_attribution import FeatureAttribution
    from inseq.data.attribution import CoarseFeatureAttributionStepOutput
except ImportError as error:  # the optional extra
    raise ImportError(
        "captum_influence_patterns.integrations.inseq needs inseq: pip install "
        "'captum-influence-patterns[inseq]'"
    ) from error

from ..attribution import InfluencePatterns
from ..convergence import attribute_converged

#: The keyword arguments of ``model.attribute`` passed on to ``attribute``.
PASSED_ON = (
    "n_steps", "method", "internal_batch_size", "schedule", "beam_width",
    "tolerance", "max_steps", "strict",
)
#: Of those, the ones the request carries (the others go to ``search``).
_REQUEST_SETTINGS = ("n_steps", "method", "internal_batch_size")


class InfluencePatternsAttribution(FeatureAttribution):
    """inseq's ``"influence_patterns"``: g per prefix position and the routes."""

    method_name = "influence_patterns"

    def __init__(
        self, attribution_model: Any, baselines: Optional[int] = None, **kwargs: Any
    ) -> None:
        super().__init__(attribution_model, hook_to_model=False)
        if attribution_model.is_encoder_decoder:
            raise ValueError(
                "attribution_model: influence patterns explain decoder-only models "
                "here; load a causal language model"
            )
        self.attribute_batch_ids = True  # token ids in, like the library
        self.forward_batch_embeds = False
        self.baselines = baselines
        model = attribution_model.model
        self.method = InfluencePatterns(_next_token_logit(model), model)
        self.hook(**kwargs)

    def get_attribution_args(self, **kwargs: Any):
        """Split ``kwargs`` into the library's arguments and the rest."""
        passed = {k: kwargs.pop(k) for k in PASSED_ON if k in kwargs}
        return passed, kwargs

    def attribute_step(
        self,
        attribute_fn_main_args: Dict[str, Any],
        attribution_args: Dict[str, Any] = {},
    ) -> CoarseFeatureAttributionStepOutput:
        """Influence patterns of every row's next token (see the module docstring)."""
        (ids,) = attribute_fn_main_args["inputs"]
        extra = attribute_fn_main_args["additional_forward_args"]
        targets, attention_mask = extra[1].reshape(-1), extra[3]
        batch, length = ids.shape
        layers = self.method.graph.num_layers
        width = _max_positions(self.method.model.config, length)
        g = ids.new_full((batch, length), float("nan"), dtype=torch.float64)
        influence = g.new_full((batch, 1, width), float("nan"))
        positions = g.new_full((batch, 1, width, layers + 1), float("nan"))
        heads = g.new_full((batch, 1, width, layers), float("nan"))
        deltas = g.new_zeros(batch)
        relative, steps = g.new_zeros(batch), g.new_zeros(batch)
        for b in range(batch):
            kept = (
                torch.arange(length, device=ids.device)
                if attention_mask is None
                else attention_mask[b].nonzero()[:, 0]
            )
            row = ids[b, kept][None]
            settings = dict(attribution_args)
            request = self.method.request(
                row,
                self.baselines,
                None,
                (int(targets[b]),),
                output_position=row.shape[1] - 1,
                **{k: settings.pop(k) for k in _REQUEST_SETTINGS if k in settings},
            )
            result = attribute_converged(self.method, request, **settings)
            kept = kept.cpu()
            g[b, kept] = result.token_influence[0]
            deltas[b] = result.convergence_delta[0]
            (convergence,) = result.metadata["convergence"]
            relative[b] = convergence["relative"]
            steps[b] = convergence["n_steps"]
            for pattern in result.patterns[0]:
                column = kept[pattern.source]
                influence[b, 0, column] = pattern.influence
                positions[b, 0, column] = kept[pattern.positions].double()
                heads[b, 0, column] = torch.tensor(
                    [-1 if n.head is None else n.head for n in pattern.nodes],
                    dtype=torch.float64,
                )
        # One signed score per token, like occlusion: a coarse attribution, which
        # inseq shows as it is (a granular one would take a norm over a hidden axis).
        return CoarseFeatureAttributionStepOutput(
            source_attributions=None,
            target_attributions=g,
            step_scores={
                "deltas": deltas,
                "relative_deltas": relative,
                "n_steps_used": steps,
            },
            sequence_scores={
                "pattern_influence": influence,
                "pattern_positions": positions,
                "pattern_heads": heads,
            },
        )


def _max_positions(config: Any, length: int) -> int:
    """The widest prefix the model reads (at least ``length``)."""
    names = ("max_position_embeddings", "n_positions")
    widths = [getattr(config, name, None) for name in names]
    return max([length] + [w for w in widths if isinstance(w, int)])


def _next_token_logit(model: Any):
    """The QoI: the logit of ``token`` at the last position."""

    def forward(input_ids: Tensor, token: int) -> Tensor:
        return model(input_ids=input_ids).logits[:, -1, token]

    return forward
