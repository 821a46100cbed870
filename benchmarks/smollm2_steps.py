"""The steps the convergence check uses on SmolLM2: two prefixes per agreement task,
the neutral baseline, n_steps doubled from 50 while |delta|/|dQoI| of g alone exceeds 5%
(the rule of ``convergence.attribute_converged``, up to 400 steps).

Run: ``OMP_NUM_THREADS=1 python benchmarks/smollm2_steps.py``
"""
import torch
torch.set_num_threads(1)
from captum_influence_patterns import InfluencePatterns
from captum_influence_patterns.convergence import (
    relative_delta,
    token_influence_convergence,
)
from captum_influence_patterns.paper.agreement_tasks import TASKS
from captum_influence_patterns.paper.lm_prefixes import lm_prefix_items
from captum_influence_patterns.models.explanation import prepare_explanation
from captum_influence_patterns.models.loading import load_model
loaded = load_model("smollm2")
items, _ = lm_prefix_items(list(TASKS), 2, loaded.tokenizer)
for item in items:
    e = prepare_explanation(loaded, item.text, item.target, item.contrast)
    ip = InfluencePatterns(e.forward_func, loaded.model)
    request = e.request(ip)
    steps, tried = 50, []
    while True:
        d, q = token_influence_convergence(ip, request, steps)
        tried.append((steps, relative_delta(d, q)))
        if tried[-1][1] <= 0.05 or steps * 2 > 400:
            break
        steps *= 2
    steps_tried = " ".join(f"{s}:{r:.4f}" for s, r in tried)
    print(f"{item.task:<17} {item.form} {item.text!r:<50} dQoI {q:+.3f} {steps_tried}",
          flush=True)
