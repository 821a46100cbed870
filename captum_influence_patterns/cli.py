"""Command line: ``captum-influence-patterns explain TEXT ...``, ``demo``, ``evaluate``
and ``report``.

Both commands check every argument (model, text, words or classes, output directory)
before the attribution starts, so a bad argument ends with exit code 2, one line on
stderr and no output files. Results are written atomically: ``STEM.json`` (the result
with the text, model and QoI), ``STEM.png`` (the pattern graph with a token panel) and
``STEM.html`` (a token heat map with the routes). See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .experiments import evaluation
from .experiments.ablation import REFERENCES
from .experiments.agreement_tasks import TASKS
from .experiments.evaluation import (
    EvaluationSettings,
    evaluate,
    jsonl_items,
    merge_shards,
    task_items,
)
from .experiments.report import write_report
from .model_graph import UnsupportedModelError
from .models.loading import (
    BASELINES,
    Explanation,
    ExplanationError,
    LoadedModel,
    ModelLoadingError,
    explain,
    load_model,
    prepare_explanation,
)
from .files import write_bytes_atomic, write_json_atomic, write_text_atomic
from .results import InfluencePatternsResult
from .routes.compare import DEFAULT_METHODS
from .viz.plots import clean_token, pattern_html

PROG = "captum-influence-patterns"
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_OUT = "influence-patterns-out"
DEFAULT_DEMO_OUT = "demo-out"
DEFAULT_STEPS = 50
#: ``format`` field of the JSON files.
JSON_FORMAT = "captum-influence-patterns/pattern-v1"

_EXTENSIONS = ("json", "png", "html")
_USER_ERRORS = (ModelLoadingError, ExplanationError, UnsupportedModelError)


@dataclasses.dataclass(frozen=True)
class DemoCase:
    """One sentence of the demo (docs/method.md, section 12)."""

    text: str
    target: str
    contrast: str
    subject: str
    stem: str


#: The paper's pair: plural and singular subject across an object relative clause.
DEMO_CASES: Tuple[DemoCase, ...] = (
    DemoCase(
        "the farmers that the assistant loves [MASK] old .", "are", "is", "farmers",
        "plural-subject",
    ),
    DemoCase(
        "the farmer that the assistants love [MASK] old .", "is", "are", "farmer",
        "singular-subject",
    ),
)


class CliError(Exception):
    """A bad argument: reported as one line on stderr with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`CliError` instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(f"{message} (see {self.prog} --help)")


# ------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of :func:`main` (subcommands ``explain`` and ``demo``)."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--model", default=None, metavar="NAME_OR_PATH",
        help="a save_pretrained directory or a cached hub name (never downloaded); "
        "default: the embedded all-MiniLM-L6-v2 with its linear readout",
    )
    common.add_argument(
        "--baseline", choices=BASELINES, default="mask",
        help="baseline token at every position: mask, pad, or a zero embedding "
        "(default: mask, as in the paper)",
    )
    common.add_argument(
        "--steps", type=_positive_int, default=DEFAULT_STEPS, metavar="N",
        help=f"interpolation points (default: {DEFAULT_STEPS})",
    )
    common.add_argument(
        "--internal-batch-size", type=_positive_int, default=None, metavar="ROWS",
        help="most rows (source x step pairs) per pass, to bound memory on long "
        "texts (internal_batch_size; default: all sources at once)",
    )
    common.add_argument(
        "--dtype", choices=("float32", "float64"), default=None,
        help="cast the weights to this dtype (default: as saved)",
    )
    common.add_argument(
        "--quiet", "-q", action="store_true",
        help="no progress bars or status lines on stderr",
    )
    parser = _Parser(
        prog=PROG,
        description="Influence patterns (Lu et al., NeurIPS 2021): the route along "
        "which each token's influence reaches a transformer's output.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    explain_parser = commands.add_parser(
        "explain", parents=[common], help="explain one text",
        description="Find the influence pattern of every token of TEXT.",
    )
    explain_parser.add_argument(
        "text", metavar="TEXT",
        help="the text; for a masked LM or the embedded model it holds one mask "
        "token ([MASK], or <mask> for RoBERTa)",
    )
    explain_parser.add_argument(
        "--target", metavar="WORD", help="masked LM: the word the QoI favours"
    )
    explain_parser.add_argument(
        "--contrast", metavar="WORD", help="masked LM: the word it is compared with"
    )
    explain_parser.add_argument(
        "--class", dest="target_class", metavar="K",
        help="classifier: the class the QoI favours (index or label)",
    )
    explain_parser.add_argument(
        "--contrast-class", dest="contrast_class", metavar="K2",
        help="classifier: the class it is compared with (default for two classes: "
        "the other one)",
    )
    explain_parser.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR",
        help=f"output directory for pattern.json/png/html (default: {DEFAULT_OUT})",
    )
    explain_parser.set_defaults(run=_run_explain)
    demo_parser = commands.add_parser(
        "demo", parents=[common], help="the paper's farmers/farmer example",
        description="Explain the paper's pair 'the farmers that the assistant loves "
        "[MASK] old .' (are vs is) and 'the farmer that the assistants love [MASK] "
        "old .' (is vs are), and print the subject's routes.",
    )
    demo_parser.add_argument(
        "--out", default=DEFAULT_DEMO_OUT, metavar="DIR",
        help=f"output directory (default: {DEFAULT_DEMO_OUT})",
    )
    demo_parser.set_defaults(run=_run_demo)
    _register_evaluation_commands(commands)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


