"""``report``: the markdown page (and summary, figures, discussion) of saved evaluation
results, or the interactive page of their routes (``--patterns``)."""

from __future__ import annotations

import argparse
import os
from typing import Any, List

from ..paper.records import load_results
from ..paper.notes import check_notes, read_notes
from ..paper.report import patterns_page, write_report
from ..utils.files import write_text_atomic
from .common import EXIT_OK, add_output, CliError, output_dir, readable_file


#: Interpolation points of every subcommand unless ``--n-steps`` says otherwise.
#: Folder, beside the first results file, of ``report``'s page when no ``--output``.
DEFAULT_REPORT_FOLDER = "report"


def add_report(commands: Any, parents: List[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "report",
        parents=parents,
        help="markdown tables and plots from saved evaluation results",
        description="Write a markdown page with tables and PNG plots from results "
        "files of 'evaluate'.",
    )
    parser.add_argument(
        "results", nargs="+", metavar="RESULTS", help="results JSONL files"
    )
    add_output(
        parser,
        "markdown file (default: "
        f"{DEFAULT_REPORT_FOLDER}/results.md beside the first results file)",
        metavar="MARKDOWN",
    )
    parser.add_argument(
        "--static",
        default=None,
        metavar="DIR",
        help="folder of the PNG plots (default: _static/results "
        "beside the markdown file)",
    )
    parser.add_argument("--notes", default=None, help="markdown discussion to append")
    parser.add_argument(
        "--notes-summary",
        action="append",
        default=[],
        metavar="NAME=SUMMARY.json",
        help="another report's summary, for the discussion's {{NAME:path|format}} "
        "numbers (repeatable)",
    )
    parser.add_argument(
        "--claims-from",
        action="append",
        default=[],
        metavar="CLAIM=NAME",
        help="show the verdict on claim CLAIM (1-3) of the --notes-summary NAME "
        "(e.g. 3=routes when another run holds the ablation; repeatable)",
    )
    parser.add_argument(
        "--title",
        default="Evaluation results",
        help="the page title (default: %(default)s)",
    )
    parser.add_argument(
        "--exclude-unconverged",
        action="store_true",
        help="leave the records whose integral did not converge out of every metric "
        "and verdict (default: count them, flagged)",
    )
    parser.add_argument(
        "--one-look",
        action="store_true",
        help="the records come from a run whose sample size and stopping rule were "
        "fixed in advance, looked at once: no sequential looks of claim 3 and no "
        "interval adjusted for them (default: a look every 60 sentences)",
    )
    parser.add_argument("--summary", default=None, help="also write metrics JSON")
    parser.add_argument(
        "--patterns",
        default=None,
        metavar="HTML",
        help="also write the interactive page of the routes, per task x form group",
    )
    parser.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    for path in args.results:
        readable_file(path, "results file")
    if args.notes is not None:
        readable_file(args.notes, "--notes")
    notes_summaries = {}
    for item in args.notes_summary:
        name, sep, path = item.partition("=")
        if not sep or not name.isidentifier():
            raise CliError(f"--notes-summary {item!r}: give NAME=SUMMARY.json")
        readable_file(path, "--notes-summary")
        notes_summaries[name] = path
    claims_from = {}
    for item in args.claims_from:
        claim, sep, name = item.partition("=")
        if not sep or claim not in ("1", "2", "3") or name not in notes_summaries:
            raise CliError(f"--claims-from {item!r}: give CLAIM=NAME, a claim 1 to 3 "
                           "and the NAME of a --notes-summary")
        claims_from[int(claim)] = name
    if args.notes is not None:
        check_notes(read_notes(args.notes), list(notes_summaries))
    if not load_results(args.results):
        raise CliError(f"no results in {', '.join(args.results)}")
    output = args.output or os.path.join(
        os.path.dirname(os.path.abspath(args.results[0])),
        DEFAULT_REPORT_FOLDER,
        "results.md",
    )
    static = args.static or os.path.join(os.path.dirname(output), "_static", "results")
    files = {
        "--output": output, "--summary": args.summary, "--patterns": args.patterns
    }
    for option, path in files.items():
        if path is not None and os.path.isdir(path):
            raise CliError(f"{option} {path!r} is a directory; give a file name")
    if os.path.isfile(static):
        raise CliError(f"--static {static!r} is a file; give a folder")
    for path in files.values():
        if path is not None:
            output_dir(os.path.dirname(os.path.abspath(path)))
    output_dir(static)
    write_report(args.results, output, static, args.notes, args.title, args.summary,
                 notes_summaries=notes_summaries, claims_from=claims_from,
                 exclude_unconverged=args.exclude_unconverged,
                 one_look=args.one_look)
    print(f"report: {output}")
    if args.patterns is not None:
        page = patterns_page(load_results(args.results), title=args.title)
        write_text_atomic(args.patterns, page)
        print(f"patterns: {args.patterns}")
    return EXIT_OK
