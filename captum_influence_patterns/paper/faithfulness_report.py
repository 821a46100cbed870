"""The report's "Faithfulness of token attributions" section and its bar chart
(``faithfulness.png``), from the ``faithfulness`` field of evaluation records
(:func:`~.faithfulness.faithfulness_record`)."""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .faithfulness import MEASURES, faithfulness_summary  # noqa: E402

#: The figure's file name in the report's static folder.
FIGURE = "faithfulness.png"
#: Column titles of the measures.
TITLES = {
    "comprehensiveness": "comprehensiveness (AOPC)",
    "sufficiency": "sufficiency (AOPC)",
    "spearman": "Spearman with blank-out",
}
#: What each removal does, for the table captions.
REMOVALS = {
    "unk": "replaced by [UNK]",
    "mask": "replaced by [MASK] (the integrated-gradient baseline token: partly "
    "circular for g)",
    "deletion": "deleted (the sequence left-padded with a masked token)",
    "replacement": "replaced by the unknown (else end-of-text) token",
}


def _cell(entry: Dict[str, Any]) -> str:
    value, low, high = entry["value"], entry["low"], entry["high"]
    if value is None or not math.isfinite(value):
        return "n/a"
    if low is None or not math.isfinite(low):
        return f"{value:.2f}"
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def records_faithfulness(
    records: Sequence[Dict[str, Any]], n_resamples: int, seed: int
) -> Optional[Dict[str, Any]]:
    """The report summary's ``faithfulness``
    (:func:`~.faithfulness.faithfulness_summary` of the records that have one), or
    None when none has."""
    rows = _faithfulness_rows(records)
    return faithfulness_summary(rows, n_resamples, seed) if rows else None


def _faithfulness_rows(records: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [r["faithfulness"] for r in records if r.get("faithfulness")]


def faithfulness_section(
    summary: Optional[Dict[str, Any]],
    records: Sequence[Dict[str, Any]],
    static_dir: str,
) -> List[str]:
    """The section's markdown lines (the figure linked under ``{static}``) for the
    :func:`records_faithfulness` ``summary`` of ``records``; nothing for None. Writes
    the figure into ``static_dir``."""
    if summary is None:
        return []
    count = len(_faithfulness_rows(records))
    lines = [
        "## Faithfulness of token attributions",
        "",
        f"On {count} sentences: each method's token scores against removals of "
        "the scored word tokens (docs/method.md, section 8.4). Comprehensiveness "
        "and sufficiency are ERASER's, with the QoI in place of the class "
        "probability, averaged over the top 1, 2 and 3 tokens (higher "
        "comprehensiveness and lower sufficiency are better); the Spearman "
        "correlation is taken within each sentence between the scores and each "
        "token's blank-out effect, then averaged. Brackets: 95% bootstrap "
        "intervals over sentences. `random` is a row of uniformly drawn scores.",
        "",
    ]
    for removal, methods in summary.items():
        lines += [f"Tokens {REMOVALS.get(removal, removal)}:", ""]
        lines += ["| method | " + " | ".join(TITLES[m] for m in MEASURES) + " |"]
        lines += ["|---|" + "---|" * len(MEASURES)]
        for method, cells in methods.items():
            lines.append(
                f"| {method} | "
                + " | ".join(_cell(cells[m]) for m in MEASURES)
                + " |"
            )
        lines.append("")
    plot_faithfulness(summary, os.path.join(static_dir, FIGURE))
    lines += [f"![Faithfulness of token attributions]({{static}}/{FIGURE})", ""]
    return lines


def plot_faithfulness(summary: Dict[str, Any], path: str) -> None:
    """Bars per method with their 95% intervals: one row of panels per removal, one
    panel per measure."""
    removals = list(summary)
    fig, axes = plt.subplots(
        len(removals),
        len(MEASURES),
        figsize=(4.2 * len(MEASURES), 2.8 * len(removals)),
        squeeze=False,
    )
    for row, removal in enumerate(removals):
        methods = list(summary[removal])
        for column, measure in enumerate(MEASURES):
            ax = axes[row][column]
            values, lows, highs = [], [], []
            for method in methods:
                entry = summary[removal][method][measure]
                value = entry["value"] if entry["value"] is not None else math.nan
                low = entry["low"] if entry["low"] is not None else math.nan
                high = entry["high"] if entry["high"] is not None else math.nan
                values.append(value)
                lows.append(0.0 if math.isnan(low) else max(0.0, value - low))
                highs.append(0.0 if math.isnan(high) else max(0.0, high - value))
            ax.bar(range(len(methods)), values, yerr=[lows, highs], capsize=3,
                   color="#4c72b0")
            ax.axhline(0.0, color="black", linewidth=0.6)
            ax.set_xticks(range(len(methods)))
            ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{TITLES[measure]}\n{removal}", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
