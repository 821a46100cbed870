"""Evaluation records on disk: one JSON object per line, read and written here only.

A record is what :func:`~.example.evaluate_example` returns for one example (or a
``{"id", ..., "skipped": reason}`` line for an item that did not fit the model). Lines
are appended one at a time and made durable (flush + fsync), so a killed run loses at
most the line it was writing: :func:`read_records` ignores that partial last line (and
cuts it off with ``repair=True``).

Every record written from 0.4.0 on carries ``"schema"``: :data:`SCHEMA_VERSION`. A
record without it was written before (version 1) and reads the same way:
:func:`schema_version` tells them apart, and nothing in a version 1 record needs
converting.

The summary of a report (``summary.json``) is read and written here too
(:func:`read_summary`, :func:`write_summary`), typed at its top level
(:class:`Summary`), and carries the same ``"schema"`` from 0.4.0 on.
"""

from __future__ import annotations

import json
import os
import textwrap
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from ..utils.files import write_json_atomic
from .datasets import EvaluationError

#: The version of the records (and summaries) this package writes.
SCHEMA_VERSION = 2
#: The version of records and summaries written without a ``"schema"`` key.
UNVERSIONED = 1


def schema_version(data: Dict[str, Any]) -> int:
    """The schema version of a record or summary (:data:`UNVERSIONED` without one).

    Raises:
        EvaluationError: The version is newer than this package's
            (:data:`SCHEMA_VERSION`): upgrade the package to read it.
    """
    version = data.get("schema", UNVERSIONED)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise EvaluationError(f"schema: expected a version >= 1, got {version!r}")
    if version > SCHEMA_VERSION:
        raise EvaluationError(
            f"schema: version {version} is newer than this package reads "
            f"({SCHEMA_VERSION}); upgrade captum-influence-patterns"
        )
    return version


def read_records(path: str | os.PathLike, repair: bool = False) -> List[Dict[str, Any]]:
    """The complete JSON lines of a results file (none when it does not exist).

    A trailing line without its newline is a write that a kill interrupted: it is
    ignored, and cut off the file when ``repair`` is True (so appends start on a fresh
    line). Skipped items (``"skipped"`` lines) are included.

    Raises:
        EvaluationError: ``path`` is a directory or unreadable, or a complete line is
            not a JSON object with an ``id`` (bad JSON, bad UTF-8, another value) or
            has a schema version this package cannot read.
    """
    if not os.path.exists(path):
        return []
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise EvaluationError(f"results {os.fspath(path)!r}: cannot read it ({error})")
    end = data.rfind(b"\n") + 1
    records = []
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:  # bad JSON or bad UTF-8
            raise EvaluationError(
                f"{os.fspath(path)}:{number}: not a JSON line ({error}); delete "
                "the line or the file"
            ) from error
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            shown = textwrap.shorten(line.decode("utf-8", "replace"), 40)
            raise EvaluationError(
                f"{os.fspath(path)}:{number}: not a results record (expected a JSON "
                f"object with an id, got {shown}); delete the line or the file"
            )
        try:
            schema_version(record)
        except EvaluationError as error:
            raise EvaluationError(f"{os.fspath(path)}:{number}: {error}") from None
        records.append(record)
    if repair and end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
    return records


def load_results(
    paths: Iterable[str | os.PathLike], include_skipped: bool = False
) -> List[Dict[str, Any]]:
    """Records of several results files, one per id (the first seen wins).

    Lines of skipped items (``skip_invalid``) are left out unless
    ``include_skipped``.
    """
    seen: Dict[str, Dict[str, Any]] = {}
    for path in paths:
        for record in read_records(path):
            seen.setdefault(record["id"], record)
    return [r for r in seen.values() if include_skipped or "skipped" not in r]


def _line(record: Dict[str, Any]) -> str:
    return json.dumps(record, allow_nan=True) + "\n"


def records_text(records: Sequence[Dict[str, Any]]) -> str:
    """The JSON lines of ``records`` as read (what a merge writes in one go): each
    keeps its own version."""
    return "".join(_line(record) for record in records)


