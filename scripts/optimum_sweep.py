"""How the best route found moves with the beam's width, and the true optimum where
it is affordable: the optimality test's "optimum" at beam widths 8, 32 and 128 for
every source of the first N sentences of a run (tasks interleaved: the first six
are one per task), and every route enumerated (the exhaustive optimum, ``T^(L-1)``
position routes at the embedding level, 100,000 to 161,051 here) for one role's source
of the first K sentences.

    python scripts/optimum_sweep.py RECORDS.jsonl[.gz] OUT.jsonl [--sentences 6]
        [--widths 8 32 128] [--exhaustive-role subject] [--exhaustive-sentences 3]

Everything at the embedding level, with the run's protocol (50 Gauss-Legendre steps,
the [MASK] baseline). The guided routes are searched again and must give the recorded
influences (``sweep_check``: the largest relative difference). Resumable: one line per
sentence, written when it is done; OUT.meta.json holds the settings (the input named
as it lies in the results folder, beside these records).
"""

from __future__ import annotations

import os
import sys
import time

from captum_influence_patterns.attribution import InfluencePatterns
from captum_influence_patterns.graph import analysis_mode
from captum_influence_patterns.models.explanation import explain, prepare_explanation
from captum_influence_patterns.models.loading import load_model
from captum_influence_patterns.routes.optimality import optimality_test

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the sibling script
from skip_null import (  # noqa: E402
    KEPT,
    append_line,
    chosen_records,
    open_run,
    records_parser,
    run_meta,
)

#: Enumerate every route of a source up to this many (the exhaustive optimum).
EXHAUSTIVE_LIMIT = 10**6


def best_routes(ip, request, result, width=None):
    """Per source of ``result``: the optimum opponent's influence and positions, by
    the beam at ``width`` or (None) by enumerating every route."""
    found = optimality_test(
        ip, request, result, n_random=1, opponents=("optimum",),
        beam_width=width or 8, exhaustive_limit=1 if width else EXHAUSTIVE_LIMIT,
    )
    return [
        {"source": row.source, "guided": row.guided, "sign": row.sign,
         **{k: v for k, v in row.opponents["optimum"].to_dict().items()
            if k in ("influence", "positions", "search", "width", "routes")}}
        for row in found
    ]


def sweep_record(loaded, record, widths, exhaustive_source):
    explanation = prepare_explanation(
        loaded, record["text"], record["correct"], record["wrong"], baseline="mask"
    )
    ip = InfluencePatterns(explanation.forward_func, loaded.model)
    request = explanation.request(ip, n_steps=50, method="gausslegendre")
    out = {key: record[key] for key in KEPT if key in record}
    out["optimum_sweep"] = {}
    with analysis_mode(loaded.model):
        result = explain(loaded, explanation, attribution=ip, request=request,
                         sources=[p["source"] for p in record["patterns"]])
        recorded = [p["embedding_influence"] for p in record["patterns"]]
        again = [p.embedding_influence for p in result.patterns[0]]
        out["sweep_check"] = max(abs(a - b) / max(abs(a), 1e-12)
                                 for a, b in zip(recorded, again))
        for width in widths:
            start = time.time()
            out["optimum_sweep"][f"beam{width}"] = best_routes(ip, request, result,
                                                               width)
            print(f"  width {width}: {time.time() - start:.1f} s", file=sys.stderr)
        if exhaustive_source is not None:
            one = explain(loaded, explanation, attribution=ip, request=request,
                          sources=[exhaustive_source])
            start = time.time()
            out["optimum_sweep"]["exhaustive"] = best_routes(ip, request, one)
            print(f"  exhaustive: {time.time() - start:.1f} s", file=sys.stderr)
    return out


def main(argv=None):
    parser = records_parser(__doc__.splitlines()[0], sentences=6)
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--exhaustive-role", default="subject")
    parser.add_argument("--exhaustive-sentences", type=int, default=3)
    args = parser.parse_args(argv)
    records = chosen_records(args)
    done = open_run(args, run_meta(args.records), records, {
        "n_steps": 50, "method": "gausslegendre", "sources": "all", "baseline": "mask",
        "level": "embedding", "widths": args.widths,
        "exhaustive_role": args.exhaustive_role,
        "exhaustive_sentences": args.exhaustive_sentences,
    })
    loaded = None
    for number, record in enumerate(records):
        if record["id"] in done:
            continue
        loaded = loaded or load_model("embedded")
        exhaustive = (record.get("roles") or {}).get(args.exhaustive_role)
        if number >= args.exhaustive_sentences:
            exhaustive = None
        start = time.time()
        print(record["id"], file=sys.stderr)
        line = sweep_record(loaded, record, args.widths, exhaustive)
        append_line(args.output, line, start, "sweep_check")


if __name__ == "__main__":
    main()
