"""Which baseline makes a decoder's integrated gradient converge: SmolLM2-135M on one
agreement prefix per task (the correct verb against the wrong one).

For each baseline, ``|sum_j g_j - (QoI(x) - QoI(x'))| / |QoI(x) - QoI(x')|`` of ``g``
alone (one reverse pass, Gauss-Legendre) at 50 and 200 steps. Baselines: without the
BOS, id 2 (the pad and end token) or " " at every position; with the BOS
``<|im_start|>`` kept at position 0 in the input and the baseline, id 2, id 0 or " "
elsewhere. docs/decoders.md gives the table; the library's ``"neutral"`` baseline is
the last one.

Run: ``OMP_NUM_THREADS=1 python benchmarks/decoder_baselines.py [--steps 50 200]``
"""

from __future__ import annotations

import argparse
import statistics

import torch

from captum_influence_patterns import InfluencePatterns
from captum_influence_patterns.convergence import (
    relative_delta,
    token_influence_convergence,
)
from captum_influence_patterns.paper.agreement_tasks import TASKS
from captum_influence_patterns.paper.lm_prefixes import lm_prefix_items
from captum_influence_patterns.models.loading import load_model
from captum_influence_patterns.models.qoi_kinds import continuation_id
from captum_influence_patterns.qoi import next_token_logit_difference


def baselines(tokenizer, ids_no_bos):
    space = tokenizer(" ", add_special_tokens=False)["input_ids"][0]
    bos = tokenizer.bos_token_id
    with_bos = torch.cat([torch.tensor([[bos]]), ids_no_bos], dim=1)

    def kept(fill):
        baseline = torch.full_like(with_bos, fill)
        baseline[0, 0] = bos
        return with_bos, baseline

    return {
        "no BOS, id 2 everywhere": (ids_no_bos, torch.full_like(ids_no_bos, 2)),
        "no BOS, ' ' everywhere": (ids_no_bos, torch.full_like(ids_no_bos, space)),
        "BOS kept, id 2 elsewhere": kept(2),
        "BOS kept, id 0 elsewhere": kept(0),
        "BOS kept, ' ' elsewhere (neutral)": kept(space),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--per-task", type=int, default=1)
    options = parser.parse_args()
    loaded = load_model("smollm2")
    tokenizer, model = loaded.tokenizer, loaded.model
    forward = next_token_logit_difference(model)
    ip = InfluencePatterns(forward, model)
    items, _ = lm_prefix_items(list(TASKS), options.per_task, tokenizer)
    table = {}
    for item in items:
        ids = tokenizer(item.text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ids])
        pair = [continuation_id(tokenizer, item.text, w, "word")
                for w in (item.target, item.contrast)]
        for name, (inputs, baseline) in baselines(tokenizer, ids).items():
            position = inputs.shape[1] - 1
            args = (torch.tensor([position]), torch.tensor([pair[0]]),
                    torch.tensor([pair[1]]))
            request = ip.request(inputs, baseline, None, args, output_position=position)
            row = []
            for steps in options.steps:
                delta, difference = token_influence_convergence(ip, request, steps)
                row.append(relative_delta(delta, difference))
            table.setdefault(name, []).append(row)
            print(f"{item.task:<17} {item.text!r:<55} {name:<34} "
                  + "  ".join(f"{s}: {r:6.3f}" for s, r in zip(options.steps, row)),
                  flush=True)
    print(f"\n|delta| / |dQoI| over {len(items)} prefixes: median [min, max]")
    for name, rows in table.items():
        cells = []
        for k, steps in enumerate(options.steps):
            values = [row[k] for row in rows]
            cells.append(f"{steps} steps {statistics.median(values):.3f} "
                         f"[{min(values):.3f}, {max(values):.3f}]")
        print(f"  {name:<34} " + "   ".join(cells))


if __name__ == "__main__":
    main()
