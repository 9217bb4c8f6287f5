"""Process-wide settings, set by entry points only: thread counts and glibc's allocator thresholds.

    threads() -> Threads(torch, numba)       # current counts (numba: None until its thread pool starts)
    set_threads(n)                           # torch and numba on n threads, until changed again
    with scoped_threads(n): ...              # n threads inside the block; the previous counts come back
    tune_allocator() -> bool                 # raise glibc's mmap/trim thresholds; one way, never undone
    allocator_tuned() -> bool                # whether tune_allocator has been applied in this process
    usable_cpus() -> int                     # the CPUs this process may run on

Importing rnnlab changes none of these. The ``rnnlab`` commands, sweep workers and the scripts in
benchmarks/ call :func:`tune_allocator` and choose the thread count; library functions leave the
process as they found it: ``train()`` and ``run_bench()`` run under :func:`scoped_threads` with the
count their config names (``train.threads``, ``BenchConfig.threads``) and restore the caller's counts
on return or on an exception. Use the same in your own script::

    from rnnlab import runtime
    runtime.tune_allocator()                 # once, at start (RNNLAB_TUNE_MALLOC=0 makes it a no-op)
    with runtime.scoped_threads(2):
        ...

Threads. rnnlab's compiled CPU kernels run on two pools besides torch's: the RNN and selective-scan
kernels split batch rows over ``torch.get_num_threads()`` Python threads (rnnlab/ops/_threads.py), and
the linear scan runs on numba's pool, whose idle threads spin between calls unless it is sized too:
measured 7-10x the CPU time per training step with one torch thread on two busy cores. So a thread
count here always sets both. torch's count is process-wide; numba's belongs to the calling thread
(``numba.set_num_threads`` is thread-local), so set it from the thread that runs the model. Neither is
safe to change from two threads at once. The two are not independent: when numba's OpenMP pool starts
(its first parallel kernel, or the first ``numba.set_num_threads``) it resets torch's count to
``NUMBA_NUM_THREADS`` (measured with torch 2.13 and numba 0.68: torch at 1 thread came back at 2), so
:func:`set_threads` starts numba's pool first and sets torch after it, and :func:`scoped_threads`
restores in the same order. A pool that first starts inside a block without :func:`set_threads` still
resets torch's count there; the scope puts it back on exit.

Allocator. PyTorch's CPU tensors come from the C library's malloc. glibc serves every block above its
mmap threshold (128 KiB at start, adapting up to 32 MiB) with a fresh mmap and unmaps it on free, so
each new large tensor is page-faulted in again: a (4, 2048, 768) float32 temporary (25 MB) costs ~6 ms
of page faults before any arithmetic, more than the element-wise op that fills it. Raising the mmap
and trim thresholds keeps freed blocks in the heap for the next tensor, as the caching allocators
people LD_PRELOAD (jemalloc, tcmalloc) do. Measured on the 2-core reference machine, d_model=256, B=4,
T=2048, forward + backward, two threads, in turns: ``mamba2`` 13.7k -> 21.8k tokens/s, ``mamba`` 19.8k
-> 29.1k, ``lstm`` 28.7k -> 43.5k, ``gated_deltanet`` 21.2k -> 24.3k. The price is resident memory:
freed blocks stay mapped (up to the trim threshold) for reuse, so a process's RSS stays near its peak.

Tuning the allocator is a one-way setting of the process, and no context manager offers it: glibc has
no call that reads the thresholds back, and setting M_MMAP_THRESHOLD switches off its adaptive
threshold for good, so there is no earlier state to restore. Only entry points call it (or set
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment instead).
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import numbers
import os
import sys
from typing import Iterator, NamedTuple

import torch

__all__ = ["Threads", "threads", "set_threads", "scoped_threads", "tune_allocator", "allocator_tuned", "usable_cpus"]

log = logging.getLogger(__name__)


# --- threads ------------------------------------------------------------------

class Threads(NamedTuple):
    """Thread counts of this process: ``torch.get_num_threads()`` and the calling thread's
    ``numba.get_num_threads()``, None while numba's thread pool has not been started (it starts with
    ``numba.config.NUMBA_NUM_THREADS``, the ``NUMBA_NUM_THREADS`` environment variable or the CPU count)."""

    torch: int
    numba: int | None


def _numba_threads() -> int | None:
    """The calling thread's numba count, or None if numba's pool is not started (reading it never starts it)."""
    numba = sys.modules.get("numba")
    if numba is None:
        return None
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if parallel is not None and not getattr(parallel, "_is_initialized", True):
        return None
    return numba.get_num_threads()


def threads() -> Threads:
    """The current torch and numba thread counts (see :class:`Threads`). Starts and imports nothing."""
    return Threads(torch.get_num_threads(), _numba_threads())


def _set_numba(n: int) -> None:
    import numba

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def set_threads(n: int) -> None:
    """Run torch and numba (the compiled CPU kernels of rnnlab.ops) on ``n`` >= 1 threads until changed again.
    numba's count is capped at ``numba.config.NUMBA_NUM_THREADS`` (the pool's size, fixed when it starts) and
    set for the calling thread. A process-wide change: entry points call this; library code uses
    :func:`scoped_threads`."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"threads must be an integer >= 1, got {n!r}")
    n = int(n)
    _set_numba(n)  # first: starting numba's OpenMP pool resets torch's count to NUMBA_NUM_THREADS
    torch.set_num_threads(n)


