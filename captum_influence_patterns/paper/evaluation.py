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
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from ..utils.files import write_json_atomic
from ..models.loading import LoadedModel
from .datasets import EvalItem, EvaluationError, describe_problems
from .example import AblationReferences, evaluate_example, invalid_items, item_fields
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
from .settings import EvaluationSettings


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
    references = AblationReferences(loaded, [it for it in items if it.id not in invalid],
                             settings)
    bar = tqdm(
        todo,
        desc=f"evaluate [{worker.rank}/{worker.world}]",
        disable=not show_progress,
        position=worker.rank if worker.distributed else None,
    )
    for item in bar:
        if item.id in invalid:
            record = {**item_fields(item), "skipped": invalid[item.id]}
        else:
            record = evaluate_example(loaded, item, settings, references)
        append_record(target, record)


if __name__ == "__main__":  # a module of the library, not a command
    raise SystemExit(
        "captum_influence_patterns.paper.evaluation is not a command; run "
        "`python -m captum_influence_patterns evaluate ...` (also under torchrun)"
    )
