"""One call's arguments, validated once, and the machinery that validates them.

:meth:`RequestBuilder.request` (inherited by
:class:`~captum_influence_patterns.attribution.InfluencePatterns`) checks the inputs,
baselines, target, attention mask, output positions and integration settings and
returns an :class:`AttributionRequest`. ``attribute`` and ``pattern_influence`` take
loose arguments (Captum's shape) and build one; the request-level methods
``InfluencePatterns.search`` and ``InfluencePatterns.score`` and every analysis
(:func:`~captum_influence_patterns.routes.compare.compare`, the optimality test, route
scoring, the ablation, the convergence doubling) take a request and do not validate
again, so a pipeline that runs several of them on one batch (the comparison, the
evaluation) validates once. :class:`RequestBuilder` also holds what every call
shares: the checks of the call itself (inference mode, devices, a ``forward_func``
calling back in), the one checked forward pass of ``forward_func``, and the
per-example problems (:class:`~.influence.ExampleProblem`) the passes run on.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Set, Tuple, Union

import torch
from torch import Tensor, nn

from .utils._captum_compat import TargetType, run_forward, select_targets
from ._validation import (
    PositionsType,
    example_args,
    example_target,
    validate_attention_mask,
    validate_baselines,
    validate_inputs,
    validate_layer,
    validate_output_positions,
    validate_settings,
    validate_target,
)
from .graph import (
    ModelGraph, NodeController, analysis_mode, check_hooks_kept, model_graph,
    restrict_paths,
)
from .influence import ExampleProblem, RunCounter
from .qoi import check_qoi
from .quadrature import DEFAULT_METHOD, DEFAULT_N_STEPS, IntegrationSettings

#: Per thread: how many calls of a ``forward_func`` are running now.
_INSIDE_FORWARD = threading.local()


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


def expect_request(request: Any) -> AttributionRequest:
    """``request`` if it is an :class:`AttributionRequest`; else a TypeError saying
    how to build one. Every analysis that takes a request calls it first."""
    if not isinstance(request, AttributionRequest):
        raise TypeError(
            "request: expected an AttributionRequest, got "
            f"{type(request).__name__}; build one with ip.request(inputs, "
            "baselines=..., ...)"
        )
    return request


def check_request(request: AttributionRequest, vocab_size: int) -> None:
    """Refuse a request whose validated tensors were edited in place since, or
    whose ids do not fit this model's vocabulary (a request built for another
    model), before any pass."""
    if _versions(request) != request.versions:
        raise ValueError(
            "request: its inputs, baselines or attention mask "
            "were edited in place after it was built, so its checks no longer hold; "
            "build it again with InfluencePatterns.request"
        )
    for name, ids in (("inputs", request.inputs), ("baselines", request.baseline_ids)):
        if ids is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise ValueError(
                f"request: its {name} hold token ids up to "
                f"{int(ids.max())}, outside this model's vocabulary of {vocab_size} "
                "(a request built for another model); build it with this model's "
                "InfluencePatterns.request"
            )


class RequestBuilder:
    """Builds the validated :class:`AttributionRequest` of a call and the
    per-example problems that run it; the base of
    :class:`~captum_influence_patterns.attribution.InfluencePatterns`, which sets
    the attributes below.

    Attributes:
        forward_func (Callable): The QoI function (:class:`InfluencePatterns`).
        model (nn.Module): The analysed model.
        layer (nn.Module or None): The interpolated layer as given.
        graph (ModelGraph): The model's graph, read again at every call.
    """

    forward_func: Callable
    model: nn.Module
    layer: Optional[nn.Module]
    graph: ModelGraph

    def request(
        self,
        inputs: Tensor,
        baselines: Union[None, int, Tensor] = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        output_position: PositionsType = None,
        attention_mask: Optional[Tensor] = None,
        n_steps: int = DEFAULT_N_STEPS,
        method: str = DEFAULT_METHOD,
        internal_batch_size: Optional[int] = None,
    ) -> AttributionRequest:
        """Validate one batch's arguments once.

        The arguments are those of :meth:`InfluencePatterns.attribute
        <captum_influence_patterns.attribution.InfluencePatterns.attribute>`, except
        that ``output_position=None`` (the default) means a pooled QoI here: pass the
        position to explain. The request goes to :meth:`InfluencePatterns.search
        <captum_influence_patterns.attribution.InfluencePatterns.search>`,
        :meth:`InfluencePatterns.score
        <captum_influence_patterns.attribution.InfluencePatterns.score>` and every
        analysis (:func:`~captum_influence_patterns.routes.compare.compare`,
        :func:`~captum_influence_patterns.routes.optimality.optimality_test`, route
        scoring, the ablation, the convergence doubling), which do not validate these
        arguments again.

        Raises:
            ValueError, TypeError: as ``attribute``, for the same arguments.
        """
        if isinstance(inputs, AttributionRequest):
            raise TypeError(
                "inputs: got an AttributionRequest, which is built already; pass it "
                "to search(request, ...) or score(request, patterns, ...)"
            )
        self._check_call(inputs)
        batch = validate_inputs(inputs, self.graph.vocab_size)
        return AttributionRequest(
            inputs=inputs,
            baselines=baselines,
            baseline_ids=validate_baselines(baselines, inputs, self.graph.vocab_size),
            target=validate_target(target),
            additional_forward_args=additional_forward_args,
            attention_mask=validate_attention_mask(
                attention_mask, inputs, self.graph.is_causal
            ),
            output_positions=validate_output_positions(
                output_position, batch, inputs.shape[1]
            ),
            settings=validate_settings(n_steps, method, internal_batch_size),
        )

    def _check_request(self, request: Any) -> None:
        """Refuse what is not a request (:func:`expect_request`), a call that cannot
        run (:meth:`_check_call`) and a request that no longer holds for this model
        (:func:`check_request`), before any pass."""
        expect_request(request)
        self._check_call(request.inputs)
        check_request(request, self.graph.vocab_size)

    def _read_positions(self, request: AttributionRequest) -> List[Optional[int]]:
        """The output position of each example, where its QoI reads one position of
        ``h^L`` at the input (a classifier's [CLS], a decoder's last token)."""
        with analysis_mode(self.model):
            self._validate_forward(
                request.inputs,
                request.target,
                request.additional_forward_args,
                request.attention_mask,
            )
            probe = _ForwardProbe()
            with torch.enable_grad(), restrict_paths(self.graph, probe):
                output = run_forward(
                    self._forward(request.attention_mask),
                    request.inputs,
                    None,
                    request.additional_forward_args,
                )
                qoi = select_targets(output, request.target)
                (grad,) = torch.autograd.grad(qoi.sum(), probe.last)
        positions: List[Optional[int]] = []
        for b, reads in enumerate((grad != 0).any(-1)):
            read = reads.nonzero().flatten().tolist()
            if len(read) != 1:
                raise ValueError(
                    f"output_position: the QoI of example {b} reads positions {read} "
                    "of the last layer's output, not one; pass output_position=the "
                    "position to explain, or None for a QoI that pools every position"
                )
            positions.append(read[0])
        return positions

    # ------------------------------------------------------------------------ helpers
    @property
    def layer_name(self) -> str:
        """The interpolated layer's name in the model, e.g. ``bert.embeddings``."""
        layers = self.graph.interpolation_layers().items()
        return next(name for name, module in layers if module is self.graph.interpolated)

    def example_problem(
        self,
        inputs: Tensor,
        baseline_ids: Optional[Tensor],
        target: TargetType,
        additional_forward_args: Any,
        b: int,
        settings: IntegrationSettings,
        attention_mask: Optional[Tensor] = None,
    ) -> ExampleProblem:
        """The gated-pass machinery (:class:`~.influence.ExampleProblem`) of example
        ``b``, for tools that run their own passes (baselines, ablation).

        ``baseline_ids`` are (B, T) ids or None, ``attention_mask`` (B, T) or None,
        ``settings`` the call's :class:`~.quadrature.IntegrationSettings`; the other
        arguments are those of :meth:`attribute`, already validated. Call it inside
        :func:`analysis_mode`.
        """
        return ExampleProblem(
            self.graph,
            self._forward(
                None if attention_mask is None else attention_mask[b : b + 1]
            ),
            inputs[b],
            None if baseline_ids is None else baseline_ids[b],
            example_target(target, b, inputs.shape[0]),
            example_args(additional_forward_args, b, inputs.shape[0]),
            settings,
        )

    def request_problem(
        self,
        request: AttributionRequest,
        b: int,
        settings: Optional[IntegrationSettings] = None,
    ) -> ExampleProblem:
        """:meth:`example_problem` of example ``b`` of ``request`` (its settings, or
        ``settings`` in their place). Call it inside :func:`analysis_mode`."""
        return self.example_problem(
            request.inputs,
            request.baseline_ids,
            request.target,
            request.additional_forward_args,
            b,
            settings or request.settings,
            attention_mask=request.attention_mask,
        )

    def _forward(self, attention_mask: Optional[Tensor]) -> Callable:
        """``forward_func``, given ``attention_mask`` expanded to each pass's rows,
        marked as running (an analysis started inside it is refused)."""

        def forward(input_ids: Tensor, *args: Any) -> Any:
            _INSIDE_FORWARD.depth = getattr(_INSIDE_FORWARD, "depth", 0) + 1
            try:
                if attention_mask is None:
                    return self.forward_func(input_ids, *args)
                rows = attention_mask.expand(input_ids.shape[0], -1)
                return self.forward_func(input_ids, *args, attention_mask=rows)
            finally:
                _INSIDE_FORWARD.depth -= 1

        return forward

    def _check_call(self, inputs: Any) -> None:
        """Refuse calls that cannot take a gradient: inference mode, meta weights,
        inputs on another device than the model. The graph is read again from the
        model as it is now (layers replaced, reordered or added since construction,
        an edited config): a cached graph where nothing changed."""
        self.graph = model_graph(self.model, split_mlp=self.graph.split_mlp)
        if self.layer is not None:  # the rebuilt graph interpolates the chosen layer too
            self.graph.interpolated = validate_layer(self.layer, self.graph)
        if getattr(_INSIDE_FORWARD, "depth", 0):
            raise RuntimeError(
                "forward_func: it calls InfluencePatterns (attribute, "
                "pattern_influence or request) inside itself, while an attribution "
                "runs it; forward_func must only compute the QoI from the model's "
                "output"
            )
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "attribute: called under torch.inference_mode(), where no gradient "
                "can be taken; call it outside that block (torch.no_grad is fine)"
            )
        weight = self.graph.word_embeddings.weight
        if weight.is_meta:
            raise ValueError(
                "model: its weights are on the meta device (never loaded); load them "
                "(e.g. from_pretrained without device_map='meta', or to_empty() then "
                "load_state_dict) before attribution"
            )
        if isinstance(inputs, Tensor) and inputs.device != weight.device:
            raise ValueError(
                f"inputs: on device {inputs.device} but the model is on "
                f"{weight.device}; pass inputs.to({str(weight.device)!r})"
            )

    def _output_differs(
        self,
        inputs: Tensor,
        baseline_ids: Optional[Tensor],
        positions: List[Optional[int]],
    ) -> List[bool]:
        """Per example, whether the word embedding at the output position differs
        from the baseline's (only then can the output position be a source).

        Reads the embedding table rather than calling the module: another thread's
        analysis may hold hooks on it until this call takes the analysis lock.
        """
        table = self.graph.word_embeddings.weight.detach()
        differs = []
        for b, t in enumerate(positions):
            if t is None:
                differs.append(True)
                continue
            embed = table[inputs[b, t]]
            base = (
                torch.zeros_like(embed)
                if baseline_ids is None
                else table[baseline_ids[b, t]]
            )
            differs.append(bool((embed != base).any()))
        return differs

    def _validate_forward(
        self,
        inputs: Tensor,
        target: TargetType,
        additional_forward_args: Any,
        attention_mask: Optional[Tensor],
    ) -> None:
        """One forward with the word embeddings requiring grad: ``forward_func`` must
        run ``model`` and give one finite, differentiable scalar per example."""
        batch = inputs.shape[0]
        probe = _ForwardProbe()
        counted = RunCounter(probe, rows=batch, layers=self.graph.num_layers)
        try:
            with torch.enable_grad(), restrict_paths(self.graph, counted):
                output = run_forward(
                    self._forward(attention_mask), inputs, None, additional_forward_args
                )
        except Exception as error:
            note = getattr(error, "add_note", None)
            if note is not None:
                note(
                    "(raised by forward_func on the inputs, shape "
                    f"{tuple(inputs.shape)}, before any attribution)"
                )
            raise
        if "word" not in probe.seen:
            raise ValueError(
                "forward_func: it never ran the model's word embeddings; it must call "
                "the model given to InfluencePatterns on the input ids it receives"
            )
        counted.check_one_run()
        missing = set(range(self.graph.num_layers + 1)) - probe.seen
        if missing:
            raise ValueError(
                f"forward_func: the model's layers {sorted(missing)} did not run; the "
                "QoI must be computed from a full forward pass of the model (the "
                f"model has {self.graph.num_layers} layers and config."
                f"num_hidden_layers = {self.model.config.num_hidden_layers}: set it "
                "to the number of layers if layers were added)"
            )
        check_hooks_kept(
            self.graph,
            lambda: run_forward(
                self._forward(attention_mask), inputs, None, additional_forward_args
            ),
        )
        check_qoi(output, target, batch)


class _ForwardProbe(NodeController):
    """Records which nodes a forward pass ran and makes the word embeddings a leaf
    that requires grad, so that a detached QoI shows."""

    def __init__(self) -> None:
        self.seen: Set[Any] = set()
        self.last: Tensor  # the last h^l of the pass, h^L once it ran

    def word_embeddings(self, output: Tensor) -> Tensor:
        self.seen.add("word")
        return output.detach().requires_grad_()

    def embedding_node(self, layer: int, hidden: Tensor) -> Tensor:
        self.seen.add(layer)
        self.last = hidden
        return hidden
