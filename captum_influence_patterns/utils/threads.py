"""How many CPU threads torch should use for a search: measured, not assumed.

The passes of a search are many small operations (rows of ``n_steps x sources``,
tens of tokens, hidden sizes in the hundreds). On an idle machine a few threads help a
little; on a busy one (other processes on the same cores) every extra OpenMP thread
waits for a core, and a search can take five times longer with two threads than with
one (docs/troubleshooting.md). :func:`fastest_threads` therefore times a small workload
shaped like a search's passes at one thread and at every core this process may use,
and returns the faster; the command line runs it unless ``--threads N`` is given or
``OMP_NUM_THREADS`` is set.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Dict, Optional

import torch

#: The workload's shape: rows x tokens of a search chunk, hidden size, MLP width.
_ROWS, _HIDDEN, _WIDTH = 256, 384, 1536


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def fastest_threads(
    candidates: Optional[list] = None, repeats: int = 2
) -> Dict[str, object]:
    """Time a small search-shaped workload at each thread count; the fastest.

    The workload is a feed-forward block and its transpose on ``(256, 384)`` rows
    (about 0.9 GFLOP, some tens of milliseconds per run on one core). Candidates run
    interleaved ``repeats`` times after a warm-up; the median decides, ties to fewer
    threads. torch's thread count is restored afterwards.

    Args:
        candidates (list of int, optional): Thread counts to try. Default: 1 and
            :func:`available_cores` (just 1 on a single core).
        repeats (int, optional): Interleaved runs per candidate. Default: 2

    Returns:
        dict: ``threads`` (the fastest count) and ``seconds`` (count -> median).
    """
    counts = sorted(set(candidates or [1, available_cores()]))
    if len(counts) == 1:
        return {"threads": counts[0], "seconds": {}}
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(_ROWS, _HIDDEN, generator=generator)
    up = torch.randn(_HIDDEN, _WIDTH, generator=generator) / _HIDDEN**0.5
    down = torch.randn(_WIDTH, _HIDDEN, generator=generator) / _WIDTH**0.5
    before = torch.get_num_threads()
    times: Dict[int, list] = {n: [] for n in counts}
    try:
        with torch.no_grad():
            for _ in range(repeats + 1):  # the first round warms up
                for n in counts:
                    torch.set_num_threads(n)
                    start = time.perf_counter()
                    hidden = torch.nn.functional.gelu(x @ up)
                    out = torch.nn.functional.layer_norm(hidden @ down + x, (_HIDDEN,))
                    (out @ down.T).sum()
                    times[n].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    seconds = {n: statistics.median(t[1:]) for n, t in times.items()}
    return {"threads": min(counts, key=lambda n: (seconds[n], n)), "seconds": seconds}
