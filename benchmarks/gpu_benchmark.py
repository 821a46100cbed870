"""GPU timing: patterns for every source against Captum's LIG on headless BERT encoders
(random weights) with a linear readout at the last position, 50 Gauss-Legendre steps,
float32; interleaved pairs after one warm-up pair, median of the per-pair ratios. It
first checks fast == reference in float64 on the device.

    python benchmarks/gpu_benchmark.py > benchmarks/results/gpu.json   # DEV=cpu: a toy
"""

import json
import os
import statistics
import sys
import time

import torch
from transformers import BertConfig, BertModel
from captum.attr import LayerIntegratedGradients

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from captum_influence_patterns import (  # noqa: E402
    InfluencePatterns,
    masked_lm_logit_difference,
)
from captum_influence_patterns.testing import family_model  # noqa: E402

dev = torch.device(os.environ.get("DEV", "cuda"))
out = {
    "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
    "torch": torch.__version__,
}


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


# the test suite's BERT shape with the default initialisation (seed 0)
m = family_model("bert", weight_scale=1.0).to(dev)
ids = torch.randint(5, 60, (1, 9), device=dev)
ids[0, 4] = 3
ip = InfluencePatterns(masked_lm_logit_difference(m), m)
args = tuple(torch.tensor([v], device=dev) for v in (4, 10, 20))
r = {
    s: ip.attribute(
        ids,
        baselines=3,
        additional_forward_args=args,
        output_position=4,
        n_steps=16,
        schedule=s,
    )
    for s in ("fast", "reference")
}
out["fast_equals_reference"] = all(
    a.positions == b.positions
    and [(n.kind, n.head) for n in a.nodes] == [(n.kind, n.head) for n in b.nodes]
    for a, b in zip(r["fast"].patterns[0], r["reference"].patterns[0])
)
out["max_gap"] = max(
    abs(a.influence - b.influence)
    for a, b in zip(r["fast"].patterns[0], r["reference"].patterns[0])
)
print(json.dumps(out), flush=True)


def case(layers, hidden, T, reps=3):
    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=12,
        intermediate_size=4 * hidden,
        vocab_size=30522,
        max_position_embeddings=512,
    )
    enc = BertModel(cfg).to(dev).eval()
    w = torch.randn(hidden, device=dev) / hidden**0.5

    def qoi(x, pos):
        return enc(input_ids=x).last_hidden_state[:, pos] @ w

    x = torch.randint(1000, 30000, (1, T), device=dev)
    ip = InfluencePatterns(qoi, enc)
    lig = LayerIntegratedGradients(qoi, enc.embeddings.word_embeddings)
    base = torch.full_like(x, 103)
    pairs = []
    for k in range(reps + 1):
        sync()
        t = time.perf_counter()
        lig.attribute(x, baselines=base, additional_forward_args=(T - 1,), n_steps=50)
        sync()
        a = time.perf_counter() - t
        t = time.perf_counter()
        res = ip.attribute(
            x,
            baselines=103,
            additional_forward_args=(T - 1,),
            output_position=T - 1,
            n_steps=50,
        )
        sync()
        b = time.perf_counter() - t
        if k:  # the first pair warms up
            pairs.append((a, b, b / (a * len(res.patterns[0]))))
    return {
        "lig_s": statistics.median(p[0] for p in pairs),
        "patterns_s": statistics.median(p[1] for p in pairs),
        "per_source_ratio": statistics.median(p[2] for p in pairs),
        "sources": len(res.patterns[0]),
    }


specs = [
    (6, 384, 11),
    (6, 384, 32),
    (12, 768, 11),
    (12, 768, 32),
    (12, 768, 64),
    (12, 768, 128),
]
if dev.type != "cuda":
    specs = [(2, 48, 6)]
for L, H, T in specs:
    try:
        out[f"L{L}_H{H}_T{T}"] = case(L, H, T)
    except Exception as e:
        out[f"L{L}_H{H}_T{T}"] = repr(e)[:300]
    print(json.dumps(out), flush=True)
