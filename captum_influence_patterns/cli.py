"""Command line: ``captum-influence-patterns {explain,demo,evaluate,report} ...``.

Every subcommand is registered here, on one shared parent parser (``--quiet``) and,
for those that run a model, one parent of model options (``--model``, ``--dtype``,
``--n-steps``, ``--method``, ``--internal-batch-size``, ``--baseline``), so option
names and defaults are the same everywhere. ``python -m captum_influence_patterns`` is
the only other entry point.

Every argument (model, text, words or classes, tasks, input items, output paths) is
checked before the work starts, so a bad argument ends with exit code 2, one line on
stderr and no output files: :data:`USER_ERRORS` is the one list of exceptions that
mean a bad argument. ``explain``/``demo`` write ``STEM.json`` (the result with the
text, model and QoI; written first), ``STEM.png`` (the pattern graph with a token
panel) and ``STEM.html`` (the interactive route viewer, drawn from the JSON), each
atomically. See
``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
import textwrap
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from . import __version__
from .convergence import DEFAULT_MAX_STEPS, DEFAULT_TOLERANCE, Convergence
from .paper.ablation import REFERENCES
from .paper.agreement_tasks import TASKS
from .paper.evaluation import evaluate
from .paper.datasets import (
    FORMATS,
    EvaluationError,
    detect_format,
    read_items,
    task_items,
)
from .paper.lm_prefixes import lm_prefix_items, to_prefix
from .paper.records import load_results
from .paper.report import check_notes, patterns_page, read_notes, write_report
from .paper.run_files import check_output_path, merge_shards
from .paper.settings import ABLATION_LEVELS, EvaluationSettings, estimate
from .files import (
    folder_problem,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from .integration import (
    DEFAULT_METHOD,
    DEFAULT_N_STEPS,
    MAX_STEPS,
    METHODS,
    check_rule,
    min_steps,
)
from .model_graph import UnsupportedModelError
from .models.explanation import BASELINES, explain, prepare_explanation
from .models.loading import LoadedModel, ModelLoadingError, load_model, model_kind
from .models.qoi_kinds import QOI_KINDS, Explanation, ExplanationError
from .results import InfluencePatternsResult
from .routes.compare import DEFAULT_METHODS, ROUTES
from .routes.finders import ORIENTATIONS
from .threads import fastest_threads
from .viz.interactive import viewer_html
from .viz.tokens import clean_token, display_text

PROG = "captum-influence-patterns"
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_OUT = "influence-patterns-out"
DEFAULT_DEMO_OUT = "demo-out"
#: Interpolation points of every subcommand unless ``--n-steps`` says otherwise.
#: Folder, beside the first results file, of ``report``'s page when no ``--output``.
DEFAULT_REPORT_FOLDER = "report"
#: ``format`` field of the JSON files.
JSON_FORMAT = "captum-influence-patterns/pattern-v1"

_EXTENSIONS = ("json", "png", "html")
#: Mask tokens of the supported masked LMs (BERT's family, RoBERTa's).
MASK_TOKENS = ("[MASK]", "<mask>")


class CliError(Exception):
    """A bad argument: reported as one line on stderr with exit code 2."""


#: Exceptions that mean a bad argument or input: exit code 2 and one line on stderr.
USER_ERRORS: Tuple[type, ...] = (
    CliError,
    ModelLoadingError,
    ExplanationError,
    UnsupportedModelError,
    EvaluationError,
)


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
        "the farmers that the assistant loves [MASK] old .",
        "are",
        "is",
        "farmers",
        "plural-subject",
    ),
    DemoCase(
        "the farmer that the assistants love [MASK] old .",
        "is",
        "are",
        "farmer",
        "singular-subject",
    ),
)


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`CliError` instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(f"{message} (see {self.prog} --help)")


# ------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of :func:`main`: ``explain``, ``demo``, ``evaluate`` and
    ``report``, with the shared options of :func:`_shared_parsers`."""
    shared, model_options = _shared_parsers()
    parser = _Parser(
        prog=PROG,
        description="Influence patterns (Lu et al., NeurIPS 2021): the route along "
        "which each token's influence reaches a transformer's output.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_explain(commands, [shared, model_options])
    _add_demo(commands, [shared, model_options])
    _add_evaluate(commands, [shared, model_options])
    _add_report(commands, [shared])
    return parser


def _shared_parsers() -> Tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """(options of every subcommand, options of the subcommands that run a model)."""
    shared = _Parser(add_help=False)
    shared.add_argument(
        "--quiet",
        "-q",
        "--no-progress",
        dest="quiet",
        action="store_true",
        help="no progress bars or status lines on stderr (--no-progress: old name)",
    )
    model = _Parser(add_help=False)
    model.add_argument(
        "--model",
        default=None,
        metavar="NAME_OR_PATH",
        help="a save_pretrained directory or a cached hub name (never downloaded); "
        "default: the embedded all-MiniLM-L6-v2 with its linear readout",
    )
    model.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default=None,
        help="cast the weights to this dtype (default: as saved)",
    )
    model.add_argument(
        "--device",
        type=_device,
        default="cpu",
        help="run the model on this torch device, e.g. cuda (default: cpu); "
        "reference routes and ablation run on the CPU only",
    )
    model.add_argument(
        "--n-steps",
        "--steps",
        dest="n_steps",
        type=_positive_int,
        default=DEFAULT_N_STEPS,
        metavar="N",
        help=f"interpolation points (default: {DEFAULT_N_STEPS}; --steps: old name)",
    )
    model.add_argument(
        "--tolerance",
        type=_fraction,
        default=DEFAULT_TOLERANCE,
        metavar="FRACTION",
        help="largest accepted |convergence delta| / |QoI(x) - QoI(baseline)|; above "
        f"it --n-steps is doubled up to --max-steps (default: {DEFAULT_TOLERANCE})",
    )
    model.add_argument(
        "--max-steps",
        type=_positive_int,
        default=DEFAULT_MAX_STEPS,
        metavar="N",
        help="most steps the doubling reaches; a result that still does not converge "
        f"is flagged with its numbers (default: {DEFAULT_MAX_STEPS})",
    )
    model.add_argument(
        "--method",
        choices=METHODS,
        default=DEFAULT_METHOD,
        help="the integration rule: Captum's (default: gausslegendre) or 'authors' "
        "(the authors' code: linspace(0, 1, N), equal weights)",
    )
    model.add_argument(
        "--threads",
        type=_threads,
        default="auto",
        metavar="N|auto",
        help="torch CPU threads; 'auto' (the default, unless OMP_NUM_THREADS is "
        "set) times 1 thread against every core and takes the faster",
    )
    model.add_argument(
        "--internal-batch-size",
        type=_positive_int,
        default=None,
        metavar="ROWS",
        help="most rows (source x step pairs) per pass, to bound memory on long "
        "texts (default: chosen from the problem size)",
    )
    model.add_argument(
        "--baseline",
        choices=BASELINES,
        default=None,
        help="baseline input: the mask token, the pad token or token id 0 at every "
        "position (token id 0 is what Captum's LayerIntegratedGradients takes for "
        "baselines=None), or 'neutral' (decoders: the BOS kept at position 0, ' ' "
        "elsewhere); default: neutral for causal LMs, else mask (as in the paper)",
    )
    return shared, model


