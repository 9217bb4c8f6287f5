"""Split independent batch rows of a numba kernel over Python threads.

The numba entry points (the RNN and selective-scan kernels) are compiled ``nogil=True`` and take a row
range (lo, hi): plain threads then run them in parallel. numba's ``parallel=True``/``prange`` adds its
parfors pass to the first (cold) compile (the lstm kernel took 45 s with it; docs/architecture.md), and its
thread pool spins between calls and needs its thread count kept in step with torch's. (The memory-bound
linear scan keeps ``prange``: see _scan_numba.py.) Thread counts are set by entry points through
rnnlab.runtime (``set_threads``, ``scoped_threads``), which sizes torch's and numba's pools together.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["run_rows"]

_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool)


def run_rows(fn, batch: int, *args, min_rows: int = 1) -> None:
    """fn(*args, lo, hi) over rows [0, batch) split into min(torch.get_num_threads(), batch // min_rows) contiguous
    groups, one per thread (the calling thread runs the first); returns when all are done."""
    global _POOL
    parts = max(1, min(torch.get_num_threads(), batch // min_rows))
    if parts > 1 and (_POOL is None or _POOL[0] != os.getpid() or _POOL[1]._max_workers < parts - 1):
        if _POOL is not None and _POOL[0] == os.getpid():
            _POOL[1].shutdown(wait=False)
        # keyed by pid: a forked child inherits the pool object but not its threads
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=parts - 1, thread_name_prefix="rnnlab-rows"))
    futures = [_POOL[1].submit(fn, *args, p * batch // parts, (p + 1) * batch // parts) for p in range(1, parts)]
    fn(*args, 0, batch // parts)
    for f in futures:
        f.result()

