"""``InfluencePatterns``: the Captum attribution class of this library."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._captum_compat import (
    GradientAttribution,
    TargetType,
    run_forward,
    log_usage,
)
from ._validation import (
    PositionsType,
    SourcesType,
    describe_baseline,
    example_args,
    example_target,
    validate_baselines,
    validate_inputs,
    validate_output_positions,
    validate_settings,
    validate_sources,
)
from .influence import ExampleProblem, pattern_influence
from .model_graph import analysis_mode, model_graph
from .results import InfluencePatternsResult, Pattern
from .fast_search import fast_search
from .search import reference_search, stages


class InfluencePatterns(GradientAttribution):
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
    model's word-embedding output: ``x(alpha) = x' + alpha (x - x')`` while position and
    type embeddings stay as they are.

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

    Raises:
        UnsupportedModelError: for an architecture without an adapter.
    """

    def __init__(
        self, forward_func: Callable, model: nn.Module, split_mlp: bool = False
    ) -> None:
        super().__init__(forward_func)
        self.model = model
        self.graph = model_graph(model)
        self.graph.split_mlp = split_mlp

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
        *,
        output_position: PositionsType,
        sources: SourcesType = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        schedule: str = "fast",
        show_progress: bool = False,
    ) -> InfluencePatternsResult:
        r"""Search the influence pattern of every source token of every example.

        Args:
            inputs (Tensor): (B, T) token ids.
            baselines (int or Tensor, optional): Baseline token ids: one id for every
                position, or a (T,), (1, T) or (B, T) tensor. None interpolates from a
                zero word embedding (Captum's default); the paper, and these docs,
                recommend the [MASK] id. Default: None
            target (TargetType, optional): Captum target selecting one scalar per
                example from ``forward_func``'s output (int, tuple, (B,) tensor or
                list).
                Default: None
            additional_forward_args (Any, optional): Extra arguments of
                ``forward_func``; tensors with a leading dimension B are split per
                example and expanded to the rows of each pass, like Captum does.
                Default: None
            output_position (int, (B,) Tensor or None): The position whose final
                hidden state feeds the QoI ([MASK] for masked LM, 0 for [CLS]).
                ``j_L`` is fixed to it. None for a QoI that reads every position
                (e.g. mean pooling): the last layer is then searched like the others
                (docs/method.md, section 6) and every position is a source.
            sources (sequence, optional): Positions to explain, shared by every example
                or one sequence per example. Default: every position but the output
                position (in a causal model, every earlier position).
            n_steps (int, optional): Interpolation points. Default: 50
            method (str, optional): Captum approximation method, one of
                ``gausslegendre``, ``riemann_left``, ``riemann_right``,
                ``riemann_middle``, ``riemann_trapezoid``. Default: ``gausslegendre``
            internal_batch_size (int, optional): Most rows (source x step pairs) per
                pass. The fast schedule choose nodes inside one pass per chunk, so its
                chunks hold whole sources: at least ``n_steps`` rows.
                Default: None (chunks chosen from the problem size, see
                docs/performance.md)
            return_convergence_delta (bool, optional): Also return the completeness
                error ``sum_j g_j - (QoI(x) - QoI(x'))`` per example, summed over all
                positions (sources or not). Default: False
            schedule (str, optional): ``"fast"`` (docs/method.md, section 7) or
                ``"reference"`` (recompute both passes for every layer, as the authors
                do). Default: ``"fast"``
            show_progress (bool, optional): Show a tqdm progress bar (on stderr) over
                the examples and the stages of each search. Default: False

        Returns:
            InfluencePatternsResult: ``token_influence`` (B, T) ``g`` (zero where not a
            source), ``patterns[b]`` (one :class:`Pattern` per source, in source order)
            and, when asked, ``convergence_delta`` (B,).

        The model is put in eval mode with eager attention for the call; its training
        flag, attention implementation and hooks are restored afterwards, also when an
        exception escapes.

        Examples::

            >>> ip = InfluencePatterns(masked_lm_logit_difference(model), model)
            >>> result = ip.attribute(
            ...     input_ids, baselines=tokenizer.mask_token_id,
            ...     additional_forward_args=(mask_positions, is_ids, are_ids),
            ...     output_position=mask_positions)
            >>> print(result.table(0))
        """
        batch = validate_inputs(inputs, self.graph.vocab_size)
        length = inputs.shape[1]
        baseline_ids = validate_baselines(baselines, inputs, self.graph.vocab_size)
        positions = validate_output_positions(output_position, batch, length)
        source_lists = validate_sources(
            sources, positions, length, self.graph.is_causal
        )
        validate_settings(n_steps, method, internal_batch_size, schedule)
        search = fast_search if schedule == "fast" else reference_search
        with analysis_mode(self.model):
            self._validate_forward(inputs, target, additional_forward_args)
            token_influence = torch.zeros(batch, length, dtype=torch.float64)
            deltas = torch.zeros(batch, dtype=torch.float64)
            patterns: List[List[Pattern]] = []
            progress = tqdm(
                total=batch * stages(schedule, self.graph.num_layers),
                desc="influence patterns",
                disable=not show_progress,
            )

            def done(stage: str) -> None:
                progress.set_postfix_str(f"example {b + 1}/{batch}: {stage}")
                progress.update()

            for b in range(batch):
                problem = self.example_problem(
                    inputs,
                    baseline_ids,
                    target,
                    additional_forward_args,
                    b,
                    n_steps,
                    method,
                    internal_batch_size,
                )
                sources_b = torch.tensor(source_lists[b], device=inputs.device)
                state, g = search(problem, sources_b, positions[b], done)
                patterns.append(state.patterns(g))
                token_influence[b, source_lists[b]] = g[sources_b].double().cpu()
                if return_convergence_delta:
                    end, start = problem.endpoint_qoi()
                    deltas[b] = float(g.sum()) - (end - start)
            progress.close()
        return InfluencePatternsResult(
            token_influence=token_influence,
            patterns=patterns,
            output_positions=positions,
            input_ids=inputs.tolist(),
            convergence_delta=deltas if return_convergence_delta else None,
            metadata={
                "n_steps": n_steps,
                "method": method,
                "schedule": schedule,
                "baseline": describe_baseline(baselines),
                "model_family": self.graph.family,
                "split_mlp": self.graph.split_mlp,
            },
        )

    def pattern_influence(
        self,
        inputs: Tensor,
        patterns: Sequence[Sequence[Pattern]],
        baselines: Union[None, int, Tensor] = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        level: str = "attention",
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: Optional[int] = None,
    ) -> List[Tensor]:
        r"""Brute-force influence of given patterns: a gated integrated gradient each.

        Every node off the pattern is gated (docs/method.md, section 4) and the
        gradient at
        the source's word embedding is integrated in reverse mode only, so this checks
        the search, and scores routes found by other means (baselines), like for like.

        Args:
            inputs (Tensor): (B, T) token ids.
            patterns (sequence): ``patterns[b]`` the patterns to score in example b.
            level (str, optional): ``"attention"`` keeps only each layer's chosen head
                or skip; ``"embedding"`` keeps every node at the chosen positions.
                Default: ``"attention"``
            baselines (int or Tensor, optional): As in :meth:`attribute`, like
                ``target``, ``additional_forward_args``, ``n_steps``, ``method`` and
                ``internal_batch_size``.

        Returns:
            list of Tensor: per example, (P_b,) influences in the order given.
        """
        batch = validate_inputs(inputs, self.graph.vocab_size)
        baseline_ids = validate_baselines(baselines, inputs, self.graph.vocab_size)
        validate_settings(n_steps, method, internal_batch_size, "fast")
        if len(patterns) != batch:
            raise ValueError(
                f"patterns: expected one list per example ({batch}), "
                f"got {len(patterns)}"
            )
        for row in patterns:
            for pattern in row:
                if not self.graph.split_mlp and any(n.ffn for n in pattern.nodes):
                    raise ValueError(
                        "patterns: these patterns choose MLP or residual nodes; score "
                        "them with InfluencePatterns(..., split_mlp=True)"
                    )
                if len(pattern.positions) != self.graph.num_layers + 1:
                    raise ValueError(
                        "patterns: each pattern needs L + 1 = "
                        f"{self.graph.num_layers + 1} positions, got "
                        f"{len(pattern.positions)}"
                    )
        with analysis_mode(self.model):
            self._validate_forward(inputs, target, additional_forward_args)
            return [
                pattern_influence(
                    self.example_problem(
                        inputs,
                        baseline_ids,
                        target,
                        additional_forward_args,
                        b,
                        n_steps,
                        method,
                        internal_batch_size,
                    ),
                    patterns[b],
                    level,
                )
                for b in range(batch)
            ]

    # ------------------------------------------------------------------------ helpers
    def example_problem(
        self,
        inputs: Tensor,
        baseline_ids: Optional[Tensor],
        target: TargetType,
        additional_forward_args: Any,
        b: int,
        n_steps: int,
        method: str,
        internal_batch_size: Optional[int],
    ) -> ExampleProblem:
        """The gated-pass machinery (:class:`~.influence.ExampleProblem`) of example
        ``b``, for tools that run their own passes (baselines, ablation).

        ``baseline_ids`` are (B, T) ids or None; the other arguments are those of
        :meth:`attribute`, already validated. Call it inside :func:`analysis_mode`.
        """
        return ExampleProblem(
            self.graph,
            self.forward_func,
            inputs[b],
            None if baseline_ids is None else baseline_ids[b],
            example_target(target, b, inputs.shape[0]),
            example_args(additional_forward_args, b, inputs.shape[0]),
            n_steps,
            method,
            internal_batch_size,
        )

    def _validate_forward(
        self, inputs: Tensor, target: TargetType, additional_forward_args: Any
    ) -> None:
        """One plain forward: the QoI must be one scalar per example."""
        batch = inputs.shape[0]
        try:
            with torch.no_grad():
                output = run_forward(
                    self.forward_func, inputs, target, additional_forward_args
                )
        except (AssertionError, IndexError, RuntimeError) as error:
            raise ValueError(
                f"target: could not select one scalar per example from forward_func's "
                f"output ({error}). Pass a target that selects one value per example, "
                "or a forward_func that returns (B,) scalars (see "
                "captum_influence_patterns.qoi)."
            ) from error
        if (
            not isinstance(output, Tensor)
            or output.numel() != batch
            or (output.dim() and output.shape[0] != batch)
        ):
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output)
            raise ValueError(
                "forward_func/target: expected one scalar per example, "
                f"shape ({batch},), "
                f"got {shape}. Choose a target that selects one value per example, "
                "or wrap "
                "forward_func to return the QoI (see captum_influence_patterns.qoi)."
            )
