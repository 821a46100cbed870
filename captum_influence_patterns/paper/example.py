"""One example of an evaluation: the search, and when asked the reference routes, the
optimality test, the ablation and the faithfulness measures, as one JSON-safe record
(:func:`evaluate_example`); :func:`invalid_items` is the same preparation as a dry run.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .ablation import NodeValues, ablation_record, node_means
from ..attribution import InfluencePatterns
from ..graph import analysis_mode
from ..models.explanation import explain, prepare_explanation
from ..models.loading import LoadedModel
from ..models.qoi_kinds import QOI_KINDS, Explanation, ExplanationError
from ..routes.optimality import optimality_test
from ..routes.optimality_records import OptimalityRow
from ..request import AttributionRequest
from ..results import InfluencePatternsResult, Pattern
from ..routes.compare import compare
from .datasets import EvalItem, EvaluationError
from .faithfulness import faithfulness_record, token_scores
from .lm_prefixes import item_prediction
from .settings import ROLE_SOURCES, EvaluationSettings


def invalid_items(
    loaded: LoadedModel, items: Sequence[EvalItem], settings: EvaluationSettings
) -> Dict[str, str]:
    """Items that cannot be evaluated, id -> reason (a cheap dry run: tokenize, build
    the QoI, find the sources; no forward pass)."""
    problems: Dict[str, str] = {}
    for item in items:
        try:
            _sources(item, _prepare(loaded, item, settings), loaded, settings.sources)
        except ValueError as error:  # ExplanationError, EvaluationError
            problems[item.id] = str(error)
    return problems


class AblationReferences:
    """Ablation reference values per task, over all the task's items (every shard
    sees the same data set, so every shard uses the same means)."""

    def __init__(
        self,
        loaded: LoadedModel,
        items: Sequence[EvalItem],
        settings: EvaluationSettings,
    ) -> None:
        self.loaded = loaded
        self.items = items
        self.settings = settings
        self._means: Dict[str, NodeValues] = {}

    def _explained_ids(self, item: EvalItem) -> Optional[List[int]]:
        """The token ids as explained (a decoder's neutral baseline adds a BOS);
        None for an item that cannot be explained (skipped)."""
        try:
            return _prepare(self.loaded, item, self.settings).input_ids[0].tolist()
        except ExplanationError:
            return None

    def for_task(self, task: str) -> Dict[str, NodeValues]:
        if task not in self._means:
            explained = [
                self._explained_ids(item) for item in self.items if item.task == task
            ]
            ids = [row for row in explained if row is not None]
            self._means[task] = node_means(self.loaded.model, ids)
        means = self._means[task]
        values = {"mean": means, "zero": means.zeros_like()}
        return {name: values[name] for name in self.settings.references}


def evaluate_example(
    loaded: LoadedModel,
    item: EvalItem,
    settings: EvaluationSettings,
    references: Optional[AblationReferences] = None,
) -> Dict[str, Any]:
    """Search, and optionally compare and ablate, one example; a JSON-safe record.

    The record holds: ``id``, ``index``, ``task``, ``form``, ``text``, ``tokens``,
    ``input_ids``, ``roles``, ``output_position``, ``correct``/``wrong`` (the words),
    ``qoi`` (QoI at the input), ``prediction_correct`` (QoI > 0), ``sources``,
    ``source_roles`` (position -> role), ``token_influence`` (g per position),
    ``convergence_delta``, ``patterns`` (guided, one per source), and when asked
    ``routes`` (reference route name -> patterns, scored by the same gated
    integrated gradient), ``route_scores`` (name -> each route's own score, e.g. its
    product of attention weights), ``optimality`` (per source, the guided route
    against random routes), ``ablation`` and ``faithfulness`` (the token
    attributions against removals, :func:`~.faithfulness.faithfulness_record`).
    """
    explanation = _prepare(loaded, item, settings)
    sources, source_roles = _sources(item, explanation, loaded, settings.sources)
    qoi = explanation.qoi_value()  # the model as the user runs it
    # one attribution object and one request, validated once, per example: the
    # search, the routes, the optimality and the ablation read them, all inside one
    # analysis mode
    ip = InfluencePatterns(explanation.forward_func, loaded.model)
    request = explanation.request(ip, **_common(settings))
    with analysis_mode(loaded.model):
        result = explain(
            loaded,
            explanation,
            sources=sources,
            attribution=ip,
            request=request,
            tolerance=settings.tolerance,
            max_steps=settings.max_steps,
        )
        convergence = result.metadata["convergence"][0]
        if convergence["n_steps"] != request.settings.n_steps:  # doubled
            request = replace(
                request,
                settings=replace(request.settings, n_steps=convergence["n_steps"]),
            )
        # sources="all": the attribution's own
        sources = [p.source for p in result.patterns[0]]
        patterns: Dict[str, List[Pattern]] = {"guided": list(result.patterns[0])}
        record: Dict[str, Any] = {
            **item_fields(item),
            "tokens": explanation.tokens,
            "input_ids": explanation.input_ids[0].tolist(),
            "roles": dict(item.roles),
            "output_position": explanation.output_position,
            "correct": item.target,
            "wrong": item.contrast,
            "qoi": qoi,
            "prediction_correct": qoi > 0,
            "sources": sources,
            "source_roles": {
                str(pos): role for pos, role in source_roles.items() if pos in sources
            },
            "token_influence": result.token_influence[0].tolist(),
            "convergence_delta": float(result.convergence_delta[0]),
            "n_steps": convergence["n_steps"],
            "convergence": convergence,
            "patterns": [p.to_dict() for p in patterns["guided"]],
        }
        if loaded.kind == "causal_lm":  # the pair among the model's top two?
            record["top2"] = item_prediction(loaded, item)["top2"]
        if settings.routes:
            record.update(
                _route_fields(ip, request, sources, settings, result, patterns)
            )
        if settings.optimality:
            record["optimality"] = [
                row.to_dict() for row in _optimality(ip, request, settings, result)
            ]
        if settings.ablation:
            references = references or AblationReferences(loaded, [item], settings)
            record["ablation"] = ablation_record(
                ip.model,
                ip.forward_func,
                request,
                patterns=patterns,
                references=references.for_task(item.task),
                subject=item.roles.get("subject"),
                level=settings.ablation_level,
            )
        if settings.faithfulness:
            record["faithfulness"] = _faithfulness(
                loaded, ip, request, result, sources
            )
    return record


def _faithfulness(
    loaded: LoadedModel,
    ip: InfluencePatterns,
    request: AttributionRequest,
    result: InfluencePatternsResult,
    sources: List[int],
) -> Dict[str, Any]:
    """The faithfulness measures on the example's word tokens (its sources but the
    output position and special tokens; before the output in a causal model):
    removal by ``[UNK]`` and ``[MASK]`` for encoders, by deletion and by
    replacement with the unknown (else end-of-text) token for decoders. g is the
    search's own ``token_influence``."""
    output_position = result.output_positions[0]
    if output_position is None:
        raise EvaluationError(
            "faithfulness: the QoI reads no fixed output position (a pooled QoI); "
            "leave out --faithfulness"
        )
    tokenizer = loaded.tokenizer
    special = set(tokenizer.all_special_ids)
    causal = ip.graph.is_causal
    ids = request.inputs[0].tolist()
    positions = [
        j
        for j in sources
        if j != output_position
        and ids[j] not in special
        and (j < output_position or not causal)
    ]
    if causal:
        replacement = tokenizer.unk_token_id
        if replacement is None:
            replacement = tokenizer.eos_token_id
        blanks: Dict[str, Any] = {"deletion": "deletion", "replacement": replacement}
    else:
        blanks = {"unk": tokenizer.unk_token_id, "mask": tokenizer.mask_token_id}
    missing = [name for name, token in blanks.items() if token is None]
    if missing:
        raise EvaluationError(
            f"faithfulness: the tokenizer has no token for {', '.join(missing)}"
        )
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id or 0
    g = result.token_influence[0]
    scores = token_scores(ip, request, 0, output_position, g=g)
    return faithfulness_record(
        ip, request, 0, output_position, positions, blanks, scores=scores, pad=pad
    )


