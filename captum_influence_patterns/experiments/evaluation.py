"""Evaluation runs: the pattern search over a data set, one JSON line per example.

:func:`evaluate` runs :meth:`InfluencePatterns.attribute` (and, when asked, the
baselines of :mod:`.baselines` and the ablations of :mod:`.ablation`) over the
sentences of agreement tasks (:func:`task_items`) or a user's JSONL file of
``{"text", "target", "contrast"}`` objects (:func:`jsonl_items`), and appends one JSON
line per example to the output file as it goes (flushed and fsynced per line).

Resuming: every example has a stable id (task, index and a hash of the text). A run
that was killed continues where it stopped: existing lines are read, a trailing partial
line (a kill during a write) is cut off, and examples whose id is already present are
skipped, so nothing is lost or written twice. A ``<output>.meta.json`` file records the
settings; resuming with different settings is refused.

Scale-out uses ``torch.distributed``: the same command runs unchanged under
``torchrun --nproc_per_node N`` (it reads ``RANK``/``WORLD_SIZE`` and joins a ``gloo``
process group). Rank r takes the examples ``i % N == r`` and writes its own part file
``<output>.part-r-of-N.jsonl``; after a barrier, rank 0 merges the parts into
``<output>`` (in data-set order) and removes them. ``shard=(i, n)`` does the same split
by hand across machines without a process group; :func:`merge_shards` then merges.

Example:
    >>> loaded = load_model()  # doctest: +SKIP
    >>> items = task_items(["sva_obj_rc"], 20, loaded.tokenizer)  # doctest: +SKIP
    >>> evaluate(loaded, items, "runs/sva.jsonl",
    ...          EvaluationSettings(baselines=DEFAULT_METHODS, ablation=True))
    ...          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from .ablation import REFERENCES, NodeValues, ablation_record, node_means
from .agreement_tasks import generate
from ..routes.compare import BASELINES, compare
from ..attribution import InfluencePatterns
from ..models.loading import (
    Explanation,
    LoadedModel,
    explain,
    prepare_explanation,
)
from ..files import write_json_atomic, write_text_atomic
from ..results import Pattern

#: Word roles explained by default (``sources="roles"``): the subject, the attractor
#: and the verbs. Other positions are explained with ``sources="all"``.
ROLE_SOURCES = ("subject", "attractor", "rc_verb", "matrix_verb", "verb")


# ------------------------------------------------------------------------ data sets
@dataclass
class EvalItem:
    """One example to evaluate.

    Attributes:
        id (str): Stable identifier (resuming skips ids already written).
        index (int): Position in the run's data set (output order, sharding).
        task (str): Task name (``"custom"`` for a JSONL file without one).
        text (str): The text, with the tokenizer's mask token.
        target (str): Word (or class) of the QoI's positive side: the correct form.
        contrast (str): Word of the negative side: the wrong form.
        form (str, optional): The task's form, e.g. ``"SP"``.
        roles (dict): Word role -> token position (may be empty).
    """

    id: str
    index: int
    task: str
    text: str
    target: str
    contrast: str
    form: Optional[str] = None
    roles: Dict[str, int] = field(default_factory=dict)


def _stable_id(task: str, index: int, text: str) -> str:
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]
    return f"{task}-{index:05d}-{digest}"


def task_items(
    tasks: Sequence[str], n: int, tokenizer: Any = None, seed: int = 0
) -> List[EvalItem]:
    """``n`` generated sentences per task (:func:`~.agreement_tasks.generate`).

    Args:
        tasks (sequence of str): Task names (keys of :data:`~.agreement_tasks.TASKS`).
        n (int): Sentences per task (balanced across the four forms).
        tokenizer (Any, optional): The model's tokenizer. Default: the MiniLM's.
        seed (int, optional): Generation seed. Default: 0

    Returns:
        list of EvalItem: task after task, in generation order.
    """
    items: List[EvalItem] = []
    for task in tasks:
        for k, example in enumerate(generate(task, n, tokenizer, seed=seed)):
            items.append(
                EvalItem(
                    id=_stable_id(task, k, example.text),
                    index=len(items),
                    task=task,
                    text=example.text,
                    target=example.correct,
                    contrast=example.wrong,
                    form=example.form,
                    roles=dict(example.roles),
                )
            )
    return items


def jsonl_items(path: str | os.PathLike) -> List[EvalItem]:
    """Examples from a JSONL file: one object per line with ``text``, ``target`` and
    ``contrast``, and optionally ``id``, ``task``, ``form`` and ``roles`` (role ->
    token position, counting [CLS] as 0).

    Raises:
        ValueError: A line is not a JSON object with the required fields, or ids repeat.
    """
    items: List[EvalItem] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                text, target, contrast = data["text"], data["target"], data["contrast"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(
                    f"{path}:{number}: expected a JSON object with text, target and "
                    f"contrast ({error})"
                ) from error
            task = str(data.get("task", "custom"))
            items.append(
                EvalItem(
                    id=str(data.get("id") or _stable_id(task, len(items), text)),
                    index=len(items),
                    task=task,
                    text=text,
                    target=str(target),
                    contrast=str(contrast),
                    form=data.get("form"),
                    roles=_roles(data.get("roles")),
                )
            )
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: ids must be unique")
    return items


def _roles(roles: Any) -> Dict[str, int]:
    return {str(k): int(v) for k, v in (roles or {}).items()}


# ------------------------------------------------------------------------- settings
@dataclass
class EvaluationSettings:
    """What is computed per example (everything that changes a result line).

    Attributes:
        n_steps (int): Interpolation points.
        method (str): Captum approximation method.
        sources (str): ``"roles"`` (the positions of :data:`ROLE_SOURCES`; every
            non-special position when an example has no roles), ``"all"`` (every
            position but the output) or comma-separated role names.
        baseline (str): Baseline input: ``"mask"``, ``"pad"`` or ``"zero"``.
        baselines (tuple of str): Baseline routes to compute and score
            (:data:`~.baselines.BASELINES`); empty for none.
        ablation (bool): Ablate the subject's route and the union of routes of the
            guided patterns and every baseline (:func:`~.ablation.ablation_record`).
        references (tuple of str): Ablation reference values, ``"mean"`` and/or
            ``"zero"``.
        ablation_level (str): ``"attention"`` or ``"embedding"`` (which nodes a route
            keeps, see :mod:`.ablation`).
        internal_batch_size (int, optional): Rows per pass (memory only).
    """

    n_steps: int = 20
    method: str = "gausslegendre"
    sources: str = "roles"
    baseline: str = "mask"
    baselines: Tuple[str, ...] = ()
    ablation: bool = False
    references: Tuple[str, ...] = ("mean",)
    ablation_level: str = "attention"
    internal_batch_size: Optional[int] = None

    def __post_init__(self) -> None:
        self.baselines = tuple(self.baselines)
        self.references = tuple(self.references)
        unknown = [name for name in self.baselines if name not in BASELINES]
        if unknown:
            raise ValueError(
                f"baselines: unknown {unknown}; use {', '.join(BASELINES)}"
            )
        bad = [name for name in self.references if name not in REFERENCES]
        if bad or not self.references:
            raise ValueError(f"references: expected some of {REFERENCES}, got {bad}")

    def fingerprint(self) -> Dict[str, Any]:
        """The settings that change results (``internal_batch_size`` does not)."""
        data = asdict(self)
        data.pop("internal_batch_size")
        data["baselines"] = list(self.baselines)
        data["references"] = list(self.references)
        return data


# ------------------------------------------------------------------------ JSONL files
def read_records(path: str | os.PathLike, repair: bool = False) -> List[Dict[str, Any]]:
    """The complete JSON lines of a results file (none when it does not exist).

    A trailing line without its newline is a write that a kill interrupted: it is
    ignored, and cut off the file when ``repair`` is True (so appends start on a fresh
    line).

    Raises:
        ValueError: A complete line is not valid JSON.
    """
    if not os.path.exists(path):
        return []
    with open(path, "rb") as handle:
        data = handle.read()
    end = data.rfind(b"\n") + 1
    records = []
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON line ({error})") from error
    if repair and end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
    return records


def load_results(paths: Iterable[str | os.PathLike]) -> List[Dict[str, Any]]:
    """Records of several results files, one per id (the first seen wins)."""
    seen: Dict[str, Dict[str, Any]] = {}
    for path in paths:
        for record in read_records(path):
            seen.setdefault(record["id"], record)
    return list(seen.values())


def append_record(path: str | os.PathLike, record: Dict[str, Any]) -> None:
    """Append one JSON line and make it durable (flush + fsync)."""
    line = json.dumps(record, allow_nan=True) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def shard_path(output: str | os.PathLike, shard: int, count: int) -> str:
    """The part file of shard ``shard`` of ``count`` (a rank under torchrun)."""
    return f"{os.fspath(output)}.part-{shard}-of-{count}.jsonl"


def meta_path(output: str | os.PathLike) -> str:
    """The settings file written next to a results file."""
    return f"{os.fspath(output)}.meta.json"


def merge_shards(
    output: str | os.PathLike, count: int, remove: bool = True
) -> List[Dict[str, Any]]:
    """Merge the part files of ``count`` shards (and ``output`` itself) into ``output``.

    Records are deduplicated by id and ordered by their data-set index; the file is
    replaced atomically, then the part files are removed (``remove=True``).

    Returns:
        list of dict: the merged records.
    """
    parts = [shard_path(output, k, count) for k in range(count)]
    records = load_results([output, *parts])
    records.sort(key=lambda record: record["index"])
    write_text_atomic(
        output, "".join(json.dumps(r, allow_nan=True) + "\n" for r in records)
    )
    if remove:
        for part in parts:
            if os.path.exists(part):
                os.remove(part)
    return records


def _check_meta(output: str, meta: Dict[str, Any]) -> None:
    """Refuse to resume a run whose settings differ; record the settings otherwise."""
    path = meta_path(output)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            previous = json.load(handle)
        if previous != meta:
            raise ValueError(
                f"{output}: existing results were computed with other settings "
                f"({path}); use another output file or delete the old one"
            )
        return
    write_json_atomic(path, meta)


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
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(
                f"shard: expected i/n with 0 <= i < n, got {index}/{count}"
            )
        return _Worker(index, count)
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
) -> str:
    """Evaluate every item, appending one JSON line per example; resumable.

    Args:
        loaded (LoadedModel): The model (:func:`~.model_loading.load_model`).
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

    Returns:
        str: ``output``, or the part file of a hand-made shard.

    Under torchrun every rank must get the same items and settings; an exception on
    one rank leaves the others waiting at the next barrier until torchrun ends them.
    """
    settings = settings or EvaluationSettings()
    output = os.fspath(output)
    worker = _worker(shard)
    try:
        meta = {
            "model": loaded.name,
            "dataset": dataset or {"items": len(items)},
            "settings": settings.fingerprint(),
        }
        if worker.rank == 0:
            _check_meta(output, meta)
        worker.barrier()
        if worker.rank != 0:
            _check_meta(output, meta)
        target = (
            output if worker.world == 1
            else shard_path(output, worker.rank, worker.world)
        )
        done = {r["id"] for r in read_records(target, repair=True)}
        if target != output:
            done |= {r["id"] for r in read_records(output)}
        mine = [it for it in items if it.index % worker.world == worker.rank]
        todo = [it for it in mine if it.id not in done]
        references = _References(loaded, items, settings)
        bar = tqdm(
            todo,
            desc=f"evaluate [{worker.rank}/{worker.world}]",
            disable=not show_progress,
            position=worker.rank if worker.distributed else None,
        )
        for item in bar:
            append_record(target, evaluate_example(loaded, item, settings, references))
        worker.barrier()
        if worker.distributed and worker.rank == 0:
            merge_shards(output, worker.world)
        worker.barrier()
        return output if worker.distributed else target
    finally:
        worker.close()


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

    def for_task(self, task: str) -> Dict[str, NodeValues]:
        if task not in self._means:
            ids = [
                _tokenize(self.loaded, item.text)
                for item in self.items
                if item.task == task
            ]
            self._means[task] = node_means(self.loaded.model, ids)
        means = self._means[task]
        values = {"mean": means, "zero": means.zeros_like()}
        return {name: values[name] for name in self.settings.references}


def _tokenize(loaded: LoadedModel, text: str) -> List[int]:
    return list(loaded.tokenizer(text)["input_ids"])


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
    ``source_roles`` (position -> role), ``token_influence`` (g per position, 0 off the
    sources), ``convergence_delta``, ``patterns`` (guided, one per source), and when
    asked ``baselines`` (name -> patterns, scored by the same gated integrated
    gradient), ``baseline_route_scores`` (name -> each route's own score, e.g. its
    product of attention weights) and ``ablation``.
    """
    explanation = prepare_explanation(
        loaded, item.text, item.target, item.contrast, baseline=settings.baseline
    )
    sources, source_roles = _sources(item, explanation, loaded, settings.sources)
    common = dict(
        n_steps=settings.n_steps,
        method=settings.method,
        internal_batch_size=settings.internal_batch_size,
    )
    result = explain(loaded, explanation, sources=sources, **common)
    qoi = explanation.qoi_value()
    patterns: Dict[str, List[Pattern]] = {"guided": list(result.patterns[0])}
    record: Dict[str, Any] = {
        "id": item.id,
        "index": item.index,
        "task": item.task,
        "form": item.form,
        "text": item.text,
        "tokens": explanation.tokens,
        "input_ids": explanation.input_ids[0].tolist(),
        "roles": dict(item.roles),
        "output_position": explanation.output_position,
        "correct": item.target,
        "wrong": item.contrast,
        "qoi": qoi,
        "prediction_correct": qoi > 0,
        "sources": sources,
        "source_roles": {str(pos): role for pos, role in source_roles.items()},
        "token_influence": result.token_influence[0].tolist(),
        "convergence_delta": float(result.convergence_delta[0]),
        "patterns": [p.to_dict() for p in patterns["guided"]],
    }
    if settings.baselines:
        comparison = compare(
            InfluencePatterns(explanation.forward_func, loaded.model),
            explanation.input_ids,
            explanation.baselines,
            None,
            explanation.additional_forward_args,
            output_position=explanation.output_position,
            sources=sources,
            methods=settings.baselines,
            guided=result,
            **common,
        )
        for name in settings.baselines:
            patterns[name] = list(comparison.patterns[0][name])
        record["baselines"] = {
            name: [p.to_dict() for p in patterns[name]] for name in settings.baselines
        }
        record["baseline_route_scores"] = {
            name: [row[name]["score"] for row in comparison.records]
            for name in settings.baselines
        }
    if settings.ablation:
        references = references or _References(loaded, [item], settings)
        record["ablation"] = ablation_record(
            loaded.model,
            explanation.forward_func,
            explanation.input_ids,
            explanation.additional_forward_args,
            patterns,
            references.for_task(item.task),
            subject=item.roles.get("subject"),
            level=settings.ablation_level,
        )
    return record


def _sources(
    item: EvalItem, explanation: Explanation, loaded: LoadedModel, option: str
) -> Tuple[List[int], Dict[int, str]]:
    """Source positions of an example and the word role of each (when it has one)."""
    output = explanation.output_position
    length = explanation.input_ids.shape[1]
    by_position = {pos: role for role, pos in item.roles.items()}
    if option == "all":
        positions = [j for j in range(length) if j != output]
    elif option == "roles":
        positions = sorted(
            item.roles[r] for r in ROLE_SOURCES if r in item.roles
        )
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
            raise ValueError(f"{item.id}: no role {missing} (roles: {item.roles})")
        positions = sorted({item.roles[name] for name in wanted})
    positions = [j for j in positions if j != output]
    return positions, {j: by_position[j] for j in positions if j in by_position}