def append_record(path: str | os.PathLike, record: Dict[str, Any]) -> None:
    """Append one JSON line, stamped with :data:`SCHEMA_VERSION`, and make it durable
    (flush + fsync)."""
    line = _line({"schema": SCHEMA_VERSION, **record})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


# ------------------------------------------------------------- typed summary entries
def _number(value: Any) -> Optional[float]:
    """A summary's number: None for a missing or non-finite one (JSON has no nan)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


@dataclass(frozen=True)
class PermutationTest:
    """The one-sided permutation test of a positive correlation
    (:func:`~.stats.permutation_test`); ``None`` where undefined or not recorded
    (summaries of version 1 written before the test hold none)."""

    pearson_p: Optional[float] = None
    spearman_p: Optional[float] = None
    n_permutations: Optional[int] = None

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> "PermutationTest":
        """Read a summary's ``permutation`` entry (None or missing keys allowed)."""
        data = data or {}
        pairings = data.get("n_permutations")
        return cls(
            pearson_p=_number(data.get("pearson_p")),
            spearman_p=_number(data.get("spearman_p")),
            n_permutations=int(pairings) if isinstance(pairings, int) else None,
        )


@dataclass(frozen=True)
class GroupPoint:
    """One group of the consistency/accuracy correlation: its key values (e.g. task
    and form), sentences, accuracy and consistency."""

    group: List[Any]
    n: int
    accuracy: Optional[float]
    consistency: Optional[float]


@dataclass(frozen=True)
class GroupCorrelation:
    """Consistency against accuracy across groups of sentences
    (:func:`~.consistency.consistency_accuracy`), as a summary holds it under
    ``correlation``: ``task_form`` or ``task``."""

    n: int
    pearson: Optional[float]
    spearman: Optional[float]
    points: List[GroupPoint] = field(default_factory=list)
    permutation: PermutationTest = field(default_factory=PermutationTest)
    accuracy_min: Optional[float] = None
    accuracy_max: Optional[float] = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GroupCorrelation":
        """Read one entry of a summary's ``correlation`` (any schema version)."""
        return cls(
            n=int(data["n"]),
            pearson=_number(data.get("pearson")),
            spearman=_number(data.get("spearman")),
            points=[
                GroupPoint(
                    group=list(p["group"]),
                    n=int(p["n"]),
                    accuracy=_number(p.get("accuracy")),
                    consistency=_number(p.get("consistency")),
                )
                for p in data.get("points") or []
            ],
            permutation=PermutationTest.from_dict(data.get("permutation")),
            accuracy_min=_number(data.get("accuracy_min")),
            accuracy_max=_number(data.get("accuracy_max")),
        )

    @property
    def smallest_group(self) -> int:
        """Sentences in the smallest group (0 without groups)."""
        return min((p.n for p in self.points), default=0)


def correlations(summary: "Summary") -> Dict[str, GroupCorrelation]:
    """A summary's consistency/accuracy correlations, typed: grouping -> entry."""
    return {
        name: GroupCorrelation.from_dict(entry)
        for name, entry in summary.correlation.items()
    }


