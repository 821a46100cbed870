"""``InfluencePatterns``: the Captum attribution class of this library."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .utils._captum_compat import (
    GradientAttribution,
    TargetType,
    log_usage,
)
from ._validation import (
    PositionsType,
    SourcesType,
    describe_baseline,
    validate_beam_width,
    validate_layer,
    validate_patterns,
    validate_sources,
)
from .graph import analysis_mode, model_graph
from .influence import warn_moving_reads
from .quadrature import DEFAULT_METHOD, DEFAULT_N_STEPS
from .request import AttributionRequest, RequestBuilder
from .results import (
    Attributions,
    AttributionsAndDelta,
    Convergence,
    ConvergenceWarning,
    InfluencePatternsResult,
    Level,
    Pattern,
    example_convergence,
)
from .search import SEARCHES, Search
from .search.fast import example_route_influence
from .search.state import check_finite
from .utils.stack import user_stacklevel

#: ``output_position`` not given: the one position of ``h^L`` the QoI reads.
_UNSET: Any = object()
#: How :meth:`InfluencePatterns.pattern_influence` scores routes.
ROUTE_SCORERS = ("reference", "fast")


class InfluencePatterns(RequestBuilder, GradientAttribution):
    r"""Influence patterns (Lu et al., NeurIPS 2021) for Hugging Face transformers.

    For every source token ``i`` of an input, finds the route along which ``x_i``'s
    influence on a quantity of interest (QoI) travels: at each layer a token position
    (the embedding-level pattern ``pi^e``) and whether the route crossed the layer
    through one attention head or the skip connection (the attention-level pattern
    ``pi^a``), by guided pattern refinement. Influences are integrated gradients
    restricted to the paths through chosen nodes, computed exactly with forward-mode
    tangents and reverse gradients; paths are restricted with forward hooks on the
    unmodified model.

    Like :class:`captum.attr.LayerIntegratedGradients`, the interpolation runs on the
    output of ``layer``: ``x(alpha) = x' + alpha (x - x')``, where ``x`` and ``x'`` are
    that output at the input and at the baseline ids. On the word embeddings (the
    default) position and type embeddings stay as they are; on the embedding block
    (``model.bert.embeddings`` in Captum's BERT tutorial) they are interpolated with
    the word embeddings. Swapping from LIG takes two lines (docs/from_lig.md)::

        >>> # lig = LayerIntegratedGradients(forward_func, model.bert.embeddings)
        >>> ip = InfluencePatterns(forward_func, model, layer=model.bert.embeddings)
        >>> attributions, delta = ip.attribute(
        ...     input_ids, baselines=ref_input_ids, return_convergence_delta=True)
        >>> attributions.patterns[0]  # the patterns ride along

    Args:
        forward_func (Callable): ``forward_func(inputs, *additional_forward_args)``
            takes token ids (rows, T) and returns model outputs from which ``target``
            selects one scalar per row (a function returning (rows,) needs no target).
            It must run ``model``, whose word-embedding output is replaced during
            attribution.
        model (nn.Module): The Hugging Face model whose graph is analysed: BERT,
            RoBERTa, ELECTRA, DistilBERT, ALBERT, GPT-2 or Llama / Mistral / Qwen2
            family, any head.
        split_mlp (bool, optional): Split every layer's feed-forward sublayer from the
            residual around it: stage B then also chooses, at each layer, between the
            MLP branch and the residual (ties go to the residual), and the pattern's
            influence is that of the finer route. Default: False (the paper's graph,
            where the MLP lies inside the edge into ``h^l``)
        layer (nn.Module, optional): The module whose output is interpolated, as
            given to :class:`captum.attr.LayerIntegratedGradients`: the word
            embeddings, the embedding block (e.g. ``model.bert.embeddings``), or the
            module whose output is ``h^0`` (GPT-2's ``model.transformer.drop``).
            Default: None (the word embeddings)

    Raises:
        UnsupportedModelError: for an architecture without an adapter.
        ValueError: for a ``layer`` that is not one of those above.
    """

    def __init__(
        self,
        forward_func: Callable,
        model: nn.Module,
        split_mlp: bool = False,
        *,
        layer: Optional[nn.Module] = None,
    ) -> None:
        super().__init__(forward_func)
        if not isinstance(split_mlp, bool):
            raise TypeError(
                f"split_mlp: expected a bool, got {type(split_mlp).__name__}; pass "
                "the layer LayerIntegratedGradients was given as layer=..."
            )
        self.model = model
        self.layer = layer
        self.graph = model_graph(model, split_mlp=split_mlp)
        if layer is not None:
            self.graph.interpolated = validate_layer(layer, self.graph)

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def has_convergence_delta(self) -> bool:
        return True

    @log_usage(part_of_slo=True)
    def attribute(
        self,
        inputs: Tensor,
        baselines: Union[None, int, Tensor] = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = DEFAULT_N_STEPS,
        method: str = DEFAULT_METHOD,
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        grad_kwargs: Optional[Dict[str, Any]] = None,
        *,
        output_position: PositionsType = _UNSET,
        sources: SourcesType = None,
        attention_mask: Optional[Tensor] = None,
        schedule: str = "fast",
        show_progress: bool = False,
        beam_width: int = 1,
    ) -> Union[Attributions, AttributionsAndDelta]:
        r"""Search the influence pattern of every source token of every example.

        Args:
            inputs (Tensor): (B, T) token ids.
            baselines (int or Tensor, optional): Baseline token ids: one id for every
                position, or a (T,), (1, T) or (B, T) tensor; the interpolation
                starts from ``layer``'s output at these ids. None means token id 0 at
                every position, as in Captum's LayerIntegratedGradients (the
                result's metadata and table say so); the paper, and these docs,
                recommend the [MASK] id. Default: None
            target (TargetType, optional): Captum target selecting one scalar per
                example from ``forward_func``'s output (int, tuple, (B,) tensor or
                list).
                Default: None
            additional_forward_args (Any, optional): Extra arguments of
                ``forward_func``; tensors with a leading dimension B are split per
                example and expanded to the rows of each pass, like Captum does.
                Default: None
            output_position (int, (B,) Tensor or None, optional): The position whose
                final hidden state feeds the QoI ([MASK] for masked LM, 0 for [CLS],
                the last token for a causal LM). ``j_L`` is fixed to it; a QoI that
                does not read it is refused. None for a QoI that reads every position
                (e.g. mean pooling): the last layer is then searched like the others
                (docs/method.md, section 6) and every position is a source.
                Default: the one position of ``h^L`` the QoI reads at the input (a
                QoI that reads several must be given one, or None)
            sources (sequence, optional): Positions to explain, shared by every example
                or one sequence per example. Default: every position, except positions
                after the output position in a causal model, the output position
                itself where its embedding equals the baseline's (a [MASK] explained
                against a [MASK] baseline has no influence), and positions where
                ``attention_mask`` is 0. The output position may be a source (a
                classifier's [CLS], a decoder's last token): in a causal model its
                route stays at the output position, heads or skip still chosen at
                every layer; in an encoder it is searched like any other source.
            attention_mask (Tensor, optional): (B, T) 0/1 mask of a padded batch.
                Passed on as ``forward_func(..., attention_mask=rows_mask)`` (every
                QoI of :mod:`captum_influence_patterns.qoi` accepts it), and padding
                (0) is left out of the default sources. Causal models need right
                padding (left padding is refused): the output position and its
                sources then keep their positions. Default: None
            n_steps (int, optional): Interpolation points (at least 2 for
                ``riemann_trapezoid``). Default: 50
            method (str, optional): Captum approximation method, one of
                ``gausslegendre``, ``riemann_left``, ``riemann_right``,
                ``riemann_middle``, ``riemann_trapezoid``; or ``"authors"``, the rule
                of the authors' released code: ``linspace(0, 1, n_steps)`` with equal
                weights ``1 / n_steps``, both endpoints included (needs
                ``n_steps >= 2``). With ``n_steps=51`` it reproduces the paper's
                code; it is biased (a completeness error of a few percent, where
                Gauss-Legendre's is negligible), so use it to compare with the paper,
                not by default. Default: ``gausslegendre``
            internal_batch_size (int, optional): Most rows (source x step pairs) per
                pass. The fast schedule choose nodes inside one pass per chunk, so its
                chunks hold whole sources: at least ``n_steps`` rows.
                Default: None (chunks chosen from the problem size, see
                docs/performance.md)
            return_convergence_delta (bool, optional): Also return the completeness
                error ``sum_j token_influence[b, j] - (QoI(x) - QoI(x'))`` per example,
                computed from the reported token influences, as
                ``attributions, delta``. Default: False
            attribute_to_layer_input (bool, optional): LIG's argument; only False
                (the layer's output) is supported. Default: False
            grad_kwargs (dict, optional): LIG's argument; only None is supported.
                Default: None
            schedule (str, optional): A name in the search table
                (:data:`.search.table.SEARCHES`): ``"fast"`` (docs/method.md, section 7;
                the row-wise implementation where it applies, else the
                forward-mode one), ``"row-wise"`` or ``"forward-mode"`` (one of the
                two), or ``"reference"`` (recompute both passes for every layer, as
                the authors do). Default: ``"fast"``
            show_progress (bool, optional): Show a tqdm progress bar (on stderr) over
                the examples and the stages of each search. Default: False
            beam_width (int, optional): Beyond the paper: keep the ``beam_width``
                best route prefixes per layer in stage A, scored by their exact
                influence, return the best complete route (by sign-adjusted
                ``I(pi^e)``) as the pattern and the others on
                :attr:`Pattern.alternatives`; stage B runs on the returned route (with
                the fast schedule's passes: ``schedule`` applies to width 1 only). 1
                is the greedy search of the paper (docs/beam.md). Default: 1

        Returns:
            Attributions or AttributionsAndDelta: What LayerIntegratedGradients
            returns: :class:`~.results.Attributions` (B, T, D), the integrated
            gradients on ``layer``'s output (equal to LIG's), and with
            ``return_convergence_delta`` the tuple ``(attributions, delta)``. Both
            carry the :class:`InfluencePatternsResult` (``.result``), whose
            attributes read through: ``token_influence`` (B, T) ``g`` at every
            position (``attributions.sum(-1)``; sources or not, so that it sums to
            ``QoI(x) - QoI(x')`` up to the integration error), ``patterns[b]`` (one
            :class:`Pattern` per source, in source order) and, when asked,
            ``convergence_delta`` (B,).

        Raises:
            ValueError: for bad arguments (the message names the argument and the
                fix), before any pass; for a QoI that does not read
                ``output_position``; for NaN or infinite QoIs or influences.
            TypeError: for arguments of the wrong type.
            RuntimeError: when called under :func:`torch.inference_mode`.

        The model is put in eval mode with eager attention for the call; every
        submodule's training flag, every parameter's ``requires_grad`` and the
        attention implementation are restored afterwards, also when an exception
        escapes; the hooks the library added are removed, and no other. Calls are thread-safe:
        concurrent calls (on one model or several) take a process-wide lock and run
        one after the other, and another thread calling the model meanwhile gets a
        RuntimeError. Errors raised by ``forward_func`` itself pass through
        unchanged, with a note saying where; a ``forward_func`` that runs the model
        more than once per call is refused. float16/bfloat16 models are computed in
        float32 for the call (forward-mode tangents overflow in float16) and cast
        back exactly, with a warning. A QoI that reads ``h^L`` elsewhere than
        ``output_position`` somewhere along the path (a moving argmax) warns.

        ``attribute`` validates these arguments into an :class:`AttributionRequest`
        (:meth:`request`) and runs :meth:`search` on it. To run more on one batch
        (the routes, the optimality test), build the request once and pass it to
        :meth:`search`, :meth:`score` and the analyses.

        Examples::

            >>> ip = InfluencePatterns(masked_lm_logit_difference(model), model)
            >>> result = ip.attribute(
            ...     input_ids, baselines=tokenizer.mask_token_id,
            ...     additional_forward_args=(mask_positions, is_ids, are_ids),
            ...     output_position=mask_positions)
            >>> print(result.table(0))
        """
        if attribute_to_layer_input or grad_kwargs is not None:
            raise ValueError(
                "attribute_to_layer_input, grad_kwargs: not supported (the layer's "
                "output is interpolated, with plain gradients); leave them unset"
            )
        self._search_of(schedule, beam_width)  # before reading the output positions
        request = self.request(
            inputs,
            baselines,
            target,
            additional_forward_args,
            output_position=None if output_position is _UNSET else output_position,
            attention_mask=attention_mask,
            n_steps=n_steps,
            method=method,
            internal_batch_size=internal_batch_size,
        )
        if output_position is _UNSET:
            request = replace(request, output_positions=self._read_positions(request))
        return self.search(
            request,
            sources=sources,
            return_convergence_delta=return_convergence_delta,
            schedule=schedule,
            show_progress=show_progress,
            beam_width=beam_width,
        )

    def search(
        self,
        request: AttributionRequest,
        *,
        sources: SourcesType = None,
        return_convergence_delta: bool = False,
        schedule: str = "fast",
        show_progress: bool = False,
        beam_width: int = 1,
    ) -> Union[Attributions, AttributionsAndDelta]:
        """:meth:`attribute` on a request: the influence pattern of every source of
        every example of ``request``.

        :meth:`attribute` validates its arguments into a request (:meth:`request`)
        and calls this; a pipeline that runs several analyses on one batch (the
        routes of :func:`~captum_influence_patterns.routes.compare.compare`, the
        optimality test, the convergence doubling) builds the request once and
        calls this, which does not validate those arguments again.

        Args:
            request (AttributionRequest): The batch, its baselines, target, forward
                arguments, attention mask, output positions and integration settings
                (:meth:`request`).
            sources, return_convergence_delta, schedule, show_progress, beam_width:
                As in :meth:`attribute`.

        Returns:
            Attributions or AttributionsAndDelta: As :meth:`attribute`.

        Raises:
            TypeError: for a ``request`` that is not an :class:`AttributionRequest`.
            ValueError: for a request edited in place since it was built or built
                for another model, and as :meth:`attribute`.
        """
        self._check_request(request)
        chosen, beam_width = self._search_of(schedule, beam_width)
        inputs, mask = request.inputs, request.attention_mask
        batch, length = inputs.shape
        positions, settings = request.output_positions, request.settings
        source_lists = validate_sources(
            sources,
            positions,
            length,
            self.graph.is_causal,
            self._output_differs(inputs, request.baseline_ids, positions),
            mask,
        )
        with analysis_mode(self.model):
            self._validate_forward(
                inputs, request.target, request.additional_forward_args, mask
            )
            token_influence, layer_attributions, deltas, patterns = self._run(
                request, chosen, source_lists, beam_width, show_progress
            )
        report = [
            example_convergence(float(token_influence[b].sum()), float(deltas[b]),
                                settings.n_steps)
            for b in range(batch)
        ]
        _warn_unconverged(report)
        result = InfluencePatternsResult(
            token_influence=token_influence,
            patterns=patterns,
            output_positions=positions,
            input_ids=inputs.tolist(),
            convergence_delta=deltas if return_convergence_delta else None,
            metadata=self._metadata(request, chosen, beam_width, report),
        )
        attributions = Attributions.of(torch.stack(layer_attributions), result)
        if return_convergence_delta:
            return AttributionsAndDelta((attributions, result.convergence_delta))
        return attributions

    def _metadata(
        self,
        request: AttributionRequest,
        search: Search,
        beam_width: int,
        report: List[Convergence],
    ) -> Dict[str, Any]:
        """The result's ``metadata``: how it was computed."""
        return {
            "n_steps": request.settings.n_steps,
            "method": request.settings.method,
            "schedule": search.name,
            "beam_width": beam_width,
            "baseline": describe_baseline(request.baselines),
            "model_family": self.graph.family,
            "split_mlp": self.graph.split_mlp,
            "layer": self.layer_name,
            "convergence": [c.to_dict() for c in report],
        }

    def _search_of(self, schedule: str, beam_width: int) -> Tuple[Search, int]:
        """The search ``schedule`` and ``beam_width`` name (the beam above width 1),
        and the width, checked."""
        if schedule not in SEARCHES:
            raise ValueError(
                f"schedule: expected one of {tuple(SEARCHES)}, got {schedule!r}"
            )
        beam_width = validate_beam_width(beam_width)
        return SEARCHES["beam" if beam_width > 1 else schedule], beam_width

    def _run(
        self,
        request: AttributionRequest,
        search: Search,
        source_lists: List[List[int]],
        beam_width: int,
        show_progress: bool,
    ) -> Tuple[Tensor, List[Tensor], Tensor, List[List[Pattern]]]:
        """Run ``search`` on every example of ``request`` (inside
        :func:`analysis_mode`): g (B, T), the layer attributions, the completeness
        gaps (B,) and the patterns."""
        inputs, positions = request.inputs, request.output_positions
        batch, length = inputs.shape
        options = {"beam_width": beam_width}
        token_influence = torch.zeros(batch, length, dtype=torch.float64)
        layer_attributions: List[Tensor] = []
        deltas = torch.zeros(batch, dtype=torch.float64)
        patterns: List[List[Pattern]] = []
        progress = tqdm(
            total=batch * len(search.stages(self.graph.num_layers)),
            desc="influence patterns",
            disable=not show_progress,
        )

        def done(stage: str) -> None:
            progress.set_postfix_str(f"example {b + 1}/{batch}: {stage}")
            progress.update()

        for b in range(batch):
            problem = self.request_problem(request, b)
            end, start = problem.endpoint_qoi()
            if not torch.isfinite(torch.tensor([end, start])).all():
                raise ValueError(
                    f"forward_func: the QoI of example {b} is {end} at the input "
                    f"and {start} at the baseline; it must be finite at both "
                    "(choose another baselines, or check the model's weights)"
                )
            sources_b = torch.tensor(source_lists[b], device=inputs.device)
            state, g = search.run(
                problem,
                sources_b,
                positions[b],
                done,
                **{name: options[name] for name in search.options},
            )
            check_finite(g, f"the token influence g of example {b}")
            warn_moving_reads(problem, positions[b], b)
            patterns.append(state.patterns(g))
            token_influence[b] = g.double().cpu()
            layer_attributions.append(problem.layer_attributions.double().cpu())
            deltas[b] = float(token_influence[b].sum()) - (end - start)
        progress.close()
        return token_influence, layer_attributions, deltas, patterns

    def pattern_influence(
        self,
        inputs: Tensor,
        patterns: Sequence[Sequence[Pattern]],
        baselines: Union[None, int, Tensor] = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        level: Level = "attention",
        attention_mask: Optional[Tensor] = None,
        n_steps: int = DEFAULT_N_STEPS,
        method: str = DEFAULT_METHOD,
        internal_batch_size: Optional[int] = None,
        schedule: str = "reference",
    ) -> List[Tensor]:
        r"""Brute-force influence of given patterns: a gated integrated gradient each.

        Every node off the pattern is gated (docs/method.md, section 4) and the
        gradient at
        the source's word embedding is integrated in reverse mode only, so this checks
        the search, and scores routes found by other means (baselines), like for like.
        With ``schedule="fast"`` the same values come from
        :func:`.search.fast.route_influence`: one shared primal pass with each route's
        tangent at one position per layer, batched over routes (where the row-wise
        schedule applies; the gated reverse passes elsewhere).

        Args:
            inputs (Tensor): (B, T) token ids.
            patterns (sequence): ``patterns[b]`` the patterns to score in example b.
            level (str, optional): ``"attention"`` keeps only each layer's chosen head
                or skip; ``"embedding"`` keeps every node at the chosen positions.
                Default: ``"attention"``
            baselines (int or Tensor, optional): As in :meth:`attribute`, like
                ``target``, ``additional_forward_args``, ``attention_mask``,
                ``n_steps``, ``method`` and ``internal_batch_size`` (default: chunks
                of ``T x n_steps`` rows for the gated reverse passes).
            schedule (str, optional): ``"reference"`` (the brute force above) or
                ``"fast"``. Default: ``"reference"``

        Returns:
            list of Tensor: per example, (P_b,) influences in the order given.
        """
        request = self.request(
            inputs,
            baselines,
            target,
            additional_forward_args,
            attention_mask=attention_mask,
            n_steps=n_steps,
            method=method,
            internal_batch_size=internal_batch_size,
        )
        return self.score(request, patterns, level=level, schedule=schedule)

    def score(
        self,
        request: AttributionRequest,
        patterns: Sequence[Sequence[Pattern]],
        *,
        level: Level = "attention",
        schedule: str = "reference",
    ) -> List[Tensor]:
        """:meth:`pattern_influence` on a request: the influence of given patterns
        (routes) of every example of ``request``.

        :meth:`pattern_influence` validates its arguments into a request
        (:meth:`request`) and calls this; route scoring
        (:func:`~captum_influence_patterns.routes.scoring.score_routes`), the
        comparison and the optimality test call it with the request of their batch.

        Args:
            request (AttributionRequest): The batch and its arguments
                (:meth:`request`).
            patterns, level, schedule: As in :meth:`pattern_influence`.

        Returns:
            list of Tensor: per example, (P_b,) influences in the order given.

        Raises:
            TypeError: for a ``request`` that is not an :class:`AttributionRequest`.
            ValueError: as :meth:`pattern_influence`.
        """
        self._check_request(request)
        if schedule not in ROUTE_SCORERS:
            raise ValueError(
                f"schedule: expected one of {ROUTE_SCORERS}, got {schedule!r}"
            )
        inputs, settings = request.inputs, request.settings
        validate_patterns(patterns, request.batch, inputs.shape[1], self.graph, level)
        with analysis_mode(self.model):
            self._validate_forward(
                inputs,
                request.target,
                request.additional_forward_args,
                request.attention_mask,
            )
            return [
                example_route_influence(
                    lambda chunked: self.request_problem(request, b, chunked),
                    settings,
                    patterns[b],
                    level,
                    schedule,
                )
                for b in range(request.batch)
            ]


def _warn_unconverged(report: List[Convergence]) -> None:
    """Flag, with the numbers, examples whose integral missed completeness by more
    than the tolerance: their g, and every influence along the same path, are not
    sound (docs/decoders.md)."""
    failed = [(b, c) for b, c in enumerate(report) if not c.converged]
    if failed:
        warnings.warn(
            "attribute: "
            + "; ".join(f"example {b}: {c.describe()}" for b, c in failed)
            + ". Raise n_steps, or call convergence.attribute_converged, which "
            "doubles it until it converges (or choose a baseline nearer the input)",
            ConvergenceWarning,
            stacklevel=user_stacklevel(),
        )