def _optimality(
    ip: InfluencePatterns,
    request: AttributionRequest,
    settings: EvaluationSettings,
    result: InfluencePatternsResult,
) -> List[OptimalityRow]:
    """Each guided route against the optimum (exhaustive or the beam), the
    stay-then-jump route, the best attention route and ``settings.optimality`` random
    routes of each kind, scored by the same gated integrated gradient."""
    return optimality_test(
        ip,
        request,
        result,
        n_random=settings.optimality,
        seed=0,
        orientation=settings.route_orientation,
    )


def _prepare(
    loaded: LoadedModel, item: EvalItem, settings: EvaluationSettings
) -> Explanation:
    """The example's explanation: a word contrast, or a class contrast for a
    classifier (a labelled sentence file)."""
    if QOI_KINDS[loaded.kind].compares == "classes":
        return prepare_explanation(
            loaded,
            item.text,
            target_class=item.target,
            contrast_class=item.contrast,
            baseline=settings.baseline,
        )
    return prepare_explanation(
        loaded, item.text, item.target, item.contrast, baseline=settings.baseline
    )


def item_fields(item: EvalItem) -> Dict[str, Any]:
    """What identifies an example in its record."""
    return {
        "id": item.id,
        "index": item.index,
        "task": item.task,
        "form": item.form,
        "text": item.text,
    }


