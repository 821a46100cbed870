"""Cost of the contribution routes (alti, alti_logit, attention_norm, information_flow)
and of the faithfulness measures, next to Captum's LIG, in one process.

The models of ``families_benchmark.py`` (randomly initialised 6-layer, 384-hidden,
12-head BERT, GPT-2 and Llama with 4 key/value heads), 11 and 32 tokens, 50 steps. Each
route's time is the whole cost of its routes for every source of the input: the
decomposed pass (:func:`~captum_influence_patterns.routes.contributions.
example_contributions`: one forward and one reverse pass at the input) and the finder.
``all_four`` is the four kinds from one decomposed pass, as
:func:`~captum_influence_patterns.routes.compare.compare` computes them.
``faithfulness`` is one :func:`~captum_influence_patterns.paper.faithfulness.
faithfulness_record` with the default token scores (g's 50 steps included) and two
removals. Times are medians of interleaved repeats; ratios are to LIG (all tokens of
the input, 50 steps), the budget of issue 28 being 0.1 LIG per finder.

Run: ``python benchmarks/contributions_benchmark.py [--repeats 5] [--threads 1]``
"""

from __future__ import annotations

import argparse
import statistics
from typing import Callable, Dict

import torch
from captum.attr import LayerIntegratedGradients
from core_benchmark import interleaved_times
from families_benchmark import STEPS, build

from captum_influence_patterns import (
    InfluencePatterns,
    analysis_mode,
    masked_lm_logit_difference,
)
from captum_influence_patterns.paper.faithfulness import faithfulness_record
from captum_influence_patterns.quadrature import IntegrationSettings
from captum_influence_patterns.routes.compare import (
    CONTRIBUTION_ROUTES,
    ROUTES,
    reference_routes,
)
from captum_influence_patterns.routes.contributions import example_contributions


def jobs(family: str, length: int) -> Dict[str, Callable[[], object]]:
    model, ids, output = build(family, length)
    forward = masked_lm_logit_difference(model)
    args = (torch.tensor([output]), torch.tensor([1500]), torch.tensor([1501]))
    ip = InfluencePatterns(forward, model)
    lig = LayerIntegratedGradients(forward, ip.graph.word_embeddings)
    sources = [j for j in range(length) if j != output]
    if family != "bert":
        sources = [j for j in sources if j < output]

    def run_lig():
        with analysis_mode(model):
            return lig.attribute(ids, additional_forward_args=args, n_steps=STEPS)

    def decomposed():
        problem = ip.example_problem(
            ids, None, None, args, 0, IntegrationSettings(STEPS)
        )
        return example_contributions(problem, output)

    def finder(name: str) -> Callable[[], object]:
        def run():
            with analysis_mode(model):
                found = decomposed()
            return reference_routes(
                ROUTES[name], found.attention, sources, output, contributions=found
            )

        return run

    request = ip.request(ids, None, None, args, output_position=output, n_steps=STEPS)
    blanks = (
        {"unk": 100, "mask": 103}
        if family == "bert"
        else {"deletion": "deletion", "replacement": 0}
    )

    def faithfulness():
        return faithfulness_record(ip, request, 0, output, sources, blanks)

    def all_four():  # what compare does: one decomposed pass for every kind
        with analysis_mode(model):
            found = decomposed()
        return [
            reference_routes(
                ROUTES[name], found.attention, sources, output, contributions=found
            )
            for name in CONTRIBUTION_ROUTES
        ]

    out: Dict[str, Callable[[], object]] = {"LIG": run_lig}
    out.update({name: finder(name) for name in CONTRIBUTION_ROUTES})
    out["all_four"] = all_four
    out["faithfulness"] = faithfulness
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="interleaved repeats (default: 5)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    return parser


def main() -> None:
    options = build_parser().parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, 6 layers x "
        f"384 hidden x 12 heads, {STEPS} steps, median of {options.repeats} "
        "interleaved repeats; time / LIG"
    )
    for family in ("bert", "gpt2", "llama"):
        for length in (11, 32):
            times = interleaved_times(jobs(family, length), options.repeats)
            medians = {name: statistics.median(v) for name, v in times.items()}
            lig = medians["LIG"]
            cells = "  ".join(
                f"{name} {seconds / lig:.3f}"
                for name, seconds in medians.items()
                if name != "LIG"
            )
            print(
                f"{family:<6} {length:>3} tokens  LIG {lig:.3f} s  {cells}", flush=True
            )


if __name__ == "__main__":
    main()