@contextlib.contextmanager
def scoped_threads(n: int | None = None) -> Iterator[Threads]:
    """Run the block with torch and numba on ``n`` threads (:func:`set_threads`; None: leave them as they
    are), then restore the counts found on entry, on an exception too, whatever the block set meanwhile.
    Yields the counts in force inside. Also a decorator: ``@scoped_threads()`` restores the counts after
    every call of the function.

    A numba pool that was not started on entry but started inside is set back to the count a fresh
    pool has (``numba.config.NUMBA_NUM_THREADS``), which is what the caller would have seen."""
    before = threads()
    try:
        if n is not None:
            set_threads(n)
        yield threads()
    finally:  # numba first, then torch (see set_threads)
        if before.numba is not None:
            _set_numba(before.numba)
        elif _numba_threads() is not None:  # started inside the block
            _set_numba(sys.modules["numba"].config.NUMBA_NUM_THREADS)
        if torch.get_num_threads() != before.torch:
            torch.set_num_threads(before.torch)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- allocator ----------------------------------------------------------------

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (glibc malloc.h)
_APPLIED: tuple[int, int] | None = None  # the (mmap, trim) thresholds applied, once tuned


def tune_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 32) -> bool:
    """Set glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD (bytes) for this process, for good (see the module
    docstring: nothing can undo it). Returns True when applied; False, and nothing changes, off Linux/glibc or
    when the environment sets ``RNNLAB_TUNE_MALLOC=0``. Idempotent: a repeated call with the same thresholds
    returns True without calling glibc again."""
    global _APPLIED
    if _APPLIED == (mmap_threshold, trim_threshold):
        return True
    if os.environ.get("RNNLAB_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave the allocator alone
        return False
    # mallopt takes an int; glibc versions that refuse thresholds above HEAP_MAX_SIZE / 2 accept 32 MiB
    ok_mmap = any(mallopt(_M_MMAP_THRESHOLD, min(v, 2**31 - 1)) == 1 for v in (mmap_threshold, 32 << 20))
    ok_trim = mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)) == 1
    log.debug("tune_allocator: mmap threshold %s, trim threshold %s", ok_mmap, ok_trim)
    if ok_mmap and ok_trim:
        _APPLIED = (mmap_threshold, trim_threshold)
    return ok_mmap and ok_trim


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` has been applied in this process (benchmark results record it)."""
    return _APPLIED is not None
