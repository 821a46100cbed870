"""Write the generated agreement sentences as a JSONL input file with the tasks
interleaved (the first sentence of every task, then the second, ...), so that any
prefix of a run over it, one process or round-robin shards, covers the tasks evenly.
Ids, tasks, forms and roles are those of ``evaluate --tasks ... --n-per-task N --seed
S``: the two runs explain the same sentences.

    python scripts/interleave_items.py results/agreement_minilm/items_100.jsonl \
        --n-per-task 100 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from captum_influence_patterns.paper.agreement_tasks import TASKS  # noqa: E402
from captum_influence_patterns.paper.datasets import task_items  # noqa: E402
from captum_influence_patterns.utils.files import write_text_atomic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--n-per-task", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    items = task_items(list(TASKS), args.n_per_task, seed=args.seed)
    rank = {task: k for k, task in enumerate(TASKS)}
    within: dict = {}
    order = []
    for item in items:
        k = within[item.task] = within.get(item.task, -1) + 1
        order.append(((k, rank[item.task]), item))
    lines = [
        json.dumps({"id": item.id, "task": item.task, "form": item.form,
                    "text": item.text, "target": item.target,
                    "contrast": item.contrast, "roles": item.roles})
        for _, item in sorted(order, key=lambda pair: pair[0])
    ]
    write_text_atomic(args.output, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