def _common(settings: EvaluationSettings) -> Dict[str, Any]:
    """The integration settings every pass of an example shares."""
    return dict(
        n_steps=settings.n_steps,
        method=settings.method,
        internal_batch_size=settings.internal_batch_size,
    )


def _route_fields(
    ip: InfluencePatterns,
    request: AttributionRequest,
    sources: List[int],
    settings: EvaluationSettings,
    guided: Any,
    patterns: Dict[str, List[Pattern]],
) -> Dict[str, Any]:
    """Reference routes scored like the guided patterns (adds them to ``patterns``
    for the ablation)."""
    comparison = compare(
        ip,
        request,
        sources=sources,
        methods=settings.routes,
        guided=guided,
        orientation=settings.route_orientation,
    )
    for name in settings.routes:
        patterns[name] = list(comparison.patterns[0][name])
    return {
        "routes": {
            name: [p.to_dict() for p in patterns[name]] for name in settings.routes
        },
        "route_scores": {
            name: [row[name]["score"] for row in comparison.records]
            for name in settings.routes
        },
    }


def _sources(
    item: EvalItem, explanation: Explanation, loaded: LoadedModel, option: str
) -> Tuple[Optional[List[int]], Dict[int, str]]:
    """Source positions of an example and the word role of each (when it has one);
    None for every token (the attribution's default sources)."""
    output = explanation.output_position
    length = explanation.input_ids.shape[1]
    by_position = {pos: role for role, pos in item.roles.items()}
    outside = sorted(j for j in by_position if not 0 <= j < length)
    if outside:
        raise EvaluationError(
            f"role position(s) {outside} outside the {length} tokens (roles count "
            "[CLS] as position 0)"
        )
    if option == "all":
        return None, by_position  # the attribution's default: every token
    if option == "roles":
        positions = sorted(item.roles[r] for r in ROLE_SOURCES if r in item.roles)
        if not positions:
            special = set(getattr(loaded.tokenizer, "all_special_ids", []))
            ids = explanation.input_ids[0].tolist()
            positions = [
                j for j in range(length) if j != output and ids[j] not in special
            ]
    else:
        wanted = [name.strip() for name in option.split(",") if name.strip()]
        missing = [name for name in wanted if name not in item.roles]
        if missing:
            raise EvaluationError(f"no role {missing} (roles: {item.roles})")
        positions = sorted({item.roles[name] for name in wanted})
    positions = [j for j in positions if j != output]
    if not positions:
        raise EvaluationError(f"no source position for sources={option!r}")
    return positions, {j: by_position[j] for j in positions if j in by_position}