# -------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        int: 0 on success, 2 for a bad argument (one line on stderr, no files
        written), 130 when interrupted.
    """
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # --help
            return int(exit_.code or 0)
        with _library_output(getattr(args, "quiet", False)):
            return args.run(args)
    except CliError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run_explain(args: argparse.Namespace) -> int:
    loaded = _load(args)
    explanation = _prepare(
        loaded, args, args.text, args.target, args.contrast, args.target_class,
        args.contrast_class,
    )
    out = _output_dir(args.out)
    result = _attribute(loaded, explanation, args)
    _print_report(result, explanation)
    _print_files(_write_outputs(out, "pattern", result, explanation))
    return EXIT_OK


def _run_demo(args: argparse.Namespace) -> int:
    loaded = _load(args)
    mask = loaded.tokenizer.mask_token or "[MASK]"
    cases = [
        (case, _prepare(
            loaded, args, case.text.replace("[MASK]", mask), case.target,
            case.contrast, None, None,
        ))
        for case in DEMO_CASES
    ]
    out = _output_dir(args.out)
    files: List[str] = []
    summaries: List[str] = []
    for case, explanation in cases:
        result = _attribute(loaded, explanation, args)
        _print_report(result, explanation)
        summaries.append(_subject_summary(result, case))
        print(summaries[-1] + "\n")
        files += _write_outputs(out, case.stem, result, explanation)
    print("subject routes:")
    for line in summaries:
        print("  " + line)
    _print_files(files)
    return EXIT_OK


# ----------------------------------------------------------------- the steps
def _status(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _load(args: argparse.Namespace) -> LoadedModel:
    _status(args, f"loading model {args.model or 'embedded'} ...")
    try:
        return load_model(args.model, dtype=args.dtype)
    except _USER_ERRORS as error:
        raise CliError(str(error)) from error


def _prepare(
    loaded: LoadedModel,
    args: argparse.Namespace,
    text: str,
    target: Optional[str],
    contrast: Optional[str],
    target_class: Optional[str],
    contrast_class: Optional[str],
) -> Explanation:
    try:
        return prepare_explanation(
            loaded, text, target=target, contrast=contrast, target_class=target_class,
            contrast_class=contrast_class, baseline=args.baseline,
        )
    except _USER_ERRORS as error:
        raise CliError(str(error)) from error


def _output_dir(path: str) -> str:
    """Create ``path`` if needed and check that a file can be written in it."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise CliError(f"output directory {path!r} is not writable: {reason}")
    return path


def _attribute(
    loaded: LoadedModel, explanation: Explanation, args: argparse.Namespace
) -> InfluencePatternsResult:
    _status(args, f"explaining {explanation.text!r} ({args.steps} steps) ...")
    start = time.perf_counter()
    result = explain(
        loaded,
        explanation,
        n_steps=args.steps,
        show_progress=not args.quiet,
        internal_batch_size=args.internal_batch_size,
    )
    seconds = time.perf_counter() - start
    result.metadata["qoi_value"] = explanation.qoi_value()
    result.metadata["seconds"] = round(seconds, 3)
    _status(args, f"done in {seconds:.1f} s")
    return result


