"""The verdicts on the paper's three claims: one decision rule on intervals, the
criteria with their history, and the verdict object every page renders.

A claim's statistic comes with a 95% interval (:mod:`.metrics`). The rule
(:func:`decide`) is the same for every claim:

- **supported** when the whole interval clears the criterion's threshold;
- **contradicted** when the whole interval lies on the other side;
- **inconclusive** otherwise.

Claim 2 needs both correlations (and its permutation test, p < 0.05) to clear, and is
contradicted when either interval lies below its threshold. Claim 3 also needs its
paired per-sentence test (two-sided Wilcoxon signed-rank, p < 0.05) to agree with the
interval's side before it is supported or contradicted.

No verdict is given on fewer than :data:`MIN_SENTENCES` sentences (claims 1 and 3) or
for task x form groups with fewer than :data:`MIN_SENTENCES` sentences each (claim 2).

Each criterion carries its history (:data:`CRITERIA`): the commit that set each
version, its date, and whether the records it decides had been seen by then. The
claim list of a page and its discussion both read :func:`claims`'s entries (the
discussion through the summary's ``claims``), so they cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .records import Summary, correlations

#: Fewest sentences behind a verdict (per task x form group for claim 2).
MIN_SENTENCES = 20
#: The decisions in words.
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
#: What a claim gets when it cannot be decided at all.
NO_VERDICT = "no verdict"
#: Significance level of the tests that a verdict needs beside its interval.
P_MAX = 0.05
#: Thresholds of the criteria.
SKIP_FLOW_MIN = 0.25
CORRELATION_MIN = 0.3
MARGIN_MIN = 0.0


@dataclass(frozen=True)
class Revision:
    """One version of a criterion: what it said, the commit that set it (short
    hash and UTC date), and whether the records it decides were seen before."""

    commit: str
    date: str
    criterion: str
    seen: str


@dataclass(frozen=True)
class Criterion:
    """A claim, its current criterion (its threshold and statistic) and history."""

    claim: str
    criterion: str
    statistic: str
    threshold: float
    data: str
    history: Tuple[Revision, ...]


#: The interval rule of this module, a revision of every criterion.
RULE = Revision(
    "fbba06e (issue 30, branch verdicts)",
    "2026-12-06",
    "the decision on the 95% interval: supported, contradicted or inconclusive; "
    f"claim 3 also needs its paired Wilcoxon test; no verdict under {MIN_SENTENCES} "
    "sentences",
    "seen: every MiniLM record (agreement.jsonl, routes.jsonl, routes100.jsonl, "
    "routes_authors.jsonl, optimality_subset.jsonl) existed and had been reported",
)

#: The three claims of docs/method.md, section 9, with their criteria's history.
CRITERIA: Dict[int, Criterion] = {
    1: Criterion(
        claim="a significant share of the flow goes through skip connections",
        criterion="the skip carries at least 0.25 of the candidate flow at the "
        "route's positions (a share the route shape does not force); the share of "
        "layers crossed by the skip is reported raw and against its structural "
        "ceiling",
        statistic="candidate-flow share",
        threshold=SKIP_FLOW_MIN,
        data="agreement.jsonl (600 sentences, run at c759e46, committed 14a81fb, "
        "2026-11-26)",
        history=(
            Revision("5971f91", "2026-11-26", "the influence-weighted skip share is "
                     "at least 0.25", "not seen: the records were run later that day"),
            Revision("9ca8847", "2026-12-03", "the candidate-flow share is at least "
                     "0.25 (stricter: the weighted share is the larger)",
                     "seen: agreement.jsonl had been reported for a week"),
            RULE,
        ),
    ),
    2: Criterion(
        claim="pattern consistency across instances tracks accuracy",
        criterion="the Pearson and Spearman correlations of consistency with "
        "accuracy across task x form groups are both at least 0.3, and the one-sided "
        "permutation test of the Pearson correlation gives p < 0.05",
        statistic="Pearson and Spearman correlations",
        threshold=CORRELATION_MIN,
        data="agreement.jsonl (600 sentences, 24 task x form groups)",
        history=(
            Revision("5971f91", "2026-11-26", "both task x form correlations are at "
                     "least 0.3", "not seen: the records were run later that day"),
            Revision("9ca8847", "2026-12-03", "entropies normalised by each group's "
                     "own length, and the permutation test's p < 0.05 required "
                     "(stricter)", "seen: agreement.jsonl had been reported for a "
                     "week"),
            RULE,
        ),
    ),
    3: Criterion(
        claim="patterns retain more of the behaviour under ablation than reference "
        "routes",
        criterion="with the mean reference, keeping only the union of the guided "
        "routes retains more of the QoI than keeping the union of the routes of "
        "every reference route method; the zero reference is reported beside it",
        statistic="margin over the best reference route",
        threshold=MARGIN_MIN,
        data="routes100.jsonl (600 sentences, run 2026-12-03 03:59 to 08:29 at "
        "541f797 and 410980e)",
        history=(
            Revision("5971f91", "2026-11-26", "the guided union retains more than "
                     "every reference route's (mean reference)", "not seen: neither "
                     "routes.jsonl (180 sentences) nor routes100.jsonl existed"),
            Revision("9ca8847", "2026-12-03", "unchanged; the zero reference "
                     "reported beside it", "routes.jsonl (180 sentences, where it did "
                     "not hold) seen; routes100.jsonl not yet run. Its size (100 per "
                     "task) was chosen after the 180-sentence result, no stopping rule "
                     "was fixed, and pages were regenerated from it at 42, 65 and "
                     "169 sentences (188ac23, 735239f, f78484d)"),
            RULE,
        ),
    ),
}


def decide(low: Optional[float], high: Optional[float], threshold: float) -> str:
    """The decision of an interval ``[low, high]`` against ``threshold``: supported
    when ``low > threshold``, contradicted when ``high < threshold``, else (or
    without an interval) inconclusive."""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return INCONCLUSIVE
    if low > threshold:
        return SUPPORTED
    if high < threshold:
        return CONTRADICTED
    return INCONCLUSIVE


def _interval(entry: Optional[Dict[str, Any]]) -> Tuple[Optional[float], ...]:
    entry = entry or {}
    return entry.get("value"), entry.get("low"), entry.get("high")


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _p_value(value: Optional[float]) -> str:
    """A p-value to three decimals, or "< 0.001" where they would print 0."""
    return "< 0.001" if value is not None and value < 0.0005 else _fmt(value)


def _p_text(value: Optional[float]) -> str:
    text = _p_value(value)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _ci(entry: Optional[Dict[str, Any]], digits: int = 3) -> str:
    value, low, high = _interval(entry)
    if value is None:
        return "n/a"
    return f"{_fmt(value, digits)} [{_fmt(low, digits)}, {_fmt(high, digits)}]"


def _few(n: int, where: str = "") -> Optional[str]:
    if n < MIN_SENTENCES:
        return (f"too few: {n} sentences{where}, a verdict needs {MIN_SENTENCES} or "
                "more")
    return None


def _p(test: Optional[Dict[str, Any]]) -> Optional[float]:
    value = (test or {}).get("p")
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def claim3_decision(
    margin: Optional[Dict[str, Any]], paired: Optional[Dict[str, Any]]
) -> str:
    """Claim 3's decision: the margin's interval (:func:`decide`), kept only when
    the paired test agrees (p < :data:`P_MAX`, the median difference on the same
    side); else inconclusive."""
    _, low, high = _interval(margin)
    decision = decide(low, high, MARGIN_MIN)
    p_value = _p((paired or {}).get("wilcoxon"))
    median = (paired or {}).get("median_difference")
    if decision == INCONCLUSIVE or p_value is None or p_value >= P_MAX or median is None:
        return INCONCLUSIVE
    agrees = (median > 0) == (decision == SUPPORTED)
    return decision if agrees else INCONCLUSIVE


def _claim1(summary: Summary) -> Dict[str, Any]:
    overall = summary.overall
    skip = summary.intervals["skip_share"]
    _, low, high = _interval(skip.get("flow"))
    return {
        "statistic": skip.get("flow"),
        "n": overall["n"],
        "too_few": _few(overall["n"]),
        "decision": decide(low, high, SKIP_FLOW_MIN),
        "why": f"candidate-flow share {_ci(skip.get('flow'))}; share of layers "
               f"{_ci(skip.get('layers'))} against a ceiling of "
               f"{_fmt(overall['skip_share'].get('ceiling'))} (a route that ends "
               "away from its source crosses at least one layer by a head), i.e. "
               f"{_ci(skip.get('of_ceiling'))} of the ceiling; influence-weighted "
               f"share {_ci(skip.get('weighted'))}",
    }


def _claim2(summary: Summary) -> Dict[str, Any]:
    corr = correlations(summary)["task_form"]
    boot = summary.intervals.get("correlation") or {}
    p_value = corr.permutation.pearson_p
    smallest = corr.smallest_group
    decisions = [decide(*_interval(boot.get(k))[1:], CORRELATION_MIN)
                 for k in ("pearson", "spearman")]
    if CONTRADICTED in decisions:
        decision = CONTRADICTED
    elif decisions == [SUPPORTED] * 2 and p_value is not None and p_value < P_MAX:
        decision = SUPPORTED
    else:
        decision = INCONCLUSIVE
    return {
        "statistic": boot.get("pearson"),
        "n": corr.n,
        "too_few": _few(smallest, " in the smallest task x form group")
        or (None if corr.n >= 3 else f"too few: {corr.n} groups"),
        "decision": decision,
        "why": f"across {corr.n} task x form groups (at least {smallest} "
               f"sentences each): Pearson {_ci(boot.get('pearson'))}, Spearman "
               f"{_ci(boot.get('spearman'))} (groups, then their sentences, "
               f"resampled; these intervals run low), permutation {_p_text(p_value)} "
               f"(Pearson)",
    }


def _claim3(summary: Summary) -> Dict[str, Any]:
    margin = (summary.intervals.get("ablation") or {}).get("margin")
    test = summary.ablation_test
    mean = test.get("mean") or {}
    zero = test.get("zero") or {}
    paired = mean.get("paired") or {}
    looks = test.get("looks") or []
    adjusted = test.get("adjusted") or {}
    if margin is None or not paired.get("n"):
        return {"statistic": None, "n": 0, "too_few": "not measured: no ablation",
                "decision": INCONCLUSIVE, "why": "not measured"}
    wilcoxon = paired.get("wilcoxon") or {}
    close = zero.get("closeness") or {}
    return {
        "statistic": margin,
        "n": summary.overall["n"],
        "too_few": _few(summary.overall["n"]),
        "decision": claim3_decision(margin, paired),
        "best_route": paired.get("route"),
        "why": f"keep-only union, mean reference: margin over the best reference "
               f"route ({paired.get('route')}) {_ci(margin)}; guided keeps more in "
               f"{_fmt(paired.get('wins'))} of {paired['n']} sentences, Wilcoxon "
               f"signed-rank {_p_text(wilcoxon.get('p'))}; "
               + (f"over {len(looks)} sequential looks the margin's interval at "
                  f"the {_fmt(adjusted.get('level'), 3)} level (Bonferroni) is "
                  f"{_ci(adjusted.get('margin'))}; " if adjusted else "")
               + ("one look, at the sample size fixed in advance; "
                  if test.get("one_look") else "")
               + f"zero reference, closeness margin {_ci(close.get('margin'))} "
               f"(best route {zero.get('closeness_route')})",
    }


def claims(
    summary: Summary, borrowed: Optional[Dict[int, Dict[str, Any]]] = None
) -> List[Dict[str, Any]]:
    """The verdict object: one entry per claim of docs/method.md, section 9.

    Args:
        summary (Summary): A report's summary (:class:`~.records.Summary`) with
            its ``intervals``, ``correlation`` and ``ablation_test``.
        borrowed (dict, optional): Claim number -> an entry of another summary's
            verdict object, used as this page's (e.g. claim 3 from the run that
            ablated). Default: None

    Returns:
        list of dict: per claim, ``number``, ``claim``, ``criterion``,
        ``statistic`` (the decided statistic's interval), ``threshold``, ``data``
        (the records that decide it on the MiniLM pages), ``n``,
        ``decision`` (:func:`decide`'s, on the interval), ``too_few`` (why no
        verdict, or None), ``verdict`` (the decision, or ``"no verdict"``),
        ``why`` (the numbers in words), ``history`` (the criterion's revisions)
        and ``source`` (None, or where a borrowed entry comes from); claim 3 adds
        ``best_route``.
    """
    out = []
    for number, compute in ((1, _claim1), (2, _claim2), (3, _claim3)):
        if borrowed and number in borrowed:
            out.append(dict(borrowed[number]))
            continue
        spec = CRITERIA[number]
        entry = {
            "number": number,
            "claim": f"({number}) {spec.claim}",
            "criterion": spec.criterion,
            "threshold": spec.threshold,
            "data": spec.data,
            "source": None,
            "history": [asdict(r) for r in spec.history],
            **compute(summary),
        }
        entry["verdict"] = NO_VERDICT if entry["too_few"] else entry["decision"]
        out.append(entry)
    return out


def borrow(entry: Dict[str, Any], name: str) -> Dict[str, Any]:
    """A verdict entry of another summary, marked with where it comes from."""
    return {**entry, "source": name}


def looks_rows(summary: Summary) -> List[List[str]]:
    """Claim 3's sequential looks as table rows: sentences, margin with interval,
    best reference route, share where guided keeps more, Wilcoxon p, decision."""
    rows = []
    for look in summary.ablation_test.get("looks") or []:
        paired = look.get("paired") or {}
        rows.append([
            str(look["n"]), _ci(look.get("margin")), str(paired.get("route")),
            _fmt(paired.get("wins")), _p_value((paired.get("wilcoxon") or {}).get("p")),
            claim3_decision(look.get("margin"), paired),
        ])
    return rows


def history_rows(entries: Sequence[Dict[str, Any]]) -> List[List[str]]:
    """Every criterion's revisions as table rows: claim, commit, date, the
    criterion then, and whether the records it decides had been seen."""
    return [
        [str(entry["number"]), revision["commit"], revision["date"],
         revision["criterion"], revision["seen"]]
        for entry in entries
        for revision in entry.get("history") or []
    ]
