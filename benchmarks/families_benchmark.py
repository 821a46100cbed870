"""The fast pattern search on BERT, GPT-2 and Llama of one size, next to Captum's LIG.

Randomly initialised 6-layer, 384-hidden, 12-head models (Llama with 4 key/value heads:
grouped-query attention), 11 tokens, 50 steps, 10 source tokens. The output position is
[MASK] (6) for BERT and the last position for the causal models, whose sources are the
10 earlier positions. Times are medians of interleaved repeats in one process.

A second part measures memory for a long input (``--long`` tokens, BERT): peak resident
memory of the fast search with ``internal_batch_size`` None (all sources in one pass)
and with ``n_steps`` rows (one source per pass), each in a fresh child process.

Run: ``python benchmarks/families_benchmark.py [--repeats 3] [--long 64]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from typing import Callable, Dict, Optional, Tuple

import torch
from captum.attr import LayerIntegratedGradients
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from captum_influence_patterns import (
    InfluencePatterns,
    analysis_mode,
    masked_lm_logit_difference,
)
from core_benchmark import interleaved_times, resident_peak_mib

STEPS, HIDDEN, LAYERS, HEADS = 50, 384, 6, 12


def build(family: str, length: int) -> Tuple[torch.nn.Module, torch.Tensor, int]:
    torch.manual_seed(0)
    if family == "bert":
        model = BertForMaskedLM(
            BertConfig(
                hidden_size=HIDDEN,
                num_hidden_layers=LAYERS,
                num_attention_heads=HEADS,
                intermediate_size=4 * HIDDEN,
                max_position_embeddings=max(512, length),
            )
        )
    elif family == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                n_embd=HIDDEN,
                n_layer=LAYERS,
                n_head=HEADS,
                n_positions=max(1024, length),
            )
        )
    else:
        model = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=HIDDEN,
                num_hidden_layers=LAYERS,
                num_attention_heads=HEADS,
                num_key_value_heads=4,
                intermediate_size=4 * HIDDEN,
                vocab_size=32000,
            )
        )
    ids = torch.randint(1000, 2000, (1, length))
    output = length // 2 if family == "bert" else length - 1
    return model.eval(), ids, output


def runs(
    family: str, length: int, internal_batch_size: Optional[int] = None
) -> Dict[str, Callable[[], object]]:
    model, ids, output = build(family, length)
    forward = masked_lm_logit_difference(model)
    args = (torch.tensor([output]), torch.tensor([1500]), torch.tensor([1501]))
    ip = InfluencePatterns(forward, model)
    lig = LayerIntegratedGradients(forward, ip.graph.word_embeddings)

    def run_lig():
        with analysis_mode(model):
            return lig.attribute(ids, additional_forward_args=args, n_steps=STEPS)

    def run_fast():
        return ip.attribute(
            ids,
            additional_forward_args=args,
            output_position=output,
            n_steps=STEPS,
            internal_batch_size=internal_batch_size,
        )

    return {"LIG": run_lig, "fast": run_fast}


def _peak(family: str, length: int, internal_batch_size: Optional[int], queue) -> None:
    torch.set_num_threads(torch.get_num_threads())
    run = runs(family, length, internal_batch_size)["fast"]
    before = resident_peak_mib()
    start = time.perf_counter()
    run()
    queue.put((before, resident_peak_mib(), time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long", type=int, default=64)
    options = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{LAYERS} layers x {HIDDEN} hidden x {HEADS} heads, 11 tokens, {STEPS} steps"
    )
    for family in ("bert", "gpt2", "llama"):
        times = interleaved_times(runs(family, 11), options.repeats)
        lig, fast = (statistics.median(times[n]) for n in ("LIG", "fast"))
        print(
            f"  {family:<6} LIG {lig:6.3f} s   fast (10 sources) {fast:6.3f} s   "
            f"fast per source / LIG {fast / 10 / lig:5.2f} x"
        )
    context = multiprocessing.get_context("spawn")
    print(f"BERT, {options.long} tokens, {options.long - 1} sources: peak resident MiB")
    for size in (None, STEPS):
        queue = context.Queue()
        child = context.Process(target=_peak, args=("bert", options.long, size, queue))
        child.start()
        before, after, seconds = queue.get()
        child.join()
        print(
            f"  internal_batch_size={size!s:<5} {after:7.0f} MiB (model alone "
            f"{before:.0f}), {seconds:.1f} s"
        )


if __name__ == "__main__":
    main()
