"""Reports of evaluation runs: markdown tables and plots from saved results.

:func:`write_report` reads results files of :mod:`.evaluation`, computes the metrics of
:mod:`.metrics` and writes a markdown page (settings, per-task table, role influences,
baseline sufficiency, ablation, per-layer consistency, the consistency/accuracy
correlation and a check of the three claims of docs/method.md, section 9) with PNG
plots:
``task_metrics.png`` (per-task bars), ``consistency_layers.png`` (per-layer entropy
lines), ``ablation.png`` (patterns vs baselines) and ``consistency_accuracy.png``.

Command line: ``report RESULTS.jsonl [...] --output docs/results.md --static
docs/_static/results [--notes discussion.md]``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .evaluation import load_results, meta_path  # noqa: E402
from .metrics import summarize  # noqa: E402
from ..files import write_json_atomic, write_text_atomic  # noqa: E402

#: Plot resolution; keeps every PNG well under 200 KB.
DPI = 90
#: Ablation columns of the report: (route set, mode).
ABLATIONS = (("subject", "keep"), ("union", "keep"), ("subject", "remove"),
             ("union", "remove"))


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _suff(stats: Dict[str, Any], level: str) -> str:
    """``mean (median)`` of a sufficiency."""
    return f"{_fmt(stats[level])} ({_fmt(stats[level + '_median'])})"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _metas(paths: Sequence[str]) -> List[Dict[str, Any]]:
    metas = []
    for path in paths:
        if os.path.exists(meta_path(path)):
            with open(meta_path(path), encoding="utf-8") as handle:
                metas.append(json.load(handle))
    return metas


# ------------------------------------------------------------------------- sections
def _settings_section(
    metas: List[Dict[str, Any]], summary: Dict[str, Any]
) -> List[str]:
    lines = ["## Settings", ""]
    for meta in metas:
        lines.append(f"- model: `{meta.get('model')}`")
        lines.append(f"- data set: `{json.dumps(meta.get('dataset'))}`")
        lines.append(f"- settings: `{json.dumps(meta.get('settings'))}`")
    sizes = ", ".join(f"{t}: {m['n']}" for t, m in summary["tasks"].items())
    lines += [f"- examples per task (n): {sizes}", ""]
    return lines


def _task_section(summary: Dict[str, Any]) -> List[str]:
    rows = []
    for task, m in [*summary["tasks"].items(), ("**all**", summary["overall"])]:
        split = m["consistency_by_prediction"]
        rows.append([
            task, m["n"], _fmt(m["accuracy"], 2), _fmt(m["mean_qoi"], 2),
            _suff(m["sufficiency"], "embedding"), _suff(m["sufficiency"], "attention"),
            _fmt(m["skip_share"]["layers"], 2), _fmt(m["skip_share"]["weighted"], 2),
            _fmt(m["skip_share"]["flow"], 2), _fmt(m["consistency"]["consistency"]),
            f"{_fmt(split['correct']['consistency'])} (n={split['correct']['n']})",
            f"{_fmt(split['incorrect']['consistency'])} "
            f"(n={split['incorrect']['n']})",
        ])
    header = ["task", "n", "accuracy", "mean QoI", "I(e)/g mean (median)",
              "I(a)/g mean (median)", "skip (layers)",
              "skip (weighted)", "skip (flow)", "consistency", "consistency correct",
              "consistency incorrect"]
    return ["## Per task (guided patterns)", "",
            "![per-task metrics]({static}/task_metrics.png)", "",
            *_table(header, rows)]


def _role_section(summary: Dict[str, Any]) -> List[str]:
    roles = sorted({r for m in summary["tasks"].values() for r in m["role_influence"]})
    rows = [
        [task, *[_fmt(m["role_influence"].get(r)) for r in roles]]
        for task, m in summary["tasks"].items()
    ]
    return ["## Mean token influence g per word role", "",
            *_table(["task", *roles], rows)]


def _baseline_section(summary: Dict[str, Any]) -> List[str]:
    overall = summary["overall"]
    methods = list(overall["baseline_sufficiency"])
    if not methods:
        return []
    rows = [["guided", _suff(overall["sufficiency"], "embedding"),
             _suff(overall["sufficiency"], "attention"),
             _fmt(overall["skip_share"]["layers"], 2)]]
    rows += [
        [m, _suff(overall["baseline_sufficiency"][m], "embedding"),
         _suff(overall["baseline_sufficiency"][m], "attention"),
         _fmt(overall["baseline_skip_share"][m], 2)]
        for m in methods
    ]
    return ["## Guided patterns vs baseline routes (all tasks)", "",
            "Every route scored by the same gated integrated gradient.", "",
            *_table(["method", "I(e)/g mean (median)", "I(a)/g mean (median)",
                     "skip (layers)"], rows)]


def _ablation_section(summary: Dict[str, Any]) -> List[str]:
    ablation = summary["overall"]["ablation"]
    if not ablation:
        return []
    lines = ["## Ablation (all tasks)", "",
             "Share of the QoI retained, `sum(QoI_abl - QoI_ref) / sum(QoI - "
             "QoI_ref)` (QoI_ref: every node replaced), and accuracy (QoI > 0) "
             "of the ablated model. *keep*: only the route's nodes keep their "
             "values; *remove*: only the route's nodes are replaced. *subject*: "
             "the subject's route; *union*: all sources' routes.", "",
             "![ablation]({static}/ablation.png)", ""]
    for reference, entry in ablation.items():
        nothing = entry["nothing"]
        lines += [f"### Reference: {reference}", "",
                  f"Every node replaced: accuracy {_fmt(nothing['accuracy'], 2)}, "
                  f"raw QoI share {_fmt(nothing['retained_raw'])}.", ""]
        header = ["method"] + [f"{s} {m} retained / acc" for s, m in ABLATIONS]
        rows = []
        for method, sets in entry.items():
            if method == "nothing":
                continue
            cells = []
            for which, mode in ABLATIONS:
                stats = sets.get(which, {}).get(mode)
                cells.append("n/a" if stats is None else
                             f"{_fmt(stats['retained'])} / "
                             f"{_fmt(stats['accuracy'], 2)}")
            rows.append([method, *cells])
        lines += _table(header, rows)
    lines += _ablation_per_task(summary)
    return lines


def _ablation_per_task(summary: Dict[str, Any]) -> List[str]:
    tasks = summary["tasks"]
    first = next(iter(tasks.values()))["ablation"]
    if "mean" not in first:
        return []
    methods = [m for m in first["mean"] if m != "nothing"]
    rows = []
    for task, m in tasks.items():
        entry = m["ablation"].get("mean", {})
        rows.append([task, *[
            _fmt(entry.get(method, {}).get("union", {}).get("keep", {}).get("retained"))
            for method in methods
        ]])
    return ["### Keep only the union of routes, mean reference, per task (retained)",
            "", *_table(["task", *methods], rows)]


def _consistency_section(summary: Dict[str, Any]) -> List[str]:
    lines = ["## Consistency per layer", "",
             "Normalized entropy of the chosen positions / nodes across instances "
             "(0 = every instance chooses the same), averaged over source roles.", "",
             "![consistency per layer]({static}/consistency_layers.png)", ""]
    layers = len(summary["overall"]["consistency"]["positions"])
    header = ["task", *[f"pos l{k}" for k in range(1, layers)],
              *[f"node l{k}" for k in range(1, layers + 1)]]
    rows = [
        [task, *[_fmt(v, 2) for v in m["consistency"]["positions"][:-1]],
         *[_fmt(v, 2) for v in m["consistency"]["heads"]]]
        for task, m in summary["tasks"].items()
    ]
    lines += _table(header, rows)
    lines += ["Correlation of consistency with accuracy:", ""]
    rows = []
    for name, entry in summary["correlation"].items():
        rows.append([name.replace("_", " x "), entry["n"], _fmt(entry["pearson"]),
                     _fmt(entry["spearman"])])
    lines += _table(["groups", "n", "Pearson", "Spearman"], rows)
    lines += ["![consistency vs accuracy]({static}/consistency_accuracy.png)",
              ""]
    return lines


# ----------------------------------------------------------------------- the claims
def claims(summary: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Check the three claims of docs/method.md, section 9 against the numbers.

    Criteria (stated in the report): (1) holds when the influence-weighted skip share
    is at least 0.25; (2) holds when both correlations across task x form groups are
    positive and at least 0.3; (3) holds when, with the mean reference, keeping only
    the guided routes (union) retains more of the QoI than keeping the routes of every
    baseline.

    Returns:
        list of dict: ``claim``, ``holds`` (bool or None when not measurable), ``why``.
    """
    overall = summary["overall"]
    weighted = overall["skip_share"]["weighted"]
    out = [{
        "claim": "(1) a significant share of the flow goes through skip connections",
        "holds": None if weighted is None else weighted >= 0.25,
        "why": f"influence-weighted skip share {_fmt(weighted, 2)}, share of layers "
               f"{_fmt(overall['skip_share']['layers'], 2)}, candidate-flow share "
               f"{_fmt(overall['skip_share']['flow'], 2)} "
               "(criterion: weighted >= 0.25)",
    }]
    corr = summary["correlation"]["task_form"]
    values = [corr["pearson"], corr["spearman"]]
    out.append({
        "claim": "(2) pattern consistency across instances tracks accuracy",
        "holds": None if None in values else min(values) >= 0.3,
        "why": f"across task x form groups (n={corr['n']}): Pearson "
               f"{_fmt(corr['pearson'], 2)}, Spearman {_fmt(corr['spearman'], 2)}; "
               f"across tasks (n={summary['correlation']['task']['n']}): Pearson "
               f"{_fmt(summary['correlation']['task']['pearson'], 2)} "
               "(criterion: both task x form correlations >= 0.3)",
    })
    entry = overall["ablation"].get("mean", {})
    kept = {
        m: sets.get("union", {}).get("keep", {}).get("retained")
        for m, sets in entry.items() if m != "nothing"
    }
    guided = kept.pop("guided", None)
    best = max(((v, m) for m, v in kept.items() if v is not None), default=None)
    out.append({
        "claim": "(3) patterns retain more of the behaviour under ablation than "
                 "baseline routes",
        "holds": None if guided is None or best is None else guided > best[0],
        "why": "not measured" if best is None else
               f"keep-only union, mean reference: guided retains {_fmt(guided)}, best "
               f"baseline {best[1]} {_fmt(best[0])} (criterion: guided > every "
               "baseline)",
    })
    return out


