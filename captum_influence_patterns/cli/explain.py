"""``explain`` and ``demo``: one text (or the paper's pair) explained on one model, written
as ``STEM.json`` (first), ``STEM.png`` and ``STEM.html``, each atomically."""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import textwrap
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..convergence import Convergence
from ..paper.lm_prefixes import to_prefix
from ..utils.files import write_bytes_atomic, write_json_atomic, write_text_atomic
from ..models.explanation import explain, prepare_explanation
from ..models.loading import LoadedModel, model_kind
from ..models.qoi_kinds import QOI_KINDS, Explanation
from ..results import InfluencePatternsResult
from ..viz.interactive import viewer_html
from ..viz.tokens import clean_token, display_text
from .common import (
    EXIT_OK,
    add_output,
    check_rule_options,
    CliError,
    load,
    output_dir,
    status,
)


DEFAULT_OUT = "influence-patterns-out"


DEFAULT_DEMO_OUT = "demo-out"


#: ``format`` field of the JSON files.
JSON_FORMAT = "captum-influence-patterns/pattern-v1"


_EXTENSIONS = ("json", "png", "html")


#: Mask tokens of the supported masked LMs (BERT's family, RoBERTa's).
MASK_TOKENS = ("[MASK]", "<mask>")


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


def add_explain(commands: Any, parents: List[argparse.ArgumentParser]) -> None:
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
    add_output(
        parser,
        f"output directory for pattern.json/png/html (default: {DEFAULT_OUT})",
        default=DEFAULT_OUT,
        metavar="DIR",
    )
    parser.set_defaults(run=_run_explain)


def add_demo(commands: Any, parents: List[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        parents=parents,
        help="the paper's farmers/farmer example",
        description="Explain the paper's pair 'the farmers that the assistant loves "
        "[MASK] old .' (are vs is) and 'the farmer that the assistants love [MASK] "
        "old .' (is vs are), and print the subject's routes.",
    )
    add_output(
        parser,
        f"output directory (default: {DEFAULT_DEMO_OUT})",
        default=DEFAULT_DEMO_OUT,
        metavar="DIR",
    )
    parser.set_defaults(run=_run_demo)


def _run_explain(args: argparse.Namespace) -> int:
    check_rule_options(args)
    out = output_dir(args.output)
    _check_mask(args)
    loaded = load(args)
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
    check_rule_options(args)
    out = output_dir(args.output)
    loaded = load(args)
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


def _attribute(
    loaded: LoadedModel, explanation: Explanation, args: argparse.Namespace
) -> InfluencePatternsResult:
    status(args, f"explaining {explanation.text!r} ({args.n_steps} steps) ...")
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
    status(args, f"done in {seconds:.1f} s")
    return result


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
