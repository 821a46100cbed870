"""Data sets of an evaluation run: generated agreement tasks and data files.

Every reader returns :class:`EvalItem` objects, the unit :func:`~.evaluation.evaluate`
explains:

- :func:`task_items`: sentences of the agreement tasks (:mod:`.agreement_tasks`);
- :func:`jsonl_items`: a JSONL file of ``{"text", "target", "contrast"}`` objects;
- :func:`glue_items`: a GLUE-style TSV of labelled sentences (a header with
  ``sentence`` and ``label``), explained with the classifier QoI
  ``logit(label) - logit(other label)`` at [CLS] (the paper's SST-2 experiment);
- :func:`marvin_linzen_items`: Marvin & Linzen's pairs (columns type, form, good
  sentence, bad sentence; the layout of the authors' data), explained with the masked
  LM QoI ``logit(good word) - logit(bad word)`` at the one word where the pair differs.

:func:`read_items` picks a file reader by format (:data:`FORMATS`) and describes the
data set for the run's meta file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .agreement_tasks import TASKS, generate

#: File formats of :func:`read_items`.
FORMATS = ("jsonl", "glue", "marvin-linzen")
#: Task name of the items of a GLUE-style file (unless given).
GLUE_TASK = "glue"
#: The two binary labels assumed when a GLUE-style file's labels are all 0 or 1.
BINARY_LABELS = ("0", "1")


#: Encoding of every data file: UTF-8, with or without a byte-order mark (editors on
#: Windows write one; it is not part of the first cell).
ENCODING = "utf-8-sig"
#: Bad items named in one error message before "... and N more".
_SHOWN_PROBLEMS = 5


class EvaluationError(ValueError):
    """A setting, an input item, a results file or its lock does not allow the run;
    the one-line message names it (the command line exits with code 2)."""


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


def stable_id(task: str, index: int, text: str) -> str:
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

    Raises:
        EvaluationError: An unknown task, or ``n < 1``.
    """
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise EvaluationError(
            f"tasks: unknown {unknown or 'none given'}; use some of "
            f"{', '.join(TASKS)} (or 'all')"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise EvaluationError(f"n: expected an int >= 1 per task, got {n!r}")
    items: List[EvalItem] = []
    for task in tasks:
        for k, example in enumerate(generate(task, n, tokenizer, seed=seed)):
            items.append(
                EvalItem(
                    id=stable_id(task, k, example.text),
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
        EvaluationError: The file cannot be read or holds no example; some lines are
            not JSON objects with the required fields (all of them are listed); or
            ids repeat.
    """
    try:
        with open(path, encoding=ENCODING) as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise EvaluationError(f"input {os.fspath(path)!r}: cannot read it ({error})")
    items: List[EvalItem] = []
    problems: Dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                items.append(_jsonl_item(json.loads(line), len(items)))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                problems[f"line {number}"] = (
                    f"expected a JSON object with text, target and contrast "
                    f"({type(error).__name__}: {error})"
                )
    if problems:
        message = describe_problems(problems)
        if any("\t" in line for line in lines[:1]):
            message += (
                "; the file is tab-separated: pass format='glue' (--format glue) "
                "or format='marvin-linzen'"
            )
        raise EvaluationError(f"input {os.fspath(path)}: {message}")
    if not items:
        raise EvaluationError(f"input {os.fspath(path)}: no examples")
    ids = [item.id for item in items]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise EvaluationError(f"input {os.fspath(path)}: ids repeat: {repeated[:5]}")
    return items


def _jsonl_item(data: Any, index: int) -> EvalItem:
    """One line's example; KeyError/TypeError/ValueError on a malformed object."""
    if not isinstance(data, dict):
        raise TypeError(f"got {type(data).__name__}")
    text, target, contrast = data["text"], data["target"], data["contrast"]
    if not isinstance(text, str):
        raise TypeError("text must be a string")
    task = str(data.get("task", "custom"))
    return EvalItem(
        id=str(data.get("id") or stable_id(task, index, text)),
        index=index,
        task=task,
        text=text,
        target=str(target),
        contrast=str(contrast),
        form=data.get("form"),
        roles=_roles(data.get("roles")),
    )


def describe_problems(problems: Dict[str, str]) -> str:
    """One line naming every bad item (the first few with their reasons)."""
    shown = [f"{key}: {' '.join(reason.split())}" for key, reason in problems.items()]
    text = "; ".join(shown[:_SHOWN_PROBLEMS])
    more = len(shown) - _SHOWN_PROBLEMS
    names = ", ".join(problems)
    tail = f"; ... and {more} more (all: {names})" if more > 0 else ""
    return f"{len(problems)} invalid item(s): {text}{tail}"


def _roles(roles: Any) -> Dict[str, int]:
    if roles is not None and not isinstance(roles, dict):
        raise TypeError("roles must be an object of role -> position")
    return {str(k): int(v) for k, v in (roles or {}).items()}


# ------------------------------------------------------------------------ TSV files
def _tsv_rows(path: str | os.PathLike) -> List[Tuple[int, List[str]]]:
    """Non-empty rows of a tab-separated file with their line numbers.

    Quotes are ordinary characters (GLUE's sentences hold unbalanced quotes).
    """
    try:
        with open(path, encoding=ENCODING, newline="") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            return [
                (number, [cell.strip() for cell in row])
                for number, row in enumerate(reader, start=1)
                if any(cell.strip() for cell in row)
            ]
    except (OSError, UnicodeDecodeError) as error:
        raise EvaluationError(f"input {os.fspath(path)!r}: cannot read it ({error})")


def _glue_labels(
    path: str | os.PathLike, found: Sequence[str], labels: Optional[Sequence[str]]
) -> Tuple[str, str]:
    """The two classes of the QoI: given, 0/1, or the file's two labels."""
    distinct = sorted(set(found))
    if labels is None:
        labels = BINARY_LABELS if set(distinct) <= set(BINARY_LABELS) else distinct
    labels = tuple(str(label) for label in labels)
    if len(labels) != 2 or labels[0] == labels[1]:
        raise EvaluationError(
            f"{path}: the QoI logit(label) - logit(other label) needs exactly two "
            f"labels, got {list(labels)}; pass labels=(A, B) for a file with one "
            "label or a two-class subset"
        )
    unknown = sorted(set(distinct) - set(labels))
    if unknown:
        raise EvaluationError(f"{path}: labels {unknown} are not among {list(labels)}")
    return labels[0], labels[1]


def glue_items(
    path: str | os.PathLike,
    labels: Optional[Sequence[str]] = None,
    task: str = GLUE_TASK,
) -> List[EvalItem]:
    """Labelled sentences from a GLUE-style TSV (SST-2's ``dev.tsv`` for instance).

    The first row is a header naming a ``sentence`` and a ``label`` column (other
    columns are ignored). Each sentence becomes an item with ``target`` = its label
    and ``contrast`` = the other label, for the classifier QoI ``logit(target) -
    logit(contrast)`` at [CLS]; labels are class indices or the model's label names.
    ``form`` is the gold label, so reports break results down per class.

    Args:
        path (str or PathLike): The TSV file.
        labels (sequence of str, optional): The two classes. Default: ``("0", "1")``
            when every label is 0 or 1, else the file's two distinct labels.
        task (str, optional): Task name of the items. Default: ``"glue"``

    Returns:
        list of EvalItem: in file order, with no roles.

    Raises:
        ValueError: no header with ``sentence`` and ``label``, an empty sentence or
            label, not exactly two labels, or an empty file.
    """
    rows = _tsv_rows(path)
    if not rows:
        raise EvaluationError(
            f"{path}: empty file; expected a header with sentence, label"
        )
    header = [cell.lower() for cell in rows[0][1]]
    if "sentence" not in header or "label" not in header:
        raise EvaluationError(
            f"{path}: a GLUE-style TSV needs a header with 'sentence' and 'label' "
            f"columns, found {rows[0][1]}"
        )
    text_at, label_at = header.index("sentence"), header.index("label")
    pairs = []
    for number, row in rows[1:]:
        cells = row + [""] * (len(header) - len(row))
        if not cells[text_at] or not cells[label_at]:
            raise EvaluationError(f"{path}:{number}: empty sentence or label")
        pairs.append((cells[text_at], cells[label_at]))
    if not pairs:
        raise EvaluationError(f"{path}: no sentences after the header")
    first, second = _glue_labels(path, [label for _, label in pairs], labels)
    other = {first: second, second: first}
    return [
        EvalItem(
            id=stable_id(task, k, text),
            index=k,
            task=task,
            text=text,
            target=label,
            contrast=other[label],
            form=label,
        )
        for k, (text, label) in enumerate(pairs)
    ]


#: Words of a header row in a Marvin & Linzen file (two of them mark a header).
MARVIN_LINZEN_HEADER = {
    "type",
    "case",
    "form",
    "good",
    "bad",
    "good sentence",
    "bad sentence",
}


def _single_token(tokenizer: Any, word: str) -> bool:
    return len(tokenizer.tokenize(word)) == 1


def read_marvin_linzen(
    path: str | os.PathLike, mask_token: str = "[MASK]", tokenizer: Any = None
) -> Tuple[List[EvalItem], int]:
    """:func:`marvin_linzen_items` and the number of pairs it skipped."""
    rows = _tsv_rows(path)
    if rows and len(set(c.lower() for c in rows[0][1]) & MARVIN_LINZEN_HEADER) >= 2:
        rows = rows[1:]
    items: List[EvalItem] = []
    skipped = 0
    for number, row in rows:
        if len(row) < 4:
            raise EvaluationError(
                f"{path}:{number}: expected 4 tab-separated columns (type, form, good "
                f"sentence, bad sentence), got {len(row)}"
            )
        task, form, good, bad = row[:4]
        words = _differing_word(good.split(), bad.split())
        if words is None or (
            tokenizer is not None
            and not all(_single_token(tokenizer, w) for w in words[1:])
        ):
            skipped += 1
            continue
        at, target, contrast = words
        masked = good.split()
        masked[at] = mask_token
        text = " ".join(masked)
        items.append(
            EvalItem(
                id=stable_id(task, len(items), text),
                index=len(items),
                task=task,
                text=text,
                target=target,
                contrast=contrast,
                form=form,
            )
        )
    if not items:
        raise EvaluationError(
            f"{path}: no pair of sentences that differ in exactly one word"
            + (" (one word piece each)" if tokenizer is not None else "")
        )
    return items, skipped


def _differing_word(good: List[str], bad: List[str]) -> Optional[Tuple[int, str, str]]:
    """``(index, good word, bad word)`` when the sentences differ in one word only."""
    if len(good) != len(bad):
        return None
    differ = [k for k, (g, b) in enumerate(zip(good, bad)) if g != b]
    if len(differ) != 1:
        return None
    return differ[0], good[differ[0]], bad[differ[0]]


def marvin_linzen_items(
    path: str | os.PathLike, mask_token: str = "[MASK]", tokenizer: Any = None
) -> List[EvalItem]:
    """Minimal pairs in Marvin & Linzen's layout, as masked-LM items.

    Each row holds four tab-separated columns: type (the task, e.g.
    ``obj_rel_across_anim``), form (e.g. ``sing_MS_MV``), the good sentence and the bad
    sentence (a header row naming them is skipped). Pairs whose sentences differ in
    exactly one whitespace-separated word are kept: that word is replaced by
    ``mask_token``, ``target`` is the good word and ``contrast`` the bad one. Other
    pairs (several differing words, different lengths; and, with a tokenizer, words of
    several word pieces) are skipped.

    Args:
        path (str or PathLike): The TSV file.
        mask_token (str, optional): The model's mask token
            (``tokenizer.mask_token``). Default: ``"[MASK]"``
        tokenizer (Any, optional): When given, pairs whose good or bad word is not
            one word piece are skipped too (the QoI reads one logit per word).
            Default: None

    Returns:
        list of EvalItem: in file order, task = type, form = form, no roles.

    Raises:
        ValueError: a row with fewer than 4 columns, or no pair kept.
    """
    return read_marvin_linzen(path, mask_token, tokenizer)[0]


# ------------------------------------------------------------------- tasks in words
#: The task types of Marvin & Linzen's data, in words.
MARVIN_LINZEN_TITLES = {
    "simple_agrmt": "Simple subject-verb agreement",
    "sent_comp": "Subject-verb agreement in a sentential complement",
    "short_vp_coord": "Agreement in short verb-phrase coordination",
    "long_vp_coord": "Agreement in long verb-phrase coordination",
    "prep_anim": "Agreement across a prepositional phrase (animate)",
    "prep_inanim": "Agreement across a prepositional phrase (inanimate)",
    "subj_rel": "Agreement across a subject relative clause",
    "obj_rel_across_anim": "Agreement across an object relative clause (animate)",
    "obj_rel_across_inanim": "Agreement across an object relative clause "
    "(inanimate)",
    "obj_rel_no_comp_across_anim": "Agreement across an object relative clause "
    "without complementizer (animate)",
    "obj_rel_no_comp_across_inanim": "Agreement across an object relative clause "
    "without complementizer (inanimate)",
    "obj_rel_within_anim": "Agreement within an object relative clause (animate)",
    "obj_rel_within_inanim": "Agreement within an object relative clause "
    "(inanimate)",
    "obj_rel_no_comp_within_anim": "Agreement within an object relative clause "
    "without complementizer (animate)",
    "obj_rel_no_comp_within_inanim": "Agreement within an object relative clause "
    "without complementizer (inanimate)",
    "simple_reflexives": "Simple reflexive anaphora",
    "reflexive_sent_comp": "Reflexive anaphora in a sentential complement",
    "reflexives_across": "Reflexive anaphora across a relative clause",
    "simple_npi_anim": "Simple negative polarity item (animate)",
    "simple_npi_inanim": "Simple negative polarity item (inanimate)",
    "npi_across_anim": "Negative polarity item across a relative clause (animate)",
    "npi_across_inanim": "Negative polarity item across a relative clause "
    "(inanimate)",
}


def task_title(task: str) -> str:
    """A task in words: the agreement tasks' titles, Marvin & Linzen's types, a
    labelled-sentence file; otherwise the identifier with spaces for underscores."""
    if task in TASKS:
        return TASKS[task].title
    if task in MARVIN_LINZEN_TITLES:
        return MARVIN_LINZEN_TITLES[task]
    if task == GLUE_TASK:
        return "Labelled sentences (classifier, gold label against the other)"
    return task.replace("_", " ")


# ------------------------------------------------------------------------ by format
def detect_format(path: str | os.PathLike) -> str:
    """The format of a data file, from its first line and its extension.

    A first line that opens a JSON object is ``"jsonl"``; a tab-separated header
    naming ``sentence`` and ``label`` is ``"glue"``; one naming two of Marvin &
    Linzen's columns (:data:`MARVIN_LINZEN_HEADER`) is ``"marvin-linzen"``. Otherwise
    the extension decides: ``.jsonl``/``.json``/``.ndjson`` is ``"jsonl"``, and a
    ``.tsv`` of four columns is ``"marvin-linzen"``.

    Raises:
        EvaluationError: the file cannot be read, or neither its first line nor its
            extension tells the format (the message names ``--format``).
    """
    try:
        with open(path, encoding=ENCODING) as handle:
            first = next((line for line in handle if line.strip()), "")
    except (OSError, UnicodeDecodeError) as error:
        raise EvaluationError(f"input {os.fspath(path)!r}: cannot read it ({error})")
    cells = [cell.strip().lower() for cell in first.split("\t")]
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if first.lstrip().startswith("{"):
        return "jsonl"
    if "sentence" in cells and "label" in cells:
        return "glue"
    if len(set(cells) & MARVIN_LINZEN_HEADER) >= 2:
        return "marvin-linzen"
    if extension in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if extension == ".tsv" and len(cells) == 4:
        return "marvin-linzen"
    raise EvaluationError(
        f"input {os.fspath(path)}: cannot tell its format from the extension or the "
        f"first line; pass --format (format=) one of {', '.join(FORMATS)}"
    )


def read_items(
    path: str | os.PathLike,
    format: Optional[str] = None,
    tokenizer: Any = None,
    labels: Optional[Sequence[str]] = None,
) -> Tuple[List[EvalItem], Dict[str, Any]]:
    """Items of a data file and a description of it for the run's meta file.

    Args:
        path (str or PathLike): The file.
        format (str, optional): One of :data:`FORMATS`. Default: read from the
            file (:func:`detect_format`)
        tokenizer (Any, optional): The model's tokenizer: its mask token and word
            pieces for ``"marvin-linzen"``. Default: None (``[MASK]``, no check)
        labels (sequence of str, optional): The two classes for ``"glue"``.

    Returns:
        (list of EvalItem, dict): the items, and ``{"input", "format", "items"}``
        (plus ``"skipped"`` pairs for ``"marvin-linzen"``).

    Raises:
        ValueError: an unknown format, or what the format's reader raises.
    """
    if format is None:
        format = detect_format(path)
    description: Dict[str, Any] = {"input": os.path.abspath(path), "format": format}
    if format == "jsonl":
        items = jsonl_items(path)
    elif format == "glue":
        items = glue_items(path, labels)
    elif format == "marvin-linzen":
        mask = getattr(tokenizer, "mask_token", None) or "[MASK]"
        items, description["skipped"] = read_marvin_linzen(path, mask, tokenizer)
    else:
        raise EvaluationError(
            f"format must be one of {', '.join(FORMATS)}, got {format!r}"
        )
    description["items"] = len(items)
    return items, description