def _claims_section(summary: Dict[str, Any]) -> List[str]:
    lines = ["## The claims of docs/method.md, section 9 on this model", ""]
    for entry in claims(summary):
        verdict = {True: "holds", False: "does not hold", None: "not measured"}[
            entry["holds"]]
        lines.append(f"- {entry['claim']}: **{verdict}** ({entry['why']}).")
    return lines + [""]


# ---------------------------------------------------------------------------- plots
def _save(fig: Any, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _nan(value: Optional[float]) -> float:
    return float("nan") if value is None else value


def plot_task_metrics(summary: Dict[str, Any], path: str) -> None:
    """Grouped bars per task: accuracy, median sufficiencies and skip shares."""
    tasks = list(summary["tasks"])
    series = {
        "accuracy": lambda m: m["accuracy"],
        "I(e)/g (median)": lambda m: m["sufficiency"]["embedding_median"],
        "I(a)/g (median)": lambda m: m["sufficiency"]["attention_median"],
        "skip (layers)": lambda m: m["skip_share"]["layers"],
        "skip (weighted)": lambda m: m["skip_share"]["weighted"],
    }
    fig, ax = plt.subplots(figsize=(8, 3.4))
    width = 0.8 / len(series)
    x = np.arange(len(tasks))
    for k, (name, get) in enumerate(series.items()):
        values = [_nan(get(summary["tasks"][t])) for t in tasks]
        ax.bar(x + (k - len(series) / 2 + 0.5) * width, values, width, label=name)
    ax.set_xticks(x, tasks, rotation=15, fontsize=8)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=7, ncol=len(series), loc="upper center",
              bbox_to_anchor=(0.5, -0.22))
    ax.set_title("Guided patterns per task", fontsize=9)
    _save(fig, path)


