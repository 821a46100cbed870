"""``evaluate``: the pattern search over a data set (agreement tasks, their LM prefixes,
or a file), one JSON line per example, resumable, sharded or merged."""

from __future__ import annotations

import argparse
import sys
from typing import Any, List

from ..paper.ablation import REFERENCES
from ..paper.agreement_tasks import TASKS
from ..paper.evaluation import evaluate
from ..paper.datasets import FORMATS, detect_format, read_items, task_items
from ..paper.lm_prefixes import lm_prefix_items
from ..paper.run_files import check_output_path, merge_shards
from ..paper.settings import ABLATION_LEVELS, EvaluationSettings, estimate
from ..models.loading import model_kind
from ..models.qoi_kinds import QOI_KINDS
from ..routes.compare import DEFAULT_METHODS, ROUTES
from ..routes.finders import ORIENTATIONS
from .common import (
    EXIT_OK,
    PROG,
    add_output,
    check_rule_options,
    CliError,
    label_pair,
    load,
    non_negative_int,
    positive_int,
    route_names,
    shard_option,
    task_names,
)


def add_evaluate(commands: Any, parents: List[argparse.ArgumentParser]) -> None:
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
    _add_data(parser.add_argument_group("data"))
    add_output(
        parser,
        "results JSONL file (resumed when it exists; its folder is created)",
        required=True,
        metavar="JSONL",
    )
    _add_measures(parser)
    _add_shards(parser)
    parser.set_defaults(run=_run_evaluate)


def _add_data(data: Any) -> None:
    """The data options: tasks and their sentences, or an input file."""
    data.add_argument(
        "--tasks",
        default=None,
        type=task_names,
        metavar="NAMES",
        help="comma-separated task names, or 'all' (default: all unless --input "
        f"is given); tasks: {', '.join(TASKS)}",
    )
    data.add_argument(
        "--n-per-task",
        type=positive_int,
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
        type=label_pair,
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


def _add_measures(parser: argparse.ArgumentParser) -> None:
    """What is computed per example beyond the search."""
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
        type=route_names,
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
        type=non_negative_int,
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


def _add_shards(parser: argparse.ArgumentParser) -> None:
    """Shards by hand and their merge."""
    parser.add_argument(
        "--shard",
        default=None,
        type=shard_option,
        metavar="I/N",
        help="evaluate shard I of N into a part file",
    )
    parser.add_argument(
        "--merge",
        type=positive_int,
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


def _run_evaluate(args: argparse.Namespace) -> int:
    check_output_path(args.output)
    check_rule_options(args)
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
    loaded = load(args)
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
        line = estimate(settings, len(items), loaded.kind)
        print(f"{PROG} evaluate: {line}", file=sys.stderr)
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
