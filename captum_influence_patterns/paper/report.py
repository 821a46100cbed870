"""Reports of evaluation runs: markdown tables and plots from saved results.

:func:`write_report` reads results files of :mod:`.evaluation`, computes the metrics of
:mod:`.summary` and writes a markdown page (the protocol's settings, a check of the
three claims of docs/method.md, section 9 with bootstrap 95% intervals, per-task table
with tasks named in words, role influences, reference-route sufficiency, ablation,
the optimality test, per-layer consistency and the consistency/accuracy correlation)
with PNG plots: ``task_metrics.png`` (per-task bars), ``consistency_layers.png``
(per-layer entropy lines), ``ablation.png`` (patterns vs reference routes) and
``consistency_accuracy.png``, drawn by :mod:`.report_plots`; the discussion's
placeholders are filled by :mod:`.notes`.

Every user-supplied name (tasks, forms, roles, route names, settings) is escaped
(:func:`.report_sections.md_escape`): MyST passes raw HTML through, and ``|`` would
split a table cell. The page's sections live in :mod:`.report_sections`.

Command line: ``report RESULTS.jsonl [...] --output OUT/results.md [--static DIR]
[--notes discussion.md]`` (plots default to ``OUT/_static/results``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..convergence import records_convergence
from .datasets import EvaluationError
from .records import Summary, load_results, write_summary
from .run_files import meta_path
from .faithfulness_report import faithfulness_section, records_faithfulness
from .lm_prefixes import model_accuracy
from .notes import read_notes, read_summaries, render_notes
from .report_plots import PLOTS, has_data
from .metrics import NEAR_ZERO
from .stats import LEVEL, RESAMPLES, SEED
from .report_sections import (
    ablation_section,
    claims_section,
    consistency_section,
    convergence_section,
    fmt,
    identical_section,
    md_escape,
    opponents_section,
    optimality_section,
    role_section,
    route_section,
    skip_null_section,
    skip_section,
    subjects_section,
    sweep_section,
    task_name,
    task_section,
)
from .summary import summarize
from .verdicts import (
    CORRELATION_MIN,
    MIN_SENTENCES,
    P_MAX,
    SKIP_FLOW_MIN,
    borrow,
    claims,
)
from ..utils.files import write_text_atomic
from ..routes.optimality_records import WITHIN
from ..results import Pattern
from ..viz.interactive import evaluation_html

#: docs/evaluation.md of a source checkout (linked from the page when it exists).
EVALUATION_PAGE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "docs", "evaluation.md",
)



def _metas(paths: Sequence[str]) -> List[Dict[str, Any]]:
    metas = []
    for path in map(meta_path, paths):
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as handle:
                    meta = json.load(handle)
            except (OSError, ValueError) as error:  # bad JSON or bad UTF-8
                raise EvaluationError(f"{path}: cannot read it ({error})") from error
            if not isinstance(meta, dict):
                raise EvaluationError(f"{path}: expected a JSON object of settings")
            metas.append(meta)
    return metas


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_record(record: Dict[str, Any]) -> None:
    """Raise an :class:`EvaluationError` naming the record when it lacks what the
    report reads (a line of ``evaluate`` always has it)."""
    g = record.get("token_influence")
    sources = record.get("sources")
    problem = None
    if not _is_number(record.get("qoi")):
        problem = "no number 'qoi'"
    elif not isinstance(g, list) or not all(v is None or _is_number(v) for v in g):
        problem = "'token_influence' is not a list of numbers"
    elif not isinstance(sources, list) or not all(
        isinstance(j, int) and 0 <= j < len(g) for j in sources
    ):
        problem = "'sources' is not a list of positions"
    elif not isinstance(record.get("input_ids"), list):
        problem = "no list 'input_ids'"
    elif not isinstance(record.get("routes") or record.get("baselines") or {}, dict):
        problem = "'routes' is not an object of route name -> patterns"
    else:
        routes = record.get("routes") or record.get("baselines") or {}
        for name, rows in [("patterns", record.get("patterns")),
                           *(("routes." + str(k), v) for k, v in routes.items())]:
            try:
                [Pattern.from_dict(row) for row in rows]
            except (AttributeError, KeyError, TypeError, ValueError):
                problem = f"'{name}' is not a list of patterns"
                break
    if problem:
        raise EvaluationError(
            f"results record {record.get('id')!r}: {problem}; the report reads the "
            "lines that `evaluate` writes"
        )


# ------------------------------------------------------------------------- sections
#: How a run's ``sources`` setting reads in words.
SOURCES_IN_WORDS = {
    "all": "every token (roles labelled where known)",
    "roles": "the word roles subject, attractor and verbs (every non-special token "
    "when an example has no roles)",
}


def _protocol(settings: Dict[str, Any]) -> List[str]:
    """The protocol of one run, in words (every value escaped)."""
    sources = str(settings.get("sources", "n/a"))
    routes = settings.get("routes", settings.get("baselines")) or []
    orientation = settings.get("route_orientation", settings.get("orientation"))
    lines = [
        f"- sources explained: {SOURCES_IN_WORDS.get(sources, md_escape(sources))}",
        f"- integration: {md_escape(settings.get('n_steps', 'n/a'))} steps, method "
        f"{md_escape(settings.get('method', 'n/a'))}",
        f"- integrated-gradients baseline input: "
        f"{md_escape(settings.get('baseline', 'n/a'))}",
        "- reference routes: "
        + (", ".join(md_escape(r) for r in routes) if routes else "none"),
    ]
    if routes:
        lines.append(
            "- attention route orientation: "
            + (md_escape(orientation) if orientation else "flow (the default)")
        )
    if settings.get("ablation"):
        lines.append(
            f"- ablation: level {md_escape(settings.get('ablation_level'))}, "
            "references "
            + ", ".join(md_escape(r) for r in settings.get("references", []))
        )
    shown = {"sources", "n_steps", "method", "baseline", "routes", "baselines",
             "route_orientation", "orientation", "ablation", "ablation_level",
             "references"}
    lines += [
        f"- {md_escape(key)}: {md_escape(json.dumps(value))}"
        for key, value in settings.items()
        if key not in shown
    ]
    return lines


def _dataset(dataset: Any) -> str:
    if not isinstance(dataset, dict):
        return md_escape(json.dumps(dataset))
    parts = []
    if dataset.get("tasks"):
        parts.append("tasks " + ", ".join(task_name(t) for t in dataset["tasks"]))
    for key, value in dataset.items():
        if key == "skipped":  # the reader's count, before any model saw the items
            parts.append(f"pairs skipped while reading {md_escape(value)}")
        elif key != "tasks":
            parts.append(f"{md_escape(key)} {md_escape(value)}")
    return "; ".join(parts)


def _settings_section(
    metas: List[Dict[str, Any]],
    summary: Summary,
    skipped: List[Dict[str, Any]],
) -> List[str]:
    lines = ["## Settings", ""]
    for meta in metas:
        lines.append(f"- model: {md_escape(meta.get('model'))}")
        lines.append(f"- data set: {_dataset(meta.get('dataset'))}")
        lines += _protocol(meta.get("settings") or {})
    if not metas:
        lines.append("- no settings file (`.meta.json`) beside the results")
    reasons = sorted({str(record["skipped"]) for record in skipped})
    lines.append(
        f"- items skipped by the model (`--skip-invalid`): {len(skipped)}"
        + (f" ({md_escape('; '.join(reasons[:3]))})" if reasons else "")
    )
    sizes = ", ".join(
        f"{md_escape(t)}: {m['n']}" for t, m in summary.tasks.items()
    )
    sources = summary.overall.get("sources_per_example")
    boot = summary.intervals["settings"]
    lines += [
        f"- examples per task (n): {sizes}",
        f"- sources per example (mean): {fmt(sources, 1)}",
        f"- intervals: bootstrap {round(100 * boot['level'])}% percentile intervals "
        f"over {boot['n_resamples']} resamples of the sentences (seed "
        f"{boot['seed']})",
    ]
    complete = summary.overall.get("completeness") or {}
    if complete.get("median") is not None:
        lines.append(
            f"- completeness: |sum g - (QoI(x) - QoI(x'))| median "
            f"{fmt(complete['median'], 5)}, largest {fmt(complete['max'], 4)} "
            f"(mean |QoI| {fmt(complete['mean_abs_qoi'], 2)})"
        )
    lines.append("")
    return lines


def _evaluation_link(folder: str) -> str:
    """A link to docs/evaluation.md that works from ``folder``: beside the page (the
    project's docs), else into the source checkout, else the page's name."""
    if os.path.isfile(os.path.join(folder, "evaluation.md")):
        return "[evaluation.md](evaluation.md)"
    if os.path.isfile(EVALUATION_PAGE):
        try:
            target = os.path.relpath(EVALUATION_PAGE, folder).replace(os.sep, "/")
        except ValueError:  # another drive
            target = EVALUATION_PAGE.replace(os.sep, "/")
        return f"[evaluation.md](<{target}>)"
    return "docs/evaluation.md of the project's documentation"


def _drop_unconverged(
    records: List[Dict[str, Any]],
) -> Tuple[List[Dict[str, Any]], Dict[str, int]]:
    """The records whose integral converged (or that carry no check), and how many
    did not, per task."""
    kept, dropped = [], Counter()
    for record in records:
        check = record.get("convergence")
        if check and not check["converged"]:
            dropped[record.get("task")] += 1
        else:
            kept.append(record)
    return kept, dict(sorted(dropped.items()))


def _summary(
    records: List[Dict[str, Any]],
    metas: List[Dict[str, Any]],
    others: Dict[str, Summary],
    claims_from: Dict[int, str],
    n_resamples: int,
    seed: int,
    convergence: Dict[str, Any],
    one_look: bool,
) -> Summary:
    """The page's summary: the metrics, the runs' settings (for the discussion's
    placeholders; not the item hashes), the convergence of every record read, the
    token-faithfulness measures, the verdicts (some borrowed from ``others``) and
    their criteria."""
    runs = [{k: v for k, v in meta.items() if k != "items"} for meta in metas]
    summary = Summary(
        **summarize(records, n_resamples, seed, one_look),
        runs=runs,
        # records written before the check have no entry
        convergence=convergence if convergence["n"] else None,
        model_accuracy=model_accuracy(records)  # a language model's prefixes
        if any("top2" in record for record in records) else None,
        faithfulness=records_faithfulness(records, n_resamples, seed),
    )
    return replace(
        summary,
        claims=claims(summary, {
            number: borrow(others[name].claims[number - 1], name)
            for number, name in claims_from.items()
        }),
        criteria={"skip_flow_min": SKIP_FLOW_MIN, "correlation_min": CORRELATION_MIN,
                  "p_max": P_MAX, "min_sentences": MIN_SENTENCES, "level": LEVEL,
                  "near_zero": NEAR_ZERO, **WITHIN},
    )


def write_report(
    results: Sequence[str],
    output: str,
    static_dir: Optional[str] = None,
    notes: Optional[str] = None,
    title: str = "Evaluation results",
    summary_path: Optional[str] = None,
    n_resamples: int = RESAMPLES,
    seed: int = SEED,
    notes_summaries: Optional[Dict[str, str]] = None,
    claims_from: Optional[Dict[int, str]] = None,
    exclude_unconverged: bool = False,
    one_look: bool = False,
) -> Summary:
    """Write the markdown report and its plots from results files.

    Args:
        results (sequence of str): Results JSONL files of :func:`~.evaluation.evaluate`.
        output (str): Markdown file (no default: a report never lands in a
            repository's docs by accident).
        static_dir (str, optional): Folder of the plots, linked relative to
            ``output``. Default: ``_static/results`` beside ``output``
        notes (str, optional): A markdown file appended as the discussion.
        title (str, optional): The page title.
        summary_path (str, optional): Also write the summary as JSON there
            (:func:`~.records.write_summary`).
        n_resamples (int, optional): Bootstrap resamples of the intervals.
            Default: :data:`~.stats.RESAMPLES`
        seed (int, optional): Bootstrap seed. Default: :data:`~.stats.SEED`
        notes_summaries (dict, optional): Name -> summary JSON file of another
            report, for the placeholders of ``notes`` (:func:`render_notes`; the
            report's own summary needs no name). Default: None
        claims_from (dict, optional): Claim number -> the name of one of
            ``notes_summaries`` whose verdict on that claim this page shows (and
            puts in its summary's ``claims``), e.g. ``{3: "routes"}`` when another
            run holds the ablation. Default: None
        exclude_unconverged (bool, optional): Leave the records whose integral did
            not converge out of every metric, table and verdict (the convergence
            section counts them per task). Default: False (they are counted, and
            flagged)
        one_look (bool, optional): The records come from a run whose sample size
            and stopping rule were fixed in advance (a pre-registration), looked at
            once: claim 3 shows no sequential looks and no interval adjusted for
            them. Default: False (a look every :data:`~.summary.LOOK_STEP`
            sentences, with the Bonferroni interval)

    Returns:
        Summary: the metrics of :func:`~.summary.summarize`, the runs' settings
        files, the verdicts and what else the page shows, as written to
        ``summary_path``.
    """
    records = load_results(results)
    if not records:
        raise EvaluationError(f"no results in {list(results)}")
    for record in records:
        check_record(record)
    metas = _metas(results)
    convergence = records_convergence(records)
    if exclude_unconverged:
        records, convergence["excluded"] = _drop_unconverged(records)
        if not records:
            raise EvaluationError(f"no converged results in {list(results)}")
    notes_text = read_notes(notes) if notes else None
    others = read_summaries(notes_summaries or {}, claims_from or {})
    folder = os.path.dirname(os.path.abspath(output))
    if static_dir is None:
        static_dir = os.path.join(folder, "_static", "results")
    summary = _summary(
        records, metas, others, claims_from or {}, n_resamples, seed, convergence,
        one_look,
    )
    # Before any file is written: a placeholder naming no number stops here.
    discussion = (
        None if notes_text is None
        else render_notes(notes_text, {**others, "": summary})
    )
    os.makedirs(folder, exist_ok=True)
    os.makedirs(static_dir, exist_ok=True)
    for name, plot in PLOTS.items():
        if has_data(name, summary):
            plot(summary, os.path.join(static_dir, name))
    faithful = faithfulness_section(summary.faithfulness, records, static_dir)
    if summary_path:
        write_summary(summary_path, summary)
    lines = [f"# {md_escape(title)}", "",
             "Generated by `captum-influence-patterns report` "
             "(the `report` command) from saved results; definitions in "
             f"{_evaluation_link(folder)}.", ""]
    skipped = [
        r for r in load_results(results, include_skipped=True) if "skipped" in r
    ]
    lines += _settings_section(metas, summary, skipped)
    lines += convergence_section(summary)
    for section in (claims_section, task_section, skip_section,
                    skip_null_section, role_section,
                    route_section, identical_section, ablation_section,
                    optimality_section, opponents_section, sweep_section,
                    consistency_section,
                    subjects_section):
        lines += section(summary)
    lines += faithful
    if discussion is not None:
        lines += ["## Discussion", "", discussion, ""]
    static = os.path.relpath(static_dir, folder)
    write_text_atomic(output, "\n".join(lines).replace("{static}", static))
    return summary


def patterns_page(
    records: Sequence[Dict[str, Any]], title: Optional[str] = None
) -> str:
    """The interactive page of an evaluation's routes, per task x form group
    (:func:`~captum_influence_patterns.viz.interactive.evaluation_html`)."""
    for record in records:
        check_record(record)
    patterns = [[Pattern.from_dict(p) for p in r["patterns"]] for r in records]
    return evaluation_html(records, patterns, title=title)
