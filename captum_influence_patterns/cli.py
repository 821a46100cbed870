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

from .model_graph import UnsupportedModelError
from .model_loading import (
    BASELINES,
    Explanation,
    ExplanationError,
    LoadedModel,
    ModelLoadingError,
    explain,
    load_model,
    prepare_explanation,
)
from .results import (
    InfluencePatternsResult,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from .evaluation import register_commands as register_evaluation_commands
from .visualization import clean_token, pattern_html

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
    """One sentence of the demo (METHOD.md section 12)."""

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
    register_evaluation_commands(commands)
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
        with _library_output(args.quiet):
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