def plot_consistency_layers(summary: Dict[str, Any], path: str) -> None:
    """Per-layer normalized entropy of positions and nodes, one line per task."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), sharey=True)
    for task, m in summary["tasks"].items():
        curves = m["consistency"]
        layers = np.arange(1, len(curves["heads"]) + 1)
        axes[0].plot(layers[:-1], [_nan(v) for v in curves["positions"][:-1]],
                     marker="o", label=task)
        axes[1].plot(layers, [_nan(v) for v in curves["heads"]], marker="o")
    axes[0].set_title("chosen positions", fontsize=9)
    axes[1].set_title("chosen node (head or skip)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("layer", fontsize=8)
    axes[0].set_ylabel("normalized entropy", fontsize=8)
    axes[0].legend(fontsize=6)
    _save(fig, path)


def plot_ablation(summary: Dict[str, Any], path: str, reference: str = "mean") -> None:
    """Retained QoI share per method for each (route set, mode)."""
    entry = summary["overall"]["ablation"].get(reference, {})
    methods = [m for m in entry if m != "nothing"]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.8 / len(ABLATIONS)
    x = np.arange(len(methods))
    for k, (which, mode) in enumerate(ABLATIONS):
        values = [
            _nan(entry[m].get(which, {}).get(mode, {}).get("retained")) for m in methods
        ]
        ax.bar(x + (k - len(ABLATIONS) / 2 + 0.5) * width, values, width,
               label=f"{mode} {which}")
    ax.set_xticks(x, methods, rotation=15, fontsize=8)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel("QoI retained", fontsize=8)
    ax.set_title(f"Ablation ({reference} reference), all tasks", fontsize=9)
    ax.legend(fontsize=7, ncol=4)
    _save(fig, path)


def plot_consistency_accuracy(summary: Dict[str, Any], path: str) -> None:
    """Scatter of consistency against accuracy per task x form group."""
    points = summary["correlation"]["task_form"]["points"]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    tasks = sorted({p["group"][0] for p in points})
    for task in tasks:
        rows = [p for p in points if p["group"][0] == task]
        ax.scatter([_nan(p["consistency"]) for p in rows],
                   [_nan(p["accuracy"]) for p in rows], label=task, s=18)
    ax.set_xlabel("consistency", fontsize=8)
    ax.set_ylabel("accuracy", fontsize=8)
    ax.legend(fontsize=6)
    _save(fig, path)


PLOTS = {
    "task_metrics.png": plot_task_metrics,
    "consistency_layers.png": plot_consistency_layers,
    "ablation.png": plot_ablation,
    "consistency_accuracy.png": plot_consistency_accuracy,
}


# ------------------------------------------------------------------------ the report
def write_report(
    results: Sequence[str],
    output: str = "docs/results.md",
    static_dir: str = "docs/_static/results",
    notes: Optional[str] = None,
    title: str = "Evaluation results",
    summary_path: Optional[str] = None,
) -> Dict[str, Any]:
    """Write the markdown report and its plots from results files.

    Args:
        results (sequence of str): Results JSONL files of :func:`~.evaluation.evaluate`.
        output (str, optional): Markdown file. Default: ``docs/results.md``
        static_dir (str, optional): Folder of the plots (linked from the markdown as
            ``_static/results/...``). Default: ``docs/_static/results``
        notes (str, optional): A markdown file appended as the discussion.
        title (str, optional): The page title.
        summary_path (str, optional): Also write the metrics as JSON there.

    Returns:
        dict: the summary of :func:`~.metrics.summarize`.
    """
    records = load_results(results)
    if not records:
        raise ValueError(f"no results in {list(results)}")
    summary = summarize(records)
    os.makedirs(static_dir, exist_ok=True)
    for name, plot in PLOTS.items():
        plot(summary, os.path.join(static_dir, name))
    if summary_path:
        write_json_atomic(summary_path, summary)
    lines = [f"# {title}", "",
             "Generated by `captum-influence-patterns report` "
             "(the `report` command) from saved results; definitions in "
             "[evaluation.md](evaluation.md).", ""]
    lines += _settings_section(_metas(results), summary)
    for section in (_claims_section, _task_section, _role_section, _baseline_section,
                    _ablation_section, _consistency_section):
        lines += section(summary)
    if notes:
        with open(notes, encoding="utf-8") as handle:
            lines += ["## Discussion", "", handle.read().strip(), ""]
    static = os.path.relpath(static_dir, os.path.dirname(os.path.abspath(output)))
    write_text_atomic(output, "\n".join(lines).replace("{static}", static))
    return summary
