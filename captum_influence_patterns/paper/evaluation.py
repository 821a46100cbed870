"""Evaluation runs: the pattern search over a data set, one JSON line per example.

:func:`evaluate` runs :meth:`InfluencePatterns.attribute` (and, when asked, the
reference routes of :mod:`..routes.compare` and the ablations of :mod:`.ablation`)
over the sentences of agreement tasks (:func:`task_items`) or a user's JSONL file of
``{"text", "target", "contrast"}`` objects (:func:`jsonl_items`), and appends one JSON
line per example to the output file as it goes (flushed and fsynced per line).

Resuming: every example has a stable id (task, index and a hash of the text). A run
that was killed continues where it stopped: existing lines are read, a trailing partial
line (a kill during a write) is cut off, and examples whose id is already present are
skipped, so nothing is lost or written twice. A ``<output>.meta.json`` file records the
settings and a hash of every input item; resuming with different settings, a changed
input, or results without their meta file, is refused. Every setting and every item is
checked before anything is written (an item that does not fit the model is an
:class:`EvaluationError` listing the bad items, or, with ``skip_invalid=True``, a
``{"id", ..., "skipped": reason}`` line that :func:`load_results` leaves out). One
process at a time writes a results file: it holds an exclusive ``fcntl.flock`` on
``<output>.lock`` (``<part>.lock`` per shard), and a second writer gets an
:class:`EvaluationError` naming the file.

Scale-out uses ``torch.distributed``: the same command runs unchanged under
``torchrun --nproc_per_node N`` (it reads ``RANK``/``WORLD_SIZE`` and joins a ``gloo``
process group). Rank r takes the examples ``i % N == r`` and writes its own part file
``<output>.part-r-of-N.jsonl`` (with ``<part>.meta.json``: the settings and the ids it
owns); after a barrier, rank 0 merges the parts into ``<output>`` (in data-set order)
and removes them. ``shard=(i, n)`` does the same split by hand across machines without
a process group; :func:`merge_shards` then merges, only when every part is there and
complete, and removes the parts only when asked.

Example:
    >>> loaded = load_model()  # doctest: +SKIP
    >>> items = task_items(["sva_obj_rc"], 20, loaded.tokenizer)  # doctest: +SKIP
    >>> evaluate(loaded, items, "runs/sva.jsonl",
    ...          EvaluationSettings(routes=DEFAULT_METHODS, ablation=True))
    ...          # doctest: +SKIP
    'runs/sva.jsonl'
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from .ablation import REFERENCES, NodeValues, ablation_record, node_means
from .._validation import validate_settings
from ..attribution import InfluencePatterns
from ..convergence import DEFAULT_MAX_STEPS, DEFAULT_TOLERANCE, check_tolerance
from ..files import write_json_atomic
from ..integration import DEFAULT_METHOD, DEFAULT_N_STEPS
from ..model_graph import analysis_mode
from ..models.explanation import (
    BASELINES as INPUT_BASELINES,
    explain,
    prepare_explanation,
)
from ..models.loading import LoadedModel
from ..models.qoi_kinds import QOI_KINDS, Explanation, ExplanationError
from ..optimality import optimality_test
from ..request import AttributionRequest
from ..results import LEVELS, InfluencePatternsResult, Pattern
from ..routes.compare import ROUTES, compare
from ..routes.finders import ORIENTATIONS
from .datasets import EvalItem, EvaluationError, describe_problems
from .faithfulness import faithfulness_record, token_scores
from .lm_prefixes import item_prediction
from .records import append_record, read_records
from .run_files import (
    check_meta,
    check_output_path,
    exclusive_writer,
    item_hashes,
    merge_shards,
    meta_path,
    relative_input,
    shard_path,
)

#: Word roles explained by default (``sources="roles"``): the subject, the attractor
#: and the verbs. Other positions are explained with ``sources="all"``.
ROLE_SOURCES = ("subject", "attractor", "rc_verb", "matrix_verb", "verb")
#: Levels of the ablation (see :mod:`.ablation`).
ABLATION_LEVELS = LEVELS


# ------------------------------------------------------------------------- settings
@dataclass
class EvaluationSettings:
    """What is computed per example (everything that changes a result line).

    Attributes:
        n_steps (int): Interpolation points.
        method (str): Captum approximation method.
        sources (str): ``"all"`` (every token, as the authors do: every position
            but the output, plus the output position where its embedding differs
            from the baseline's), ``"roles"`` (the positions of :data:`ROLE_SOURCES`;
            every non-special position when an example has no roles) or
            comma-separated role names.
        baseline (str): Baseline input: ``"mask"``, ``"pad"`` or ``"zero"``.
        routes (tuple of str): Reference routes to compute and score
            (:data:`~..routes.compare.ROUTES`); empty for none.
        route_orientation (str): Orientation of the attention routes: ``"flow"``
            (the direction information flows) or ``"attends"`` (what a token attends
            to, as in the authors' released code).
        optimality (int): Random routes per source (of each kind) for the
            optimality test (:func:`~..optimality.optimality_test`, every opponent);
            0 for none.
        ablation (bool): Ablate the subject's route and the union of routes of the
            guided patterns and every reference route
            (:func:`~.ablation.ablation_record`).
        references (tuple of str): Ablation reference values, ``"mean"`` and/or
            ``"zero"``.
        ablation_level (str): ``"attention"`` or ``"embedding"`` (which nodes a route
            keeps, see :mod:`.ablation`).
        faithfulness (bool): Score the token attributions of g and the reference
            methods against removals of the scored tokens
            (:func:`~.faithfulness.faithfulness_record`).
        internal_batch_size (int, optional): Rows per pass (memory only).
        tolerance (float): Largest accepted ``|convergence delta| / |dQoI|``; above
            it ``n_steps`` is doubled for that sentence (:mod:`~..convergence`),
            and every later phase runs at the steps used.
        max_steps (int): Most steps the doubling reaches; a sentence that does not
            converge is recorded with ``converged: false``.
    """

    n_steps: int = DEFAULT_N_STEPS
    method: str = DEFAULT_METHOD
    sources: str = "all"
    baseline: str = "mask"
    routes: Tuple[str, ...] = ()
    route_orientation: str = "flow"
    optimality: int = 0
    ablation: bool = False
    references: Tuple[str, ...] = ("mean",)
    ablation_level: str = "attention"
    internal_batch_size: Optional[int] = None
    faithfulness: bool = False
    tolerance: float = DEFAULT_TOLERANCE
    max_steps: int = DEFAULT_MAX_STEPS

    def __post_init__(self) -> None:
        self.routes = tuple(self.routes)
        self.references = tuple(self.references)
        try:
            validate_settings(self.n_steps, self.method, self.internal_batch_size)
            check_tolerance(self.tolerance, self.max_steps)
        except ValueError as error:
            raise EvaluationError(str(error)) from error
        unknown = [name for name in self.routes if name not in ROUTES]
        if unknown:
            raise EvaluationError(f"routes: unknown {unknown}; use {', '.join(ROUTES)}")
        _choose("route_orientation", self.route_orientation, ORIENTATIONS)
        if (
            isinstance(self.optimality, bool)
            or not isinstance(self.optimality, int)
            or self.optimality < 0
        ):
            raise EvaluationError(
                f"optimality: expected an int >= 0 (random routes per source), got "
                f"{self.optimality!r}"
            )
        bad = [name for name in self.references if name not in REFERENCES]
        if bad or not self.references:
            raise EvaluationError(
                f"references: expected some of {REFERENCES}, got {bad}"
            )
        _choose("baseline", self.baseline, INPUT_BASELINES)
        _choose("ablation_level", self.ablation_level, ABLATION_LEVELS)
        if not isinstance(self.sources, str) or not self.sources.strip(" ,"):
            raise EvaluationError(
                "sources: expected 'roles', 'all' or comma-separated role names, "
                f"got {self.sources!r}"
            )

    def fingerprint(self) -> Dict[str, Any]:
        """The settings that change results (``internal_batch_size`` does not)."""
        data = asdict(self)
        data.pop("internal_batch_size")
        if not self.faithfulness:  # results from before the setting resume as they are
            data.pop("faithfulness")
        for name, default in (
            ("tolerance", DEFAULT_TOLERANCE), ("max_steps", DEFAULT_MAX_STEPS)
        ):  # files written before the check carry neither; the defaults match them
            if data[name] == default:
                data.pop(name)
        data["routes"] = list(self.routes)
        data["references"] = list(self.references)
        return data


def _choose(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise EvaluationError(
            f"{name}: expected one of {', '.join(choices)}, got {value!r}"
        )


#: Seconds per 11-token sentence at 50 steps on one idle CPU thread, embedded model
#: (docs/performance.md, "The evaluation, per sentence"): the search, and what
#: ``--routes`` (with or without ``--ablation``) and ``--optimality 20`` add to it.
SECONDS_PER_SENTENCE = {"search": 1.45, "routes": 6.1, "optimality": 9.0}


def estimate(settings: EvaluationSettings, count: int) -> str:
    """A line on how long ``count`` items take, from the measured seconds above."""
    phases = SECONDS_PER_SENTENCE
    seconds = phases["search"] + (phases["routes"] if settings.routes else 0.0)
    seconds += phases["optimality"] * settings.optimality / 20
    total = seconds * settings.n_steps / 50 * count
    return (
        f"{count} item(s): about {total / 60:.0f} min on one idle CPU thread for the "
        f"embedded model and 11-token sentences ({seconds * settings.n_steps / 50:.1f}"
        " s each, docs/performance.md); longer sentences, larger models and a busy "
        "machine take several times that"
    )


# ---------------------------------------------------------------------- distribution
@dataclass
class _Worker:
    rank: int = 0
    world: int = 1
    distributed: bool = False
    owns_group: bool = False

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.owns_group:
            torch.distributed.destroy_process_group()


def _worker(shard: Optional[Tuple[int, int]]) -> _Worker:
    """This process's share: a hand-made shard, a torchrun rank, or everything."""
    if shard is not None:  # checked by _check_shard
        return _Worker(*shard)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Worker()
    import torch.distributed as dist

    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("gloo")
    return _Worker(dist.get_rank(), dist.get_world_size(), True, owns)


# ------------------------------------------------------------------------ evaluation
def evaluate(
    loaded: LoadedModel,
    items: Sequence[EvalItem],
    output: str | os.PathLike,
    settings: Optional[EvaluationSettings] = None,
    shard: Optional[Tuple[int, int]] = None,
    show_progress: bool = True,
    dataset: Optional[Dict[str, Any]] = None,
    skip_invalid: bool = False,
) -> str:
    """Evaluate every item, appending one JSON line per example; resumable.

    Nothing is written before the output path and every item have been checked
    (:func:`invalid_items`); then the output is locked (:func:`exclusive_writer`), the
    settings are compared with (or written to) the meta file, and the items not yet
    in the output are evaluated.

    Args:
        loaded (LoadedModel): The model (:func:`~..models.loading.load_model`).
        items (sequence of EvalItem): The data set (:func:`task_items`,
            :func:`jsonl_items`).
        output (str or PathLike): The JSONL results file.
        settings (EvaluationSettings, optional): What to compute. Default: defaults.
        shard (tuple, optional): ``(i, n)``: evaluate only the items with
            ``index % n == i``, into :func:`shard_path`; merge with
            :func:`merge_shards`. Under ``torchrun`` leave it None: ranks shard and
            merge by themselves. Default: None
        show_progress (bool, optional): tqdm progress bar. Default: True
        dataset (dict, optional): Description of the data set for the meta file
            (e.g. tasks, n and seed). Default: the number of items.
        skip_invalid (bool, optional): Record items that do not fit the model as
            ``{"id", "index", "task", "form", "text", "skipped": reason}`` lines
            instead of refusing the run. Default: False

    Returns:
        str: ``output``, or the part file of a hand-made shard.

    Raises:
        EvaluationError: A bad setting, output path, shard or item (all bad items are
            listed), another process writing the same file, or existing results with
            other settings or without their meta file.

    Under torchrun every rank must get the same items and settings; an exception on
    one rank leaves the others waiting at the next barrier until torchrun ends them.
    """
    settings = settings or EvaluationSettings()
    output = os.fspath(output)
    check_output_path(output)
    _check_shard(shard)
    invalid = invalid_items(loaded, items, settings)
    if invalid and not skip_invalid:
        raise EvaluationError(
            describe_problems(invalid) + " (fix them, or pass --skip-invalid / "
            "skip_invalid=True to record them as skipped)"
        )
    meta = {
        "model": loaded.name,
        "dataset": relative_input(dataset, output) or {"items": len(items)},
        "settings": settings.fingerprint(),
        "items": item_hashes(items),
    }
    worker = _worker(shard)
    try:
        target = (
            output if worker.world == 1
            else shard_path(output, worker.rank, worker.world)
        )
        with exclusive_writer(target):
            _start(worker, output, target, meta)
            if target != output:  # what merge_shards checks the part against
                owned = [
                    it.id for it in items if it.index % worker.world == worker.rank
                ]
                write_json_atomic(
                    meta_path(target),
                    {**meta, "shard": [worker.rank, worker.world], "ids": owned},
                )
            _run(loaded, items, settings, worker, (output, target), invalid,
                 show_progress)
        worker.barrier()
        if worker.distributed and worker.rank == 0:
            merge_shards(output, worker.world, remove=True)
        worker.barrier()
        return output if worker.distributed else target
    finally:
        worker.close()


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


def _check_shard(shard: Optional[Tuple[int, int]]) -> None:
    if shard is None:
        return
    index, count = shard
    if not 0 <= index < count:
        raise EvaluationError(
            f"shard: expected i/n with 0 <= i < n, got {index}/{count}"
        )


def _start(worker: _Worker, output: str, target: str, meta: Dict[str, Any]) -> None:
    """Check (rank 0 first, which writes it for a fresh run) the meta file."""
    results = sorted({target, output})
    if worker.rank == 0:
        check_meta(output, meta, results)
    worker.barrier()
    if worker.rank != 0:
        check_meta(output, meta, results)


def _run(
    loaded: LoadedModel,
    items: Sequence[EvalItem],
    settings: EvaluationSettings,
    worker: _Worker,
    files: Tuple[str, str],
    invalid: Dict[str, str],
    show_progress: bool,
) -> None:
    """Append a record for each of this worker's items not yet in the results
    (``files``: the output and the file this worker writes)."""
    output, target = files
    done = {r["id"] for r in read_records(target, repair=True)}
    if target != output:  # a shard resumed after its parts were merged
        done |= {r["id"] for r in read_records(output)}
    mine = [it for it in items if it.index % worker.world == worker.rank]
    todo = [it for it in mine if it.id not in done]
    references = _References(loaded, [it for it in items if it.id not in invalid],
                             settings)
    bar = tqdm(
        todo,
        desc=f"evaluate [{worker.rank}/{worker.world}]",
        disable=not show_progress,
        position=worker.rank if worker.distributed else None,
    )
    for item in bar:
        if item.id in invalid:
            record = {**_item_fields(item), "skipped": invalid[item.id]}
        else:
            record = evaluate_example(loaded, item, settings, references)
        append_record(target, record)


class _References:
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
    references: Optional[_References] = None,
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
            **_item_fields(item),
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
            record["optimality"] = _optimality(ip, request, settings, result)
        if settings.ablation:
            references = references or _References(loaded, [item], settings)
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
) -> List[Dict[str, Any]]:
    """Each guided route against the optimum (exhaustive or the beam), the
    stay-then-jump route, the best attention route and ``settings.optimality`` random
    routes of each kind, scored by the same gated integrated gradient."""
    return optimality_test(
        ip,
        request,
        result,
        n_random=settings.optimality,
        seed=0,
        internal_batch_size=settings.internal_batch_size,
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


def _item_fields(item: EvalItem) -> Dict[str, Any]:
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


if __name__ == "__main__":  # a module of the library, not a command
    raise SystemExit(
        "captum_influence_patterns.paper.evaluation is not a command; run "
        "`python -m captum_influence_patterns evaluate ...` (also under torchrun)"
    )
