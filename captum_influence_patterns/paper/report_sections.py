"""The sections of an evaluation's report page
(:mod:`captum_influence_patterns.paper.report`): each turns the summary of
:mod:`.summary` into markdown lines, with the escaping and number formats they share
(:func:`md_escape`: MyST passes raw HTML through, and ``|`` would split a table
cell)."""

from __future__ import annotations

import html
import re
from typing import Any, Dict, List, Optional, Sequence

from .datasets import task_title
from .records import Summary, correlations
from .report_plots import ABLATIONS, has_data
from .metrics import NEAR_ZERO
from .optimality_metrics import SAME_ROUTE
from .verdicts import (
    MIN_SENTENCES,
    P_MAX,
    history_rows,
    looks_rows,
)

#: docs/evaluation.md of a source checkout (linked from the page when it exists).


#: Characters with a meaning in markdown (CommonMark lets any of them be escaped).
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-!|~$])")


def md_escape(text: Any) -> str:
    """``text`` as literal markdown: HTML escaped (MyST passes raw HTML through),
    markdown punctuation backslash-escaped, line breaks as spaces."""
    flat = " ".join(str(text).splitlines())
    return _MARKDOWN.sub(r"\\\1", html.escape(flat, quote=False))


def task_name(task: Any) -> str:
    """A task in words with its identifier, escaped: ``Title (id)``."""
    title = task_title(str(task))
    if title == str(task):
        return md_escape(task)
    return f"{md_escape(title)} ({md_escape(task)})"


