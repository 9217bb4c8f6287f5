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

__all__ = ["run_rows", "run_calls"]

_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool)


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1]._max_workers < workers:
        if _POOL is not None and _POOL[0] == os.getpid():
            _POOL[1].shutdown(wait=False)
        # keyed by pid: a forked child inherits the pool object but not its threads
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rnnlab-rows"))
    return _POOL[1]


def run_calls(calls) -> None:
    """Run the zero-argument callables ``calls`` at once, one per thread (the calling thread runs the first)."""
    futures = [_pool(len(calls) - 1).submit(c) for c in calls[1:]] if len(calls) > 1 else []
    calls[0]()
    for f in futures:
        f.result()


def run_rows(fn, batch: int, *args, min_rows: int = 1) -> None:
    """fn(*args, lo, hi) over rows [0, batch) split into min(torch.get_num_threads(), batch // min_rows) contiguous
    groups, one per thread (the calling thread runs the first); returns when all are done."""
    parts = max(1, min(torch.get_num_threads(), batch // min_rows))
    run_calls([lambda p=p: fn(*args, p * batch // parts, (p + 1) * batch // parts) for p in range(parts)])

