"""The files beside an evaluation's results: settings (``<output>.meta.json``), locks,
shards' part files and their merge.

The meta file records the run's settings and a hash of every input item, so a resumed
run with other settings or a changed input is refused (:func:`check_meta`). One process
at a time writes a results file (:func:`exclusive_writer`). Shards write part files
(:func:`shard_path`) that :func:`merge_shards` merges only when every part is there and
complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, Dict, Iterator, List, Optional, Sequence

from ..utils.files import folder_problem, write_json_atomic, write_text_atomic
from .datasets import EvalItem, EvaluationError
from .records import load_results, read_records, records_text


#: Changed input items named in the error of a refused resume.
_SHOWN_IDS = 5


def shard_path(output: str | os.PathLike, shard: int, count: int) -> str:
    """The part file of shard ``shard`` of ``count`` (a rank under torchrun)."""
    return f"{os.fspath(output)}.part-{shard}-of-{count}.jsonl"


def meta_path(output: str | os.PathLike) -> str:
    """The settings file written next to a results file."""
    return f"{os.fspath(output)}.meta.json"


def lock_path(path: str | os.PathLike) -> str:
    """The lock file of a results (or part) file."""
    return f"{os.fspath(path)}.lock"


@contextmanager
def exclusive_writer(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on :func:`lock_path` of ``path``.

    The holder removes the lock file when it is done, still holding the lock; a
    process that locked a file already removed that way (it opened it before the
    removal) sees that the path no longer names its file and refuses, so two writers
    never hold locks at once, and no lock file is left behind.

    Raises:
        EvaluationError: Another process holds the lock, or the lock file cannot be
            created (the folder is not writable).
    """
    import fcntl  # POSIX only; imported here so that the module imports anywhere

    lock = lock_path(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(lock)), exist_ok=True)
        handle = open(lock, "a")
    except OSError as error:
        raise EvaluationError(
            f"output {os.fspath(path)!r} is not writable: cannot create {lock} "
            f"({error.strerror or type(error).__name__})"
        ) from error
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not _names_open_file(lock, handle):
                raise BlockingIOError  # the previous holder removed it meanwhile
        except BlockingIOError as error:
            raise EvaluationError(
                f"{os.fspath(path)} is being written by another evaluate process "
                f"(it holds {lock}); wait for it to finish or choose another --output"
            ) from error
        try:
            yield
        finally:
            os.remove(lock)


def _names_open_file(path: str, handle: Any) -> bool:
    """Whether ``path`` still names the file open as ``handle``."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def merge_shards(
    output: str | os.PathLike, count: int, remove: bool = False
) -> List[Dict[str, Any]]:
    """Merge the part files of ``count`` shards (and ``output`` itself) into ``output``.

    Nothing is merged unless every part is there and complete: each shard's
    evaluate writes, next to its part, ``<part>.meta.json`` with the run's settings
    and the ids of the items the shard owns; every part must have it, all must hold
    the same settings (and those of ``<output>.meta.json`` where it exists), and
    every owned id must have a record (in the part or, for a shard resumed after an
    earlier merge, in ``output``). Records are deduplicated by id and ordered by
    their data-set index; the file is replaced atomically and synced to disk (under
    :func:`exclusive_writer`), and only then, with ``remove=True``, are the parts and
    their settings files removed.

    Returns:
        list of dict: the merged records, skipped items included.

    Raises:
        EvaluationError: a bad count; a part missing, without its settings file,
            from other settings, or incomplete (nothing is written or removed).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise EvaluationError(f"merge: expected a shard count >= 1, got {count!r}")
    check_output_path(os.fspath(output))
    parts = [shard_path(output, k, count) for k in range(count)]
    with exclusive_writer(output):
        _check_parts(os.fspath(output), parts)
        records = load_results([output, *parts], include_skipped=True)
        records.sort(key=lambda record: record["index"])
        write_text_atomic(output, records_text(records))
        _sync_folder(output)
        if remove:
            for part in parts:
                for path in (part, meta_path(part)):
                    if os.path.exists(path):
                        os.remove(path)
    return records


def _check_parts(output: str, parts: Sequence[str]) -> None:
    """Refuse (one line, before anything is written) unless every part exists, has
    its settings file, shares the settings, and holds a record for each of its
    items."""
    count = len(parts)
    fix = "nothing was merged or deleted"
    metas = []
    for k, part in enumerate(parts):
        if not os.path.exists(part):
            raise EvaluationError(
                f"merge: part {part} is missing (run evaluate --shard {k}/{count} "
                f"with the same settings, or copy its file here); {fix}"
            )
        metas.append(_read_meta(meta_path(part), f"evaluate --shard {k}/{count}"))
    shared = {key: value for key, value in metas[0].items() if key not in _PART_KEYS}
    if os.path.exists(meta_path(output)):
        reference, where = _read_meta(meta_path(output), "evaluate"), meta_path(output)
    else:
        reference, where = shared, meta_path(parts[0])
    for part, meta in zip(parts, metas):
        if {key: v for key, v in meta.items() if key not in _PART_KEYS} != reference:
            raise EvaluationError(
                f"merge: {part} was computed with other settings or inputs than "
                f"{where}; evaluate every shard with the same settings; {fix}"
            )
    merged = {r["id"] for r in read_records(output)}
    for k, (part, meta) in enumerate(zip(parts, metas)):
        have = {r["id"] for r in read_records(part)} | merged
        owned = meta.get("ids", [])
        missing = [i for i in owned if i not in have]
        if missing:
            raise EvaluationError(
                f"merge: {part} is incomplete ({len(owned) - len(missing)} of "
                f"{len(owned)} records; resume it with evaluate --shard "
                f"{k}/{count} and the same settings); {fix}"
            )


