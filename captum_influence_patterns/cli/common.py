"""What every command shares: the program's name and exit codes, :class:`CliError`, the
parent parsers of the shared options and their argument types, and the helpers that
load a model and check its settings."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, List, Optional, Tuple

import torch

from ..convergence import DEFAULT_MAX_STEPS, DEFAULT_TOLERANCE
from ..paper.agreement_tasks import TASKS
from ..utils.files import folder_problem
from ..quadrature import (
    DEFAULT_METHOD,
    DEFAULT_N_STEPS,
    MAX_STEPS,
    METHODS,
    check_rule,
    min_steps,
)
from ..models.explanation import BASELINES
from ..models.loading import LoadedModel, load_model
from ..routes.compare import DEFAULT_METHODS, ROUTES
from ..utils.threads import fastest_threads


PROG = "captum-influence-patterns"


EXIT_OK = 0


EXIT_USAGE = 2


EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A bad argument: reported as one line on stderr with exit code 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`CliError` instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(f"{message} (see {self.prog} --help)")


def shared_parsers() -> Tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """(options of every subcommand, options of the subcommands that run a model)."""
    shared = Parser(add_help=False)
    shared.add_argument(
        "--quiet",
        "-q",
        "--no-progress",
        dest="quiet",
        action="store_true",
        help="no progress bars or status lines on stderr (--no-progress: old name)",
    )
    model = Parser(add_help=False)
    _add_model_options(model)
    _add_integration_options(model)
    return shared, model


def _add_model_options(model: argparse.ArgumentParser) -> None:
    """Which model, its dtype and device."""
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


def _add_integration_options(model: argparse.ArgumentParser) -> None:
    """How the influences are integrated: steps, rule, threads, batch and baseline."""
    model.add_argument(
        "--n-steps",
        "--steps",
        dest="n_steps",
        type=positive_int,
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
        type=positive_int,
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
        type=positive_int,
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


def add_output(
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


def _integer_from(text: str, minimum: int) -> int:
    """``text`` as an integer of at least ``minimum``, else argparse's error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    if value < minimum:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= {minimum}, got {value}"
        )
    return value


def positive_int(text: str) -> int:
    return _integer_from(text, 1)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {value}")
    return value


def _threads(text: str) -> Any:
    return "auto" if text == "auto" else positive_int(text)


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
            f"{text!r} is not usable here ({one_line(error)}); use cpu"
        )
    return text


def non_negative_int(text: str) -> int:
    return _integer_from(text, 0)


def label_pair(text: str) -> Tuple[str, str]:
    labels = _names(text)
    if len(labels) != 2 or labels[0] == labels[1]:
        raise argparse.ArgumentTypeError(
            f"expected two different labels A,B, got {text!r}"
        )
    return labels[0], labels[1]


def _names(text: str) -> List[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _known(
    names: List[str], table: Any, what: str, text: str, use: str
) -> Tuple[str, ...]:
    """``names``, all keys of ``table``; else an error naming the unknown ones (or
    ``text``, where it names none) and what to ``use``."""
    unknown = [name for name in names if name not in table]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what}(s) {unknown or text!r}; use {use}"
        )
    return tuple(names)


def task_names(text: str) -> Tuple[str, ...]:
    if text.strip() == "all":
        return tuple(TASKS)
    return _known(
        _names(text), TASKS, "task", text, f"'all' or some of {', '.join(TASKS)}"
    )


def route_names(text: str) -> Tuple[str, ...]:
    if text.strip() == "none":
        return ()
    names = []
    for name in _names(text):  # 'default' stands for the default routes in a list too
        for each in DEFAULT_METHODS if name == "default" else [name]:
            if each not in names:
                names.append(each)
    return _known(
        names, ROUTES, "route", text,
        f"'none', 'default' or some of {', '.join(ROUTES)} (e.g. default,alti)",
    )


def shard_option(text: str) -> Tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, got {text!r}")
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return index, count


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def status(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def load(args: argparse.Namespace) -> LoadedModel:
    set_threads(args)
    status(args, f"loading model {args.model or 'embedded'} ...")
    loaded = load_model(args.model, dtype=args.dtype)
    loaded.model.to(args.device)
    return loaded


def set_threads(args: argparse.Namespace) -> None:
    """``--threads N``, or with ``auto`` the faster of 1 thread and every core
    (:func:`~.threads.fastest_threads`) unless ``OMP_NUM_THREADS`` chose already."""
    if args.threads == "auto" and os.environ.get("OMP_NUM_THREADS"):
        return
    threads = fastest_threads()["threads"] if args.threads == "auto" else args.threads
    torch.set_num_threads(threads)
    status(args, f"using {threads} CPU thread(s) ({args.threads})")


def output_dir(path: str) -> str:
    """Check that ``path`` is, or can be created as, a writable directory (it is
    created when the first file is written, so a failed run leaves no empty one)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CliError(f"output directory {path!r} is a file; give a directory")
    problem = folder_problem(path)
    if problem:
        raise CliError(f"output directory {path!r} is not writable: {problem}")
    return path


def check_rule_options(args: argparse.Namespace) -> None:
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


def readable_file(path: str, what: str) -> None:
    if os.path.isdir(path):
        raise CliError(f"{what} {path!r} is a directory; give a file")
    if not os.access(path, os.R_OK) or not os.path.isfile(path):
        raise CliError(f"{what} {path!r} does not exist or cannot be read")
