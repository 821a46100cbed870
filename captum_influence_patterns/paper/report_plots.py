"""The figures of an evaluation's report, drawn from its summary: per-task bars,
per-layer consistency, the ablation of the guided against the reference routes, the
consistency/accuracy points and the opponents' shortfall (:data:`PLOTS`, each a PNG
under 200 KB)."""

from __future__ import annotations

from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .records import Summary  # noqa: E402


#: Plot resolution; keeps every PNG well under 200 KB.
DPI = 90


#: Ablation columns of the report: (route set, mode).
ABLATIONS = (("subject", "keep"), ("union", "keep"), ("subject", "remove"),
             ("union", "remove"))


def plot_label(text: Any) -> str:
    """``text`` for a matplotlib label: ``$`` escaped so mathtext never parses it."""
    return str(text).replace("$", r"\$")


def _save(fig: Any, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _nan(value: Optional[float]) -> float:
    return float("nan") if value is None else value


def plot_task_metrics(summary: Summary, path: str) -> None:
    """Grouped bars per task: accuracy, median sufficiencies and skip shares."""
    tasks = list(summary.tasks)
    series = {
        "accuracy": lambda m: m["accuracy"],
        "I(e)/g (ratio of sums)": lambda m: m["sufficiency"]["embedding_ratio"],
        "I(a)/g (ratio of sums)": lambda m: m["sufficiency"]["attention_ratio"],
        "skip (layers)": lambda m: m["skip_share"]["layers"],
        "skip (weighted)": lambda m: m["skip_share"]["weighted"],
    }
    fig, ax = plt.subplots(figsize=(8, 3.4))
    width = 0.8 / len(series)
    x = np.arange(len(tasks))
    for k, (name, get) in enumerate(series.items()):
        values = [_nan(get(summary.tasks[t])) for t in tasks]
        ax.bar(x + (k - len(series) / 2 + 0.5) * width, values, width, label=name)
    ax.set_xticks(x, [plot_label(t) for t in tasks], rotation=15, fontsize=8)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=7, ncol=len(series), loc="upper center",
              bbox_to_anchor=(0.5, -0.22))
    ax.set_title("Guided patterns per task", fontsize=9)
    _save(fig, path)


def plot_consistency_layers(summary: Summary, path: str) -> None:
    """Per-layer normalized entropy of positions and nodes, one line per task."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), sharey=True)
    for task, m in summary.tasks.items():
        curves = m["consistency"]
        layers = np.arange(1, len(curves["heads"]) + 1)
        axes[0].plot(layers[:-1], [_nan(v) for v in curves["positions"][:-1]],
                     marker="o", label=plot_label(task))
        axes[1].plot(layers, [_nan(v) for v in curves["heads"]], marker="o")
    axes[0].set_title("chosen positions", fontsize=9)
    axes[1].set_title("chosen node (head or skip)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("layer", fontsize=8)
    axes[0].set_ylabel("normalized entropy", fontsize=8)
    axes[0].legend(fontsize=6)
    _save(fig, path)


def plot_ablation(summary: Summary, path: str, reference: str = "mean") -> None:
    """Retained QoI share per method (guided and reference routes) for each (route
    set, mode)."""
    entry = summary.overall["ablation"].get(reference, {})
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
    ax.set_xticks(x, [plot_label(m) for m in methods], rotation=15, fontsize=8)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel("QoI retained", fontsize=8)
    ax.set_title(f"Ablation ({reference} reference), all tasks", fontsize=9)
    ax.legend(fontsize=7, ncol=4)
    _save(fig, path)


def plot_consistency_accuracy(summary: Summary, path: str) -> None:
    """Scatter of consistency against accuracy per task x form group."""
    points = summary.correlation["task_form"]["points"]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    tasks = sorted({p["group"][0] for p in points})
    for task in tasks:
        rows = [p for p in points if p["group"][0] == task]
        ax.scatter([_nan(p["consistency"]) for p in rows],
                   [_nan(p["accuracy"]) for p in rows], label=plot_label(task),
                   s=18)
    ax.set_xlabel("consistency", fontsize=8)
    ax.set_ylabel("accuracy", fontsize=8)
    ax.legend(fontsize=6)
    _save(fig, path)


def plot_shortfall(summary: Summary, path: str) -> None:
    """Histogram of the optimality test's shortfalls (guided route against the best
    route found), from the summary's per-source values."""
    values = [v for v in summary.overall["opponents"].get("shortfalls") or []
              if v is not None]
    fig, ax = plt.subplots(figsize=(6, 3))
    positive = [v for v in values if v > 0]
    bins = np.linspace(0.0, max(1.0, max(positive, default=1.0)), 21)
    ax.bar([-0.04], [len(values) - len(positive)], width=0.04, color="tab:green",
           label="0: the guided route is the best found")
    ax.hist(positive, bins=bins, color="tab:blue", label="above 0")
    ax.set_yscale("log")
    ax.set_xlabel("shortfall (best found - guided) / |best found|", fontsize=8)
    ax.set_ylabel("sources", fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title(f"Shortfall of the guided route, {len(values)} sources", fontsize=9)
    _save(fig, path)


PLOTS = {
    "task_metrics.png": plot_task_metrics,
    "consistency_layers.png": plot_consistency_layers,
    "ablation.png": plot_ablation,
    "consistency_accuracy.png": plot_consistency_accuracy,
    "shortfall.png": plot_shortfall,
}


def has_data(plot: str, summary: Summary) -> bool:
    """Whether a plot has anything to draw (no empty figures)."""
    if plot == "ablation.png":
        return bool(summary.overall["ablation"])
    if plot == "consistency_accuracy.png":
        return bool(summary.correlation["task_form"]["points"])
    if plot == "shortfall.png":
        return bool(summary.overall["opponents"].get("n"))
    return True