#: The keys of a part's settings file beyond the run's own (its shard and items).
_PART_KEYS = ("shard", "ids")


def _read_meta(path: str, writer: str) -> Dict[str, Any]:
    if not os.path.exists(path):
        raise EvaluationError(
            f"merge: {path} is missing (written by {writer}), so the part cannot be "
            "checked for completeness; nothing was merged or deleted"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, ValueError) as error:
        raise EvaluationError(f"merge: cannot read {path} ({error})") from error
    if not isinstance(meta, dict):
        raise EvaluationError(f"merge: {path} is not a settings file")
    return meta


def _sync_folder(path: str | os.PathLike) -> None:
    """Make a rename in ``path``'s folder durable (POSIX; a no-op elsewhere)."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output_path(output: str | os.PathLike) -> None:
    """Check that a results file can be written at ``output``.

    Raises:
        EvaluationError: ``output`` is a directory, or its folder cannot be created
            or written (a missing folder is created when the run starts).
    """
    output = os.fspath(output)
    if os.path.isdir(output):
        raise EvaluationError(
            f"output {output!r} is a directory; give a results file, e.g. "
            f"{os.path.join(output, 'results.jsonl')}"
        )
    problem = folder_problem(os.path.dirname(os.path.abspath(output)))
    if problem:
        raise EvaluationError(f"output {output!r} cannot be written: {problem}")


def item_hashes(items: Sequence[EvalItem]) -> Dict[str, str]:
    """id -> a hash of everything that defines the item (text, target, contrast,
    task, form, roles, index): the meta file keeps them, so a resumed run whose input
    changed is refused instead of mixing old and new records."""
    return {
        item.id: hashlib.sha256(
            json.dumps(asdict(item), sort_keys=True).encode("utf-8")
        ).hexdigest()[:16]
        for item in items
    }


def _changed_items(previous: Any, meta: Dict[str, Any]) -> str:
    """What differs between the items of the meta file and ``meta`` (the first few
    ids), or "" when nothing does."""
    old = previous.get("items") if isinstance(previous, dict) else None
    if not isinstance(old, dict):
        return "the meta file holds no hash of the items, so they cannot be compared"
    new = meta["items"]
    ids = [key for key in new if old.get(key) != new[key]]
    ids += [key for key in old if key not in new]
    if not ids:
        return ""
    more = f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else ""
    return f"items {', '.join(ids[:_SHOWN_IDS])}{more} changed, were added or removed"


def relative_input(
    dataset: Optional[Dict[str, Any]], output: str
) -> Optional[Dict[str, Any]]:
    """``dataset`` with its ``input`` path relative to the output's folder: a meta
    file names no folder of the machine that ran it (its item hashes guard the
    content)."""
    if not dataset or not isinstance(dataset.get("input"), str):
        return dataset
    folder = os.path.dirname(os.path.abspath(output))
    try:
        relative = os.path.relpath(os.path.abspath(dataset["input"]), folder)
    except ValueError:  # another drive
        relative = os.path.basename(dataset["input"])
    return {**dataset, "input": relative.replace(os.sep, "/")}


def _without_input(meta: Any) -> Any:
    """A meta file's content without the input's path, which may differ between
    machines while the items (hashed) are the same."""
    if not isinstance(meta, dict) or not isinstance(meta.get("dataset"), dict):
        return meta
    dataset = {k: v for k, v in meta["dataset"].items() if k != "input"}
    return {**meta, "dataset": dataset}


def check_meta(output: str, meta: Dict[str, Any], results: Sequence[str]) -> None:
    """Refuse to resume a run whose settings differ, or results without their meta
    file; record the settings of a fresh run."""
    path = meta_path(output)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as handle:
                previous = json.load(handle)
        except (OSError, ValueError) as error:
            raise EvaluationError(
                f"{path}: cannot read the settings of the existing results ({error}); "
                "use another output file or delete the old one"
            ) from error
        changed = _changed_items(previous, meta)
        if changed:
            raise EvaluationError(
                f"{output}: the input differs from the one these results were "
                f"computed from ({changed}; {path} keeps a hash of every item); "
                "use another output file or delete the old results"
            )
        if _without_input(previous) != _without_input(meta):
            raise EvaluationError(
                f"{output}: existing results were computed with other settings "
                f"({path}); use another output file or delete the old one"
            )
        return
    if any(read_records(result) for result in results):
        raise EvaluationError(
            f"{output}: results exist without their settings file {path}, so they "
            "cannot be resumed safely; use another output file or delete them"
        )
    write_json_atomic(path, meta)