def fmt(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(entry: Optional[Dict[str, Any]], digits: int = 2) -> str:
    """``value [low, high]`` of a bootstrap interval."""
    if not entry:
        return "n/a"
    return (
        f"{fmt(entry['value'], digits)} [{fmt(entry['low'], digits)}, "
        f"{fmt(entry['high'], digits)}]"
    )


def _suff(stats: Dict[str, Any], level: str) -> str:
    """``ratio of sums / median / mean`` of a sufficiency."""
    return " / ".join(
        fmt(stats.get(f"{level}_{kind}")) for kind in ("ratio", "median", "mean")
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


SUFFICIENCY_NOTE = (
    "I/g is given three ways: the ratio of sums `sum sign(g) I / sum |g|` (the "
    "|g|-weighted mean), the median over patterns, and the mean over patterns "
    f"whose |g| is at least {NEAR_ZERO:.0%} of the example's sum |g| (the others, "
    "counted as *near-zero g*, are left out of that mean only: a ratio with a "
    "near-zero denominator says nothing about the route)."
)


def task_section(summary: Summary) -> List[str]:
    rows = []
    for task, m in [*summary.tasks.items(), (None, summary.overall)]:
        split = m["consistency_by_prediction"]
        rows.append([
            "**all**" if task is None else task_name(task), m["n"],
            fmt(m["accuracy"], 2), fmt(m["mean_qoi"], 2),
            _suff(m["sufficiency"], "embedding"), _suff(m["sufficiency"], "attention"),
            f"{m['sufficiency']['near_zero']} of {m['sufficiency']['n']}",
            fmt(m["skip_share"]["layers"], 2), fmt(m["skip_share"]["weighted"], 2),
            fmt(m["skip_share"]["flow"], 2), fmt(m["consistency"]["consistency"]),
            f"{fmt(split['correct']['consistency'])} (n={split['correct']['n']})",
            f"{fmt(split['incorrect']['consistency'])} "
            f"(n={split['incorrect']['n']})",
        ])
    header = ["task", "n", "accuracy", "mean QoI",
              "I(e)/g ratio / median / mean", "I(a)/g ratio / median / mean",
              "near-zero g", "skip (layers)", "skip (weighted)", "skip (flow)",
              "consistency", "consistency correct", "consistency incorrect"]
    return ["## Per task (guided patterns)", "", SUFFICIENCY_NOTE, "",
            "![per-task metrics]({static}/task_metrics.png)", "",
            *_table(header, rows)]


def convergence_section(summary: Summary) -> List[str]:
    """How many sentences converged (flagged, with their ids, when some did not),
    the steps used, and a language model's own accuracy per task and form."""
    c = summary.convergence
    if c is None:
        return []
    lines = ["## Convergence", ""]
    steps = ", ".join(f"{k} steps: {v}" for k, v in c["steps"].items())
    lines.append(
        f"{c['converged']} of {c['n']} sentences converged to |delta| within the "
        f"tolerance of |dQoI| (largest ratio {fmt(c['max_relative'], 4)}); steps "
        f"used: {steps}."
    )
    if c["unconverged_ids"]:
        shown = ", ".join(md_escape(i) for i in c["unconverged_ids"][:10])
        shown += ", ..." if len(c["unconverged_ids"]) > 10 else ""
        excluded = c.get("excluded")
        if excluded is None:
            lines.append(
                f"**{len(c['unconverged_ids'])} did not converge and are counted in "
                f"the metrics below; treat them with care** ({shown})."
            )
        else:
            per_task = ", ".join(
                f"{task_name(task)} {count}" for task, count in excluded.items()
            )
            lines.append(
                f"**{len(c['unconverged_ids'])} did not converge and are left out of "
                f"every metric, table and verdict below** (per task: {per_task}; "
                f"{shown})."
            )
    elif c.get("excluded") is not None:
        lines.append("None is left out for not converging.")
    if c["without_check"]:
        lines.append(f"{c['without_check']} records were written before the check.")
    lines.append("")
    accuracy = summary.model_accuracy
    if accuracy:
        rows = [
            [task_name(task), m["n"], fmt(m["accuracy"], 2), fmt(m["top2_share"], 2),
             ", ".join(f"{form} {fmt(f['accuracy'], 2)}"
                       for form, f in m["forms"].items()),
             len(m["wrong_ids"])]
            for task, m in accuracy.items()
        ]
        lines += ["### The model's own predictions", "",
                  "Accuracy: logit(correct) > logit(wrong) at the prefix; top-2: the "
                  "pair is the model's two most likely next tokens. Wrong items stay "
                  "in every metric (marked prediction_correct: false).", "",
                  *_table(["task", "n", "accuracy", "top-2 share", "per form",
                           "wrong"], rows), ""]
    return lines


def skip_section(summary: Summary) -> List[str]:
    rows = []
    for task, m in [*summary.tasks.items(), (None, summary.overall)]:
        k = m["skip_share"]
        rows.append([
            "**all**" if task is None else task_name(task), fmt(k["layers"]),
            fmt(k.get("ceiling")), fmt(k.get("of_ceiling")), fmt(k.get("stays")),
            fmt(k.get("single_move")), fmt(k.get("stay_then_jump")),
            fmt(k["flow"]),
        ])
    return ["## Skip connections against the route shape", "",
            "Only a head moves a route to another position, so a route that ends "
            "away from its source crosses at least one layer by a head: the share "
            "of layers crossed by the skip is at most (L-1)/L (the *ceiling*, "
            "averaged over routes). *of ceiling*: the share of layers as a share of "
            "that ceiling; *at stays*: the skip's share of the layers where the "
            "route keeps its position; *one move*: routes that change position "
            "once; *stay, then jump*: routes that stay at the source and jump to the "
            "output at the last layer. The candidate-flow share is not forced by "
            "the route shape.", "",
            *_table(["task", "skip (layers)", "ceiling", "of ceiling", "at stays",
                     "one move", "stay, then jump", "skip (flow)"], rows)]


#: The routes of claim 1's null in words.
NULL_ROUTES_IN_WORDS = {
    "guided": "guided routes (their positions again)",
    "uniform_random": "positions drawn uniformly among the valid routes",
    "attention_random": "positions drawn in proportion to attention (rollout "
                        "matrices)",
}


def skip_null_section(summary: Summary) -> List[str]:
    null = summary.skip_null
    if not null.get("n"):
        return []
    rows = [
        [md_escape(NULL_ROUTES_IN_WORDS.get(kind, kind)), e["routes"],
         _ci(e["flow"], 3), _ci(e["layers"], 3),
         _ci(null["difference"].get(kind), 3) if kind != "guided" else ""]
        for kind, e in null["kinds"].items()
    ]
    return ["## Claim 1 against random routes of the same sources", "",
            f"For each source of these {null['n']} sentences, its guided route's "
            "positions and random routes' positions go through the search's stage "
            "B alone: at every layer the head-or-skip choice and the influences of "
            "every candidate at the route's position, as the search computes them "
            "along its own route. The skip's share of that candidate flow is the "
            "statistic of claim 1; a random route gives what the share is without "
            "the search's choice of positions. The recomputed guided candidates "
            "differ from the recorded ones by at most "
            f"{fmt(null.get('check'), 7)} (relative). 95% intervals, sentences "
            "resampled.", "",
            *_table(["routes", "routes scored", "skip (flow)", "skip (layers)",
                     "guided minus these (flow)"], rows)]


def role_section(summary: Summary) -> List[str]:
    roles = sorted({r for m in summary.tasks.values() for r in m["role_influence"]})
    if not roles:
        return []
    rows = [
        [task_name(task), *[fmt(m["role_influence"].get(r)) for r in roles]]
        for task, m in summary.tasks.items()
    ]
    return ["## Mean token influence g per word role", "",
            *_table(["task", *[md_escape(r) for r in roles]], rows)]


def route_section(summary: Summary) -> List[str]:
    overall = summary.overall
    methods = list(overall["route_sufficiency"])
    if not methods:
        return []
    rows = [["guided", _suff(overall["sufficiency"], "embedding"),
             _suff(overall["sufficiency"], "attention"),
             fmt(overall["skip_share"]["layers"], 2)]]
    rows += [
        [md_escape(m), _suff(overall["route_sufficiency"][m], "embedding"),
         _suff(overall["route_sufficiency"][m], "attention"),
         fmt(overall["route_skip_share"][m], 2)]
        for m in methods
    ]
    return ["## Guided patterns vs reference routes (all tasks)", "",
            "Every route scored by the same gated integrated gradient. "
            + SUFFICIENCY_NOTE, "",
            *_table(["method", "I(e)/g ratio / median / mean",
                     "I(a)/g ratio / median / mean", "skip (layers)"], rows)]


def ablation_section(summary: Summary) -> List[str]:
    ablation = summary.overall["ablation"]
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
        test = summary.ablation_test.get(reference) or {}
        close = test.get("closeness") or {}
        lines += [f"### Reference: {md_escape(reference)}", "",
                  f"Every node replaced: accuracy {fmt(nothing['accuracy'], 2)}, "
                  f"raw QoI share {fmt(nothing['retained_raw'])}. The retained "
                  "share divides by the QoI's change when every node is replaced, "
                  f"which is not positive for {fmt(test.get('nonpositive_change'))} "
                  "of the sentences; defined for every sentence instead is how far "
                  "the kept QoI stays from the QoI (mean |kept - QoI| over mean "
                  f"|QoI|): guided union {_ci(close.get('guided'), 3)}, closest "
                  f"reference route ({md_escape(test.get('closeness_route'))}) "
                  f"{_ci(close.get('best'), 3)}, margin {_ci(close.get('margin'), 3)}.",
                  ""]
        header = ["method"] + [f"{s} {m} retained / acc" for s, m in ABLATIONS]
        rows = []
        for method, sets in entry.items():
            if method == "nothing":
                continue
            cells = []
            for which, mode in ABLATIONS:
                stats = sets.get(which, {}).get(mode)
                cells.append("n/a" if stats is None else
                             f"{fmt(stats['retained'])} / "
                             f"{fmt(stats['accuracy'], 2)}")
            rows.append([md_escape(method), *cells])
        lines += _table(header, rows)
    lines += _ablation_per_task(summary)
    return lines


def _ablation_per_task(summary: Summary) -> List[str]:
    tasks = summary.tasks
    first = next(iter(tasks.values()))["ablation"]
    if "mean" not in first:
        return []
    methods = [m for m in first["mean"] if m != "nothing"]
    rows = []
    for task, m in tasks.items():
        entry = m["ablation"].get("mean", {})
        rows.append([task_name(task), *[
            fmt(entry.get(method, {}).get("union", {}).get("keep", {}).get("retained"))
            for method in methods
        ]])
    return ["### Keep only the union of routes, mean reference, per task (retained)",
            "", *_table(["task", *[md_escape(m) for m in methods]], rows)]


def optimality_section(summary: Summary) -> List[str]:
    if not summary.overall["optimality"].get("n"):
        return []
    rows = []
    for task, m in [*summary.tasks.items(), (None, summary.overall)]:
        o = m["optimality"]
        if not o.get("n"):
            continue
        rows.append([
            "**all**" if task is None else task_name(task), o["n"],
            fmt(o["n_random"], 0), fmt(o["share_beaten"]),
            fmt(o["share_beaten_median"]), fmt(o["beats_all"], 2),
            fmt(o["gap"]), fmt(o["gap_median"]), fmt(o["at_least_best"], 2),
        ])
    interval = summary.intervals.get("optimality", {}).get("share_beaten")
    return ["## Optimality: guided routes against random routes", "",
            "For each explained source, the guided route against random valid routes "
            "of the same source (same output position, causal constraint respected): "
            "the share of random routes it beats and its gap to the best random "
            "route (guided minus best random; >= 0: at least as good). Mean share "
            f"beaten over all sources, 95% interval: {_ci(interval, 3)}. The "
            "opponents are weak: the median best random route carries "
            f"{fmt(summary.overall['optimality'].get('random_best_of_g'), 6)} "
            "of its source's |g|, and for "
            f"{fmt(summary.overall['optimality'].get('random_near_zero'))} of "
            f"the sources it carries under {NEAR_ZERO:.0%}.", "",
            *_table(["task", "sources", "random routes per source",
                     "beats (mean)", "beats (median)", "beats all",
                     "gap (mean)", "gap (median)", "gap >= 0"], rows)]


#: The optimality test's opponents in words.
OPPONENTS_IN_WORDS = {
    "optimum": "the best route found by the beam search (width 8), or every route "
               "where a source has at most 1,000 (the exhaustive optimum)",
    "stay_then_jump": "stay at the source, then jump at the last layer",
    "attention_route": "the best attention-based reference route",
    "attention_random": "random routes drawn in proportion to attention",
    "random": "uniform random routes",
}


def opponents_section(summary: Summary) -> List[str]:
    stats = summary.overall.get("opponents") or {}
    if not stats.get("n"):
        return []
    boot = summary.intervals.get("opponents") or {}
    rows = [
        [md_escape(OPPONENTS_IN_WORDS.get(name, name)), e["n"], fmt(e["at_least"]),
         fmt(e["ratio_median"])]
        for name, e in stats["opponents"].items()
    ]
    finders = ", ".join(
        f"{md_escape(name)} {fmt(share)}"
        for name, share in stats["best_found_by"].items()
    )
    searches = "; ".join(
        f"{e['n']} sources by "
        + ("the exhaustive search" if e["search"] == "exhaustive" else
           f"the {md_escape(e['search'])} search at width {e['width']}")
        for e in stats.get("optimum_search") or []
    )
    quantiles = stats.get("shortfall_quantiles") or {}
    return ["## Optimality: guided routes against stronger opponents", "",
            "The best route found for a source is the best of the guided route and "
            "every opponent's; the *shortfall* is `sign (best found - guided) / "
            "|best found|` (0 when the guided route is the best). Over "
            f"{stats['n']} sources, the guided route is within 1% of the best found "
            f"for {_ci(boot.get('within_1pct'), 3)} of them and within 5% for "
            f"{_ci(boot.get('within_5pct'), 3)}; median shortfall "
            f"{_ci(boot.get('shortfall_median'), 3)} (mean "
            f"{fmt(stats['shortfall_mean'])}; 95% intervals, sentences resampled). "
            f"Best route found by: {finders}. The *optimum* opponent was searched "
            f"as follows: {searches or 'n/a'}; where a beam searched it, it is the "
            "best route that beam found, not a proven optimum.", "",
            *_table(["opponent", "sources", "guided at least as good",
                     "opponent / guided (median)"], rows),
            "### The shortfall's distribution", "",
            "The share within 1% hides how the shortfall splits: for "
            f"{fmt(stats.get('shortfall_zero'))} of the sources the guided route "
            "is the best found (shortfall 0), and where it is not, the median "
            f"shortfall is {fmt(stats.get('shortfall_positive_median'))}.", "",
            *_table(["quantile", *quantiles, "largest"],
                    [["shortfall", *[fmt(v) for v in quantiles.values()],
                      fmt(stats.get("shortfall_max"))]]),
            "![shortfall histogram]({static}/shortfall.png)", ""]


def sweep_section(summary: Summary) -> List[str]:
    sweep = summary.optimum_sweep
    if not sweep.get("n"):
        return []
    rows = [
        [md_escape(name), e["sources"], fmt(e["within_1pct"]),
         fmt(e["shortfall_median"]),
         "" if name == sweep["narrowest"] else fmt(e["better_than"]),
         "" if name == sweep["narrowest"] else fmt(e["gain_median"])]
        for name, e in sweep["searches"].items()
    ]
    lines = ["## The best route found against the beam's width and every route", "",
             f"On {sweep['n']} sentences, every source's best route by the beam at "
             "each width (*beamW*), at the embedding level. *guided within 1%*: "
             "the share of sources whose guided route is within 1% of that "
             "search's best; *better than the narrowest*: the share where the wider "
             "beam finds a better route than the narrowest one, and by how much "
             "(median, relative).", "",
             *_table(["search", "sources", "guided within 1%", "guided shortfall "
                      "(median)", "better than the narrowest", "by (median)"],
                     rows)]
    exhaustive = sweep.get("exhaustive")
    if exhaustive:
        rows = [[md_escape(name), e["sources"], fmt(e["found"]),
                 fmt(e["shortfall_median"])]
                for name, e in exhaustive["by"].items()]
        lines += [f"Every route enumerated for {exhaustive['sources']} sources "
                  f"(median {fmt(exhaustive['routes'], 0)} routes each): the "
                  "exhaustive optimum, against which each search's route is "
                  f"measured (*reaches it*: within a relative {SAME_ROUTE:g}).", "",
                  *_table(["route", "sources", "reaches the optimum", "shortfall "
                           "(median)"], rows)]
    return lines


def consistency_section(summary: Summary) -> List[str]:
    lines = ["## Consistency per layer", "",
             "Normalized entropy of the chosen positions / nodes across instances "
             "(0 = every instance chooses the same), averaged over source roles "
             "(sources without a role grouped by position).", "",
             "![consistency per layer]({static}/consistency_layers.png)", ""]
    layers = len(summary.overall["consistency"]["positions"])
    header = ["task", *[f"pos l{k}" for k in range(1, layers)],
              *[f"node l{k}" for k in range(1, layers + 1)]]
    rows = [
        [task_name(task), *[fmt(v, 2) for v in m["consistency"]["positions"][:-1]],
         *[fmt(v, 2) for v in m["consistency"]["heads"]]]
        for task, m in summary.tasks.items()
    ]
    lines += _table(header, rows)
    lines += ["Correlation of consistency with accuracy:", ""]
    rows = []
    typed = correlations(summary)
    for name, entry in typed.items():
        test = entry.permutation
        rows.append([name.replace("_", " x "), entry.n, fmt(entry.pearson),
                     fmt(entry.spearman), fmt(test.pearson_p),
                     fmt(test.spearman_p),
                     f"{fmt(entry.accuracy_min, 2)} - "
                     f"{fmt(entry.accuracy_max, 2)}"])
    lines += _table(["groups", "n", "Pearson", "Spearman", "permutation p (Pearson)",
                     "permutation p (Spearman)", "accuracy range"], rows)
    boot = summary.intervals.get("correlation") or {}
    pairings = typed["task_form"].permutation.n_permutations
    if boot:
        lines += ["Task x form groups, 95% intervals resampling the groups and then "
                  "their sentences: Pearson "
                  f"{_ci(boot.get('pearson'), 3)} (mean of the resamples "
                  f"{fmt(boot['pearson'].get('mean'))}), Spearman "
                  f"{_ci(boot.get('spearman'), 3)} (mean "
                  f"{fmt(boot['spearman'].get('mean'))}). Resampling sentences "
                  "repeats some of them, which lowers each group's entropy, so the "
                  "resampled correlations run low; the permutation test (one-sided, "
                  f"{pairings} random pairings of consistency with accuracy) has no "
                  "such bias.", ""]
    if has_data("consistency_accuracy.png", summary):
        lines += ["![consistency vs accuracy]({static}/consistency_accuracy.png)",
                  ""]
    return lines


def identical_section(summary: Summary) -> List[str]:
    pairs = summary.identical_routes
    if not pairs:
        return []
    rows = [[md_escape(a), md_escape(b), f"{e['same']} of {e['n']}",
             fmt(e["share"])]
            for a, others in pairs.items() for b, e in others.items()]
    return ["## Identical routes", "",
            "Sources that two methods explain with the same route (same positions "
            "and nodes at every layer).", "",
            *_table(["method", "other method", "same route", "share"], rows)]


def subjects_section(summary: Summary) -> List[str]:
    split = summary.subjects
    if not split:
        return []
    rows = [[name.replace("_", "-"), e["n"], fmt(e["accuracy"]), fmt(e["mean_qoi"]),
             fmt(e.get("embedding_ratio")), fmt(e.get("skip_flow"))]
            for name, e in ((k, split[k]) for k in ("training", "held_out"))]
    return ["## Subjects the readout was fitted on", "",
            "The readout was fitted on the training nouns of the tasks "
            "(`scripts/fit_readout.py`); the evaluation draws subjects from every "
            "noun. Sentences by their subject's split; held-out minus training "
            f"accuracy {_ci(split.get('difference'), 3)} (95% interval, sentences "
            "resampled within each split).", "",
            *_table(["subject nouns", "sentences", "accuracy", "mean QoI",
                     "I(e)/g ratio", "skip (flow)"], rows)]


# ----------------------------------------------------------------------- the claims
def claims_section(summary: Summary) -> List[str]:
    """The verdict of every claim, rendered from the summary's verdict object
    (:func:`~.verdicts.claims`), the sequential looks of claim 3 and the history of
    every criterion."""
    entries = summary.claims
    lines = ["## The claims of docs/method.md, section 9 on this model", "",
             "Each statistic with its 95% interval `[low, high]` (bootstrap: "
             "sentences resampled; for the correlations, groups and then their "
             "sentences). One rule decides every claim: **supported** when the "
             "interval clears the criterion, **contradicted** when it lies on the "
             "other side, **inconclusive** otherwise; claim 2 also needs its "
             f"permutation test and claim 3 its paired Wilcoxon test at p < {P_MAX} "
             f"(`paper/verdicts.py`). No verdict under {MIN_SENTENCES} "
             "sentences (claim 2: in any task x form group).", ""]
    for entry in entries:
        where = (f" (from the {md_escape(entry['source'])} run, "
                 f"{entry['n']} sentences)" if entry.get("source") else "")
        verdict = entry["verdict"]
        reason = f", {entry['too_few']}" if entry["too_few"] else ""
        lines.append(f"- {entry['claim']}{where}: **{verdict}**{reason}. "
                     f"Criterion: {entry['criterion']}. Measured: {entry['why']}.")
    lines.append("")
    if summary.ablation_test.get("one_look"):
        lines += ["These records come from a run whose sample size and stopping rule "
                  "were fixed in advance and which was looked at once, at that size: "
                  "claim 3 has no sequential looks, and no interval is adjusted for "
                  "them.", ""]
    owner = next((e for e in entries if e["number"] == 3 and not e.get("source")
                  and not e["too_few"]), None)
    rows = looks_rows(summary) if owner else []
    if len(rows) > 1:
        lines += ["### Claim 3 at every sequential look", "",
                  "The margin over the best reference route (mean reference) on the "
                  "first n sentences in the order they were run (tasks interleaved, "
                  "so every look covers them evenly), with its 95% interval, the "
                  "share of sentences where the guided union keeps more than that "
                  "route, the paired Wilcoxon test and the decision the rule would "
                  "have given at that look. No stopping rule was fixed before the "
                  "run, so the last look's interval is also given at the level that "
                  "splits 5% over every look (Bonferroni) in the claim above.", "",
                  *_table(["sentences", "margin [95% interval]", "best reference "
                           "route", "guided keeps more", "Wilcoxon p", "decision"],
                          rows)]
    history = history_rows(entries)
    if history:
        lines += ["### When each criterion was set", "",
                  "Every version of each criterion: the commit that set it, and "
                  "whether the records that decide it had been seen by then. "
                  + "On the project's MiniLM pages (docs/results.md), "
                  + "; ".join(f"claim {e['number']} is decided by {e['data']}"
                              for e in entries if e.get("data")) + ".", "",
                  *_table(["claim", "commit", "date", "criterion", "records"],
                          history)]
    return lines


# ---------------------------------------------------------------------------- plots


# ------------------------------------------------------------------- the discussion


# ------------------------------------------------------------------------ the report