@contextmanager
def _library_output(quiet: bool) -> Iterator[None]:
    """Silence transformers' progress bars and warnings while ``quiet``."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------- reporting
def _display_result(result: InfluencePatternsResult) -> InfluencePatternsResult:
    """A shallow copy whose tokens are cleaned for display (``##ing`` -> ``ing``)."""
    tokens = [[clean_token(t) for t in row] for row in result.tokens or []]
    return dataclasses.replace(result, tokens=tokens or None)


def _print_report(result: InfluencePatternsResult, explanation: Explanation) -> None:
    delta = result.convergence_delta
    print(f"text: {explanation.text}")
    print(f"QoI:  {explanation.qoi}")
    print(
        f"QoI at the input: {result.metadata['qoi_value']:.4f}"
        + ("" if delta is None else f"; completeness error: {float(delta[0]):.2e}")
    )
    print(_display_result(result).table())


def _subject_summary(result: InfluencePatternsResult, case: DemoCase) -> str:
    labels = [clean_token(t).lower() for t in result.token_labels()]
    if case.subject not in labels:
        return f"subject {case.subject!r}: not a single token for this tokenizer"
    pattern = result.pattern(0, labels.index(case.subject))
    return (
        f"subject {case.subject!r} (position {pattern.source}, QoI "
        f"logit({case.target}) - logit({case.contrast})): "
        f"g = {pattern.token_influence:.4f}, "
        f"I(pi^e)/g = {pattern.embedding_sufficiency:.3f}, "
        f"I(pi^a)/g = {pattern.sufficiency:.3f}; positions {pattern.positions}; "
        f"route: {pattern.route_description() or '-'}"
    )


def _print_files(files: Sequence[str]) -> None:
    print("wrote: " + ", ".join(files))


# ----------------------------------------------------------------------- output
def result_document(
    result: InfluencePatternsResult, explanation: Explanation
) -> Dict[str, Any]:
    """The JSON document of one explained text.

    Args:
        result: The attribution result (``explain`` fills its metadata).
        explanation: The explanation it came from.

    Returns:
        ``result.to_dict()`` (loadable with ``InfluencePatternsResult.from_dict``)
        plus ``format``, ``text``, ``model``, ``model_kind``, ``qoi``, ``qoi_value``,
        ``target``, ``contrast`` and ``baseline`` at the top level.
    """
    meta = result.metadata
    header = {"format": JSON_FORMAT, **explanation.describe()}
    for key in ("model", "model_kind", "qoi_value"):
        header[key] = meta.get(key)
    return {**header, **result.to_dict()}


def _render_png(result: InfluencePatternsResult, explanation: Explanation) -> bytes:
    title = (
        f"{textwrap.shorten(explanation.text, 90)}\n"
        f"QoI: logit({explanation.target}) - logit({explanation.contrast})"
    )
    fig, _ = _display_result(result).plot(
        use_pyplot=False, show_token_panel=True, title=title
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def _write_outputs(
    directory: str, stem: str, result: InfluencePatternsResult,
    explanation: Explanation,
) -> List[str]:
    """Render everything in memory, then write STEM.json/png/html atomically."""
    png = _render_png(result, explanation)
    page = pattern_html(
        result, title=f"{explanation.text} ({explanation.qoi})", full_document=True
    )
    paths = [os.path.join(directory, f"{stem}.{ext}") for ext in _EXTENSIONS]
    write_json_atomic(paths[0], result_document(result, explanation))
    write_bytes_atomic(paths[1], lambda handle: handle.write(png))
    write_text_atomic(paths[2], page)
    return paths


# ------------------------------------------------------------------- evaluate, report
def _register_evaluation_commands(subparsers: Any) -> None:
    """Add the ``evaluate`` and ``report`` subcommands to an argparse subparsers object.

    Each subcommand sets ``func`` and ``run`` (both the handler; ``args.run(args)``
    returns an exit code), so it plugs into :mod:`.cli`, which dispatches on ``run``.
    """
    parser = subparsers.add_parser(
        "evaluate",
        help="run the pattern search over task sentences or a JSONL file",
        description=evaluation.__doc__.split("\n\n")[1],
    )
    data = parser.add_argument_group("data")
    data.add_argument("--tasks", default=None,
                      help="comma-separated task names, or 'all' (default: all "
                      "unless --input is given)")
    data.add_argument("--n-per-task", type=int, default=24,
                      help="sentences per task (balanced across forms)")
    data.add_argument("--seed", type=int, default=0, help="generation seed")
    data.add_argument("--input", default=None,
                      help="JSONL file of {text, target, contrast[, id, task, form, "
                      "roles]} objects instead of tasks")
    parser.add_argument("--output", "-o", required=True, help="results JSONL file")
    parser.add_argument("--model", default="embedded",
                        help="'embedded' or a local/cached Hugging Face model")
    parser.add_argument("--dtype", default=None, help="e.g. float64")
    parser.add_argument("--n-steps", type=int, default=20)
    parser.add_argument("--method", default="gausslegendre")
    parser.add_argument("--sources", default="roles",
                        help="'roles' (subject, attractor, verbs), 'all', or "
                        "comma-separated role names")
    parser.add_argument("--baseline", default="mask", choices=("mask", "pad", "zero"),
                        help="baseline input of the interpolation")
    parser.add_argument("--baselines", default="none",
                        help="baseline routes: 'none', 'default' "
                        f"({','.join(DEFAULT_METHODS)}) or comma-separated names")
    parser.add_argument("--ablation", action="store_true",
                        help="ablate guided and baseline routes")
    parser.add_argument("--ablation-reference", nargs="+", default=["mean"],
                        choices=REFERENCES)
    parser.add_argument("--ablation-level", default="attention",
                        choices=("attention", "embedding"))
    parser.add_argument("--internal-batch-size", type=int, default=None)
    parser.add_argument("--shard", default=None,
                        help="i/n: evaluate shard i of n into a part file")
    parser.add_argument("--merge", type=int, default=None, metavar="N",
                        help="only merge the part files of N shards into --output")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=evaluate_command, run=evaluate_command)
    _register_report_command(subparsers)


def _baseline_names(value: str) -> Tuple[str, ...]:
    if value == "none":
        return ()
    if value == "default":
        return tuple(DEFAULT_METHODS)
    return tuple(name.strip() for name in value.split(",") if name.strip())


def _parse_shard(value: Optional[str]) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    try:
        index, count = (int(part) for part in value.split("/"))
    except ValueError as error:
        raise ValueError(f"--shard: expected i/n, got {value!r}") from error
    return index, count


def evaluate_command(args: argparse.Namespace) -> int:
    """Handler of ``evaluate``: returns an exit code."""
    if args.merge is not None:
        records = merge_shards(args.output, args.merge)
        print(f"merged {len(records)} records into {args.output}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, dtype=args.dtype)
    if args.input is not None and args.tasks is None:
        items = jsonl_items(args.input)
        dataset: Dict[str, Any] = {"input": os.path.abspath(args.input)}
    else:
        tasks = list(TASKS) if args.tasks in (None, "all") else args.tasks.split(",")
        items = task_items(tasks, args.n_per_task, loaded.tokenizer, seed=args.seed)
        dataset = {"tasks": tasks, "n": args.n_per_task, "seed": args.seed}
    settings = EvaluationSettings(
        n_steps=args.n_steps,
        method=args.method,
        sources=args.sources,
        baseline=args.baseline,
        baselines=_baseline_names(args.baselines),
        ablation=args.ablation,
        references=tuple(args.ablation_reference),
        ablation_level=args.ablation_level,
        internal_batch_size=args.internal_batch_size,
    )
    written = evaluate(
        loaded,
        items,
        args.output,
        settings,
        shard=_parse_shard(args.shard),
        show_progress=not args.no_progress,
        dataset=dataset,
    )
    print(f"results: {written}")
    return 0


def _register_report_command(subparsers: Any) -> None:
    """Add the ``report`` subcommand (``func`` = :func:`report_command`)."""
    parser = subparsers.add_parser(
        "report", help="markdown tables and plots from saved evaluation results"
    )
    parser.add_argument("results", nargs="+", help="results JSONL files")
    parser.add_argument("--output", "-o", default="docs/results.md")
    parser.add_argument("--static", default="docs/_static/results",
                        help="folder of the PNG plots")
    parser.add_argument("--notes", default=None, help="markdown discussion to append")
    parser.add_argument("--title", default="Evaluation results")
    parser.add_argument("--summary", default=None, help="also write metrics JSON")
    parser.set_defaults(func=report_command, run=report_command)


def report_command(args: argparse.Namespace) -> int:
    """Handler of ``report``: returns an exit code."""
    write_report(
        args.results, args.output, args.static, args.notes, args.title, args.summary
    )
    print(f"report: {args.output}")
    return 0