# ------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class Summary:
    """The summary of a report (``summary.json`` of the ``report`` command), typed at
    its top level; each section is the JSON-safe dict the function named documents.
    A section a summary lacks (an older or a hand-made one) reads as empty (None for
    the optional ones, which are left out when written).

    Attributes:
        n_per_task (dict): ``min`` and ``max`` sentences per task.
        tasks (dict): Task -> its metrics (:func:`~.summary.task_metrics`).
        overall (dict): The metrics of all records (:func:`~.summary.task_metrics`).
        correlation (dict): ``task_form`` and ``task`` -> the consistency/accuracy
            correlation (:func:`~.consistency.consistency_accuracy`; typed by
            :func:`correlations`).
        intervals (dict): The bootstrap intervals of the claims
            (:func:`~.summary.intervals`).
        ablation_test (dict): Claim 3's paired test and looks
            (:func:`~.summary.ablation_test`; empty without ablation).
        skip_null (dict): Claim 1 against random routes (:func:`~.metrics.skip_null`).
        optimum_sweep (dict): :func:`~.optimality_metrics.optimum_sweep`.
        identical_routes (dict): :func:`~.metrics.identical_routes`.
        subjects (dict): :func:`~.metrics.subject_split`.
        runs (list of dict): The runs' settings files (without their item hashes).
        convergence (dict or None): The path integral's convergence
            (:func:`~captum_influence_patterns.convergence.records_convergence`),
            where the records hold the check.
        model_accuracy (dict or None): A language model's accuracy on its prefixes
            (:func:`~.lm_prefixes.model_accuracy`).
        claims (list of dict): The verdict on each claim (:func:`~.verdicts.claims`).
        criteria (dict): The thresholds the verdicts apply.
        faithfulness (dict or None): The token-faithfulness measures
            (:func:`~.faithfulness_report.records_faithfulness`), where the records
            hold them.
        schema (int): Its schema version: :data:`SCHEMA_VERSION`, or
            :data:`UNVERSIONED` for a file written before 0.4.0.
    """

    n_per_task: Dict[str, int] = field(default_factory=dict)
    tasks: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    overall: Dict[str, Any] = field(default_factory=dict)
    correlation: Dict[str, Any] = field(default_factory=dict)
    intervals: Dict[str, Any] = field(default_factory=dict)
    ablation_test: Dict[str, Any] = field(default_factory=dict)
    skip_null: Dict[str, Any] = field(default_factory=dict)
    optimum_sweep: Dict[str, Any] = field(default_factory=dict)
    identical_routes: Dict[str, Any] = field(default_factory=dict)
    subjects: Dict[str, Any] = field(default_factory=dict)
    runs: List[Dict[str, Any]] = field(default_factory=list)
    convergence: Optional[Dict[str, Any]] = None
    model_accuracy: Optional[Dict[str, Any]] = None
    claims: List[Dict[str, Any]] = field(default_factory=list)
    criteria: Dict[str, Any] = field(default_factory=dict)
    faithfulness: Optional[Dict[str, Any]] = None
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object of ``summary.json``: ``schema`` first (none for a version
        1 summary, as read), then the sections in field order, None ones left
        out."""
        version = {} if self.schema == UNVERSIONED else {"schema": self.schema}
        sections = ((name, getattr(self, name)) for name in _SECTIONS)
        return {**version, **{k: v for k, v in sections if v is not None}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Summary":
        """Read a summary of any version (a missing section reads as empty).

        Raises:
            EvaluationError: a key that is no section of a summary, or a schema
                version this package cannot read.
        """
        unknown = sorted(set(data) - set(_SECTIONS) - {"schema"})
        if unknown:
            raise EvaluationError(
                f"summary: unknown section {', '.join(map(repr, unknown))}; expected "
                f"some of {', '.join(_SECTIONS)}"
            )
        return cls(
            **{name: data[name] for name in _SECTIONS if name in data},
            schema=schema_version(dict(data)),
        )


#: A summary's sections, in the order written.
_SECTIONS = tuple(name for name in Summary.__dataclass_fields__ if name != "schema")


def read_summary(path: str | os.PathLike) -> Summary:
    """The summary a report wrote (:func:`write_summary`), of any version.

    Raises:
        EvaluationError: ``path`` cannot be read, is not a JSON object, has an unknown
            section or a schema version this package cannot read.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:  # unreadable, bad JSON or bad UTF-8
        raise EvaluationError(
            f"summary {os.fspath(path)!r}: cannot read it ({error})"
        ) from error
    if not isinstance(data, dict):
        raise EvaluationError(
            f"summary {os.fspath(path)!r}: expected a JSON object of sections"
        )
    try:
        return Summary.from_dict(data)
    except EvaluationError as error:
        raise EvaluationError(f"{os.fspath(path)}: {error}") from None


def write_summary(path: str | os.PathLike, summary: Summary) -> None:
    """Write ``summary`` as ``summary.json`` (atomically; its folder is made)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json_atomic(path, summary.to_dict())