def _add_output(
    parser: argparse.ArgumentParser,
    help: str,
    default: Optional[str] = None,
    required: bool = False,
    metavar: str = "PATH",
) -> None:
    """``-o/--output`` (``--out``: the old name) with the same spelling everywhere."""
    parser.add_argument(
        "-o",
        "--output",
        "--out",
        dest="output",
        default=default,
        required=required,
        metavar=metavar,
        help=help,
    )


def _add_explain(commands: Any, parents: List[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "explain",
        parents=parents,
        help="explain one text",
        description="Find the influence pattern of every token of TEXT.",
    )
    parser.add_argument(
        "text",
        metavar="TEXT",
        help="the text; for a masked LM or the embedded model it holds one mask "
        "token ([MASK], or <mask> for RoBERTa)",
    )
    parser.add_argument(
        "--target", metavar="WORD", help="masked LM: the word the QoI favours"
    )
    parser.add_argument(
        "--contrast", metavar="WORD", help="masked LM: the word it is compared with"
    )
    parser.add_argument(
        "--class",
        dest="target_class",
        metavar="K",
        help="classifier: the class the QoI favours (index or label)",
    )
    parser.add_argument(
        "--contrast-class",
        dest="contrast_class",
        metavar="K2",
        help="classifier: the class it is compared with (default for two classes: "
        "the other one)",
    )
    _add_output(
        parser,
        f"output directory for pattern.json/png/html (default: {DEFAULT_OUT})",
        default=DEFAULT_OUT,
        metavar="DIR",
    )
    parser.set_defaults(run=_run_explain)


def _add_demo(commands: Any, parents: List[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        parents=parents,
        help="the paper's farmers/farmer example",
        description="Explain the paper's pair 'the farmers that the assistant loves "
        "[MASK] old .' (are vs is) and 'the farmer that the assistants love [MASK] "
        "old .' (is vs are), and print the subject's routes.",
    )
    _add_output(
        parser,
        f"output directory (default: {DEFAULT_DEMO_OUT})",
        default=DEFAULT_DEMO_OUT,
        metavar="DIR",
    )
    parser.set_defaults(run=_run_demo)


def _add_evaluate(commands: Any, parents: List[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "evaluate",
        parents=parents,
        help="run the pattern search over task sentences or a JSONL file",
        description="Run the pattern search (and optionally reference routes and "
        "ablations) over agreement-task sentences or a JSONL file of {text, target, "
        "contrast} objects, appending one JSON line per example to --output. A "
        "killed run resumes where it stopped; a second process on the same output "
        "is refused.",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--tasks",
        default=None,
        type=_task_names,
        metavar="NAMES",
        help="comma-separated task names, or 'all' (default: all unless --input "
        f"is given); tasks: {', '.join(TASKS)}",
    )
    data.add_argument(
        "--n-per-task",
        type=_positive_int,
        default=24,
        metavar="N",
        help="sentences per task (balanced across forms; default: 24)",
    )
    data.add_argument("--seed", type=int, default=0, help="generation seed")
    data.add_argument(
        "--input",
        default=None,
        metavar="FILE",
        help="a data file instead of tasks (see --format)",
    )
    data.add_argument(
        "--format",
        default=None,
        choices=FORMATS,
        help="--input layout (default: read from the extension and the first line): "
        "'jsonl' ({text, target, contrast[, id, task, form, "
        "roles]} per line), 'glue' (TSV with sentence and label columns, for a "
        "sequence classifier: QoI logit(label) - logit(other label) at [CLS]) or "
        "'marvin-linzen' (TSV: type, form, good sentence, bad sentence; the word "
        "that differs is masked)",
    )
    data.add_argument(
        "--labels",
        default=None,
        type=_label_pair,
        metavar="A,B",
        help="the two classes of a 'glue' file (default: 0,1 or the "
        "file's two labels)",
    )
    data.add_argument(
        "--skip-invalid",
        action="store_true",
        help="record --input items that do not fit the model as "
        "skipped instead of refusing the run",
    )
    _add_output(
        parser,
        "results JSONL file (resumed when it exists; its folder is created)",
        required=True,
        metavar="JSONL",
    )
    parser.add_argument(
        "--sources",
        default="all",
        help="'all' (every token, the default, as the authors do), "
        "'roles' (subject, attractor, verbs) or comma-separated "
        "role names",
    )
    parser.add_argument(
        "--routes",
        "--baselines",
        dest="routes",
        type=_route_names,
        default=(),
        metavar="NAMES",
        help=f"reference routes to score: 'none' (default), 'default' "
        f"({','.join(DEFAULT_METHODS)}) or comma-separated names ('default' "
        "among them) of "
        f"{', '.join(ROUTES)} (--baselines: deprecated name)",
    )
    parser.add_argument(
        "--route-orientation",
        default="flow",
        choices=ORIENTATIONS,
        help="attention routes follow the direction information flows ('flow', "
        "the default) or what a token attends to ('attends', as in the authors' "
        "code)",
    )
    parser.add_argument(
        "--optimality",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="optimality test: score each guided route against N random routes of "
        "its source (default: 0, off)",
    )
    parser.add_argument(
        "--ablation", action="store_true", help="ablate guided and reference routes"
    )
    parser.add_argument(
        "--faithfulness",
        action="store_true",
        help="score g and the reference token attributions against removals of "
        "the tokens (ERASER comprehensiveness and sufficiency, Spearman with "
        "blank-out)",
    )
    parser.add_argument(
        "--ablation-reference",
        nargs="+",
        default=["mean"],
        choices=REFERENCES,
        help="what an ablated node is replaced by: its mean activation over the "
        "task's data set, or zero; several run one after the other (default: mean)",
    )
    parser.add_argument(
        "--ablation-level",
        default="attention",
        choices=ABLATION_LEVELS,
        help="keep a route's chosen heads or skips only (attention), or every node "
        "at its positions (embedding) (default: attention)",
    )
    parser.add_argument(
        "--shard",
        default=None,
        type=_shard,
        metavar="I/N",
        help="evaluate shard I of N into a part file",
    )
    parser.add_argument(
        "--merge",
        type=_positive_int,
        default=None,
        metavar="N",
        help="only merge the part files of N shards into --output (refused unless "
        "every part is there and complete)",
    )
    parser.add_argument(
        "--delete-parts",
        action="store_true",
        help="with --merge: delete the part files once the merged file is on disk",
    )
    parser.set_defaults(run=_run_evaluate)


def _add_report(commands: Any, parents: List[argparse.ArgumentParser]) -> None:
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
    _add_output(
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
    parser.add_argument("--summary", default=None, help="also write metrics JSON")
    parser.add_argument(
        "--patterns",
        default=None,
        metavar="HTML",
        help="also write the interactive page of the routes, per task x form group",
    )
    parser.set_defaults(run=_run_report)


# ------------------------------------------------------------------ option types
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {value}")
    return value


def _threads(text: str) -> Any:
    return "auto" if text == "auto" else _positive_int(text)


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a torch device, got {text!r}")
    if device.type == "meta":
        raise argparse.ArgumentTypeError(
            "'meta' tensors hold no values; use cpu or cuda"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available here")
    try:
        torch.empty(1, device=device)
    except (RuntimeError, ValueError) as error:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not usable here ({_one_line(error)}); use cpu"
        )
    return text


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _label_pair(text: str) -> Tuple[str, str]:
    labels = _names(text)
    if len(labels) != 2 or labels[0] == labels[1]:
        raise argparse.ArgumentTypeError(
            f"expected two different labels A,B, got {text!r}"
        )
    return labels[0], labels[1]


def _names(text: str) -> List[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _task_names(text: str) -> Tuple[str, ...]:
    if text.strip() == "all":
        return tuple(TASKS)
    names = _names(text)
    unknown = [name for name in names if name not in TASKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown task(s) {unknown or text!r}; use 'all' or some of "
            f"{', '.join(TASKS)}"
        )
    return tuple(names)


def _route_names(text: str) -> Tuple[str, ...]:
    if text.strip() == "none":
        return ()
    names = []
    for name in _names(text):  # 'default' stands for the default routes in a list too
        for each in DEFAULT_METHODS if name == "default" else [name]:
            if each not in names:
                names.append(each)
    unknown = [name for name in names if name not in ROUTES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown route(s) {unknown or text!r}; use 'none', 'default' or some "
            f"of {', '.join(ROUTES)} (e.g. default,alti)"
        )
    return tuple(names)


def _shard(text: str) -> Tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, got {text!r}")
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return index, count


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
        except SystemExit as exit_:  # --help, --version
            return int(exit_.code or 0)
        with _library_output(args.quiet), _stdout_may_close():
            return args.run(args)
    except USER_ERRORS as error:
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


class _ClosablePipe:
    """stdout that goes quiet when its reader leaves (``explain ... | head``): the
    rest of the output goes to /dev/null and the command finishes its files."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self._to_null()
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._to_null()

    def _to_null(self) -> None:
        null = os.open(os.devnull, os.O_WRONLY)  # also for the interpreter's last flush
        os.dup2(null, self.stream.fileno())
        os.close(null)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextmanager
def _stdout_may_close() -> Iterator[None]:
    stream = sys.stdout
    sys.stdout = _ClosablePipe(stream)  # type: ignore[assignment]
    try:
        yield
        sys.stdout.flush()
    finally:
        sys.stdout = stream


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _run_explain(args: argparse.Namespace) -> int:
    _check_rule(args)
    out = _output_dir(args.output)
    _check_mask(args)
    loaded = _load(args)
    explanation = _prepare(
        loaded,
        args,
        args.text,
        args.target,
        args.contrast,
        args.target_class,
        args.contrast_class,
    )
    result = _attribute(loaded, explanation, args)
    _print_report(result, explanation)
    _print_files(_write_outputs(out, "pattern", result, explanation))
    return EXIT_OK


def _run_demo(args: argparse.Namespace) -> int:
    _check_rule(args)
    out = _output_dir(args.output)
    loaded = _load(args)
    mask = loaded.tokenizer.mask_token or "[MASK]"
    cases = [
        (
            case,
            _prepare(
                loaded,
                args,
                _demo_text(loaded, case.text, mask),
                case.target,
                case.contrast,
                None,
                None,
            ),
        )
        for case in DEMO_CASES
    ]
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


def _demo_text(loaded: LoadedModel, text: str, mask: str) -> str:
    """The demo sentence with the model's mask token, or, for a causal LM, the
    prefix before it (the model predicts the verb itself)."""
    if loaded.kind == "causal_lm":
        return to_prefix(text)
    return text.replace("[MASK]", mask)


def _run_evaluate(args: argparse.Namespace) -> int:
    check_output_path(args.output)
    _check_rule(args)
    if args.merge is not None:
        records = merge_shards(args.output, args.merge, remove=args.delete_parts)
        deleted = " (part files deleted)" if args.delete_parts else ""
        print(f"merged {len(records)} records into {args.output}{deleted}")
        return EXIT_OK
    settings = _evaluation_settings(args)
    if args.device != "cpu" and (
        settings.routes or settings.ablation or settings.faithfulness
    ):
        raise CliError(
            "--routes, --ablation and --faithfulness run on the CPU only; drop "
            f"--device {args.device}"
        )
    if args.input is not None and args.tasks is not None:
        raise CliError("give --tasks or --input, not both")
    if args.input is not None:  # an unreadable file, before the model loads
        args.format = args.format or detect_format(args.input)
    loaded = _load(args)
    if args.input is not None:
        items, dataset = read_items(
            args.input, args.format, loaded.tokenizer, args.labels
        )
    else:
        tasks = list(args.tasks or TASKS)
        dataset = {"tasks": tasks, "n": args.n_per_task, "seed": args.seed}
        if loaded.kind == "causal_lm":  # the sentences cut before the verb
            items, _ = lm_prefix_items(
                tasks, args.n_per_task, loaded.tokenizer, seed=args.seed
            )
            dataset["prefixes"] = True
        else:
            items = task_items(
                tasks, args.n_per_task, loaded.tokenizer, seed=args.seed
            )
    if not args.quiet:
        print(f"{PROG} evaluate: {estimate(settings, len(items))}", file=sys.stderr)
    written = evaluate(
        loaded,
        items,
        args.output,
        settings,
        shard=args.shard,
        show_progress=not args.quiet,
        dataset=dataset,
        skip_invalid=args.skip_invalid,
    )
    print(f"results: {written}")
    return EXIT_OK


def _evaluation_settings(args: argparse.Namespace) -> EvaluationSettings:
    return EvaluationSettings(
        n_steps=args.n_steps,
        method=args.method,
        sources=args.sources,
        baseline=args.baseline or QOI_KINDS[model_kind(args.model)].default_baseline,
        routes=args.routes,
        route_orientation=args.route_orientation,
        optimality=args.optimality,
        ablation=args.ablation,
        references=tuple(args.ablation_reference),
        ablation_level=args.ablation_level,
        internal_batch_size=args.internal_batch_size,
        faithfulness=args.faithfulness,
        tolerance=args.tolerance,
        max_steps=args.max_steps,
    )


def _run_report(args: argparse.Namespace) -> int:
    for path in args.results:
        _readable_file(path, "results file")
    if args.notes is not None:
        _readable_file(args.notes, "--notes")
    notes_summaries = {}
    for item in args.notes_summary:
        name, sep, path = item.partition("=")
        if not sep or not name.isidentifier():
            raise CliError(f"--notes-summary {item!r}: give NAME=SUMMARY.json")
        _readable_file(path, "--notes-summary")
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
            _output_dir(os.path.dirname(os.path.abspath(path)))
    _output_dir(static)
    write_report(args.results, output, static, args.notes, args.title, args.summary,
                 notes_summaries=notes_summaries, claims_from=claims_from)
    print(f"report: {output}")
    if args.patterns is not None:
        page = patterns_page(load_results(args.results), title=args.title)
        write_text_atomic(args.patterns, page)
        print(f"patterns: {args.patterns}")
    return EXIT_OK


# ----------------------------------------------------------------- the steps
def _status(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _load(args: argparse.Namespace) -> LoadedModel:
    _set_threads(args)
    _status(args, f"loading model {args.model or 'embedded'} ...")
    loaded = load_model(args.model, dtype=args.dtype)
    loaded.model.to(args.device)
    return loaded


def _set_threads(args: argparse.Namespace) -> None:
    """``--threads N``, or with ``auto`` the faster of 1 thread and every core
    (:func:`~.threads.fastest_threads`) unless ``OMP_NUM_THREADS`` chose already."""
    if args.threads == "auto" and os.environ.get("OMP_NUM_THREADS"):
        return
    threads = fastest_threads()["threads"] if args.threads == "auto" else args.threads
    torch.set_num_threads(threads)
    _status(args, f"using {threads} CPU thread(s) ({args.threads})")


def _prepare(
    loaded: LoadedModel,
    args: argparse.Namespace,
    text: str,
    target: Optional[str],
    contrast: Optional[str],
    target_class: Optional[str],
    contrast_class: Optional[str],
) -> Explanation:
    return prepare_explanation(
        loaded,
        text,
        target=target,
        contrast=contrast,
        target_class=target_class,
        contrast_class=contrast_class,
        baseline=args.baseline,
    )


def _output_dir(path: str) -> str:
    """Check that ``path`` is, or can be created as, a writable directory (it is
    created when the first file is written, so a failed run leaves no empty one)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CliError(f"output directory {path!r} is a file; give a directory")
    problem = folder_problem(path)
    if problem:
        raise CliError(f"output directory {path!r} is not writable: {problem}")
    return path


def _check_rule(args: argparse.Namespace) -> None:
    """``--method`` and ``--n-steps`` fit together (before the model loads)."""
    if args.n_steps > MAX_STEPS:
        raise CliError(
            f"--n-steps: at most {MAX_STEPS}, got {args.n_steps}; tens to hundreds "
            "are enough"
        )
    try:
        check_rule(args.method, args.n_steps)
    except ValueError as error:
        raise CliError(
            f"--method {args.method} needs --n-steps {min_steps(args.method)} or "
            f"more, got {args.n_steps}; pass more steps or --method gausslegendre"
        ) from error


def _check_mask(args: argparse.Namespace) -> None:
    """A text for a masked LM or the embedded model holds a mask token; checked
    from the model's config, before its weights load."""
    if args.target_class is not None or args.contrast_class is not None:
        return
    if not QOI_KINDS[model_kind(args.model)].needs_mask:
        return
    if not any(mask in args.text for mask in MASK_TOKENS):
        raise CliError(
            f"TEXT {args.text!r} has no mask token: put [MASK] (<mask> for "
            "RoBERTa) where the predicted word goes"
        )


def _readable_file(path: str, what: str) -> None:
    if os.path.isdir(path):
        raise CliError(f"{what} {path!r} is a directory; give a file")
    if not os.access(path, os.R_OK) or not os.path.isfile(path):
        raise CliError(f"{what} {path!r} does not exist or cannot be read")


def _attribute(
    loaded: LoadedModel, explanation: Explanation, args: argparse.Namespace
) -> InfluencePatternsResult:
    _status(args, f"explaining {explanation.text!r} ({args.n_steps} steps) ...")
    start = time.perf_counter()
    result = explain(
        loaded,
        explanation,
        n_steps=args.n_steps,
        method=args.method,
        show_progress=not args.quiet,
        internal_batch_size=args.internal_batch_size,
        tolerance=args.tolerance,
        max_steps=args.max_steps,
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
    if "target_id" in explanation.extra:  # a word contrast of the model's own head
        qoi = result.metadata["qoi_value"]
        preferred = explanation.target if qoi > 0 else explanation.contrast
        print(f"the model's own prediction: {preferred!r} over the other")
    print(f"baseline: {explanation.baseline_note or explanation.baseline}")
    for entry in result.metadata.get("convergence", []):
        print(Convergence.from_dict(entry).describe())
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
    title = display_text(
        f"{textwrap.shorten(explanation.text, 90)}\n"
        f"QoI: logit({explanation.target}) - logit({explanation.contrast})"
    )
    shown = _display_result(result)  # token labels are escaped by the drawing
    fig, _ = shown.plot(use_pyplot=False, show_token_panel=True, title=title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def _write_outputs(
    directory: str,
    stem: str,
    result: InfluencePatternsResult,
    explanation: Explanation,
) -> List[str]:
    """Write STEM.json, then render and write STEM.png and STEM.html, each
    atomically (the JSON, the costly part, is kept if drawing fails)."""
    paths = [os.path.join(directory, f"{stem}.{ext}") for ext in _EXTENSIONS]
    os.makedirs(directory, exist_ok=True)
    document = result_document(result, explanation)
    write_json_atomic(paths[0], document)
    png = _render_png(result, explanation)
    write_bytes_atomic(paths[1], lambda handle: handle.write(png))
    write_text_atomic(paths[2], viewer_html(document))
    return paths
