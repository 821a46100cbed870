"""Command line: ``captum-influence-patterns {explain,demo,evaluate,report} ...``.

Every subcommand is registered here, on one shared parent parser (``--quiet``) and,
for those that run a model, one parent of model options (``--model``, ``--dtype``,
``--n-steps``, ``--method``, ``--internal-batch-size``, ``--baseline``;
:mod:`.common`), so option names and defaults are the same everywhere. Each command
group is its own module: :mod:`.explain` (``explain``, ``demo``), :mod:`.evaluate`
and :mod:`.report`. ``python -m captum_influence_patterns`` is
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
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence, Tuple

from .. import __version__
from ..paper.datasets import EvaluationError
from ..graph import UnsupportedModelError
from ..models.loading import ModelLoadingError
from ..models.qoi_kinds import ExplanationError
from .common import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    CliError,
    one_line,
    Parser,
    shared_parsers,
)
from .evaluate import add_evaluate
from .explain import add_demo, add_explain
from .report import add_report


#: Exceptions that mean a bad argument or input: exit code 2 and one line on stderr.
USER_ERRORS: Tuple[type, ...] = (
    CliError,
    ModelLoadingError,
    ExplanationError,
    UnsupportedModelError,
    EvaluationError,
)


# ------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of :func:`main`: ``explain``, ``demo``, ``evaluate`` and
    ``report``, with the shared options of :func:`shared_parsers`."""
    shared, model_options = shared_parsers()
    parser = Parser(
        prog=PROG,
        description="Influence patterns (Lu et al., NeurIPS 2021): the route along "
        "which each token's influence reaches a transformer's output.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_explain(commands, [shared, model_options])
    add_demo(commands, [shared, model_options])
    add_evaluate(commands, [shared, model_options])
    add_report(commands, [shared])
    return parser


# ------------------------------------------------------------------ option types


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
        print(f"{PROG}: error: {one_line(error)}", file=sys.stderr)
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


# ----------------------------------------------------------------- the steps


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


# ----------------------------------------------------------------------- output


