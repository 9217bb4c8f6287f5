"""Timing and peak-memory measurement shared by every benchmark row.

    stats = time_call(fn, warmup=1, reps=5, budget_s=2.0)   # -> Timing(median, lo, hi, n) in seconds
    peak = peak_rss_delta(fn)                                # -> bytes above the RSS before the call, or None

Timing: ``warmup`` untimed calls (they absorb lazy initialisation and JIT compiles),
then up to ``reps`` timed calls, stopping early once ``budget_s`` seconds of timed calls
have run (at least one timed call always runs). The median is the figure; lo/hi are
the fastest and slowest timed call (the spread).

Peak memory on CPU: torch keeps no CPU allocator statistics, so the probe works at
the operating-system level. Before the call it returns freed heap pages to the OS
(glibc ``malloc_trim(0)``), resets the process's peak resident set size (writing
``5`` to ``/proc/self/clear_refs``) and reads the current RSS; after the call it
reads the peak (``VmHWM``). The difference is the peak of the memory the call
touched beyond what was already resident: activations, gradients, workspaces. It is
accurate to about a page per allocation and needs Linux with glibc; elsewhere the
probe reports None (the JSON says ``null``) rather than a made-up number. On CUDA
tensors ``torch.cuda.max_memory_allocated`` is used instead.
"""
from __future__ import annotations

import contextlib
import ctypes
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

__all__ = ["Timing", "time_call", "race", "fwd_and_train", "peak_rss_delta", "memory_probe_available", "time_limit", "memory_cap",
           "BenchTimeout"]


@dataclass
class Timing:
    """Seconds per call: median of ``n`` timed calls, fastest (lo) and slowest (hi)."""

    median: float
    lo: float
    hi: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], *, warmup: int = 1, reps: int = 5, budget_s: float = 2.0, device=None) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then up to ``reps`` timed times within ``budget_s`` seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    spent = 0.0
    while len(times) < max(1, reps) and (not times or spent < budget_s):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    return Timing(statistics.median(times), min(times), max(times), len(times))


# --- peak memory --------------------------------------------------------------

def race(fns: dict[str, Callable[[], object]], budget_s: float, max_rounds: int = 7, min_rounds: int = 2,
         stat: Callable[[list[float]], object] = min, clock: Callable[[], float] = time.perf_counter) -> dict:
    """{name: zero-argument fn} -> {name: stat(seconds of its timed calls)}. The fns run in turns, one call
    of each per round after one warm-up round, so that a change of the machine's load hits every row of a
    comparison alike; at least ``min_rounds`` rounds, at most ``max_rounds``, none started after ``budget_s``
    (wall seconds). ``clock`` times the calls (``time.process_time`` with one torch thread: CPU seconds, which
    a loaded machine's descheduling does not inflate)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {n: [] for n in fns}
    start = time.perf_counter()
    for r in range(max_rounds):
        for n, fn in fns.items():
            t0 = clock()
            fn()
            times[n].append(clock() - t0)
        if r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    return {n: stat(t) for n, t in times.items()}


def fwd_and_train(fn: Callable[..., object], inputs: dict) -> tuple[Callable[[], None], Callable[[], None]]:
    """fn(**inputs) -> output or (output, ...), inputs leaf tensors -> (forward call under no_grad,
    forward + backward call). The backward takes a fixed random cotangent, so no loss ops are timed."""
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    with torch.no_grad():
        cot = torch.randn_like(first(fn(**inputs)).float())

    def fwd():
        with torch.no_grad():
            fn(**inputs)

    def train():
        for t in inputs.values():
            t.grad = None
        first(fn(**inputs)).float().backward(cot)

    return fwd, train


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) * 1024
    return out


def memory_probe_available() -> bool:
    """True where the RSS-peak probe works (Linux with glibc and a writable clear_refs)."""
    if _LIBC is None or not hasattr(_LIBC, "malloc_trim"):
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM" in _proc_status()
    except OSError:
        return False


def peak_rss_delta(fn: Callable[[], object], device=None) -> int | None:
    """Peak bytes ``fn()`` held beyond what was resident before it (None where it cannot be measured)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    if not memory_probe_available():
        fn()
        return None
    _LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _proc_status()["VmRSS"]
    fn()
    return max(0, _proc_status()["VmHWM"] - base)


# --- a wall-clock limit for one measurement -----------------------------------

class BenchTimeout(Exception):
    """A single measurement ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise BenchTimeout inside the block after ``seconds`` (main thread on POSIX only; else no limit).

    Python checks for the alarm between bytecodes, so a long single torch op finishes
    first; Python-level loops (reference recurrences) stop promptly. While numba compiles or
    loads a cached kernel (its compiler lock is held) the alarm is put off in short steps:
    an exception thrown into numba's compiler can leave its registries broken for the rest
    of the process ("generator raised StopIteration" on every later compile).
    """
    usable = seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
    if usable:
        import threading

        usable = threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def handler(signum, frame):
        if _numba_compiling():
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        raise BenchTimeout(f"took longer than {seconds:g} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _numba_compiling() -> bool:
    lock_module = sys.modules.get("numba.core.compiler_lock")
    return lock_module is not None and lock_module.global_compiler_lock.is_locked()


def _meminfo_bytes(path: str, key: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def memory_cap(extra_bytes: int | None = None, fraction: float = 0.9):
    """Cap the process's data memory inside the block (Linux RLIMIT_DATA, which counts the heap and private anonymous
    mappings: every torch CPU tensor) at what it holds now plus ``extra_bytes`` (None: ``fraction`` of the memory the
    system has available now). An allocation beyond it then raises (torch: RuntimeError "not enough memory", Python:
    MemoryError), which the runner records as that row's error, instead of the kernel's out-of-memory killer ending the
    whole run. Restored on exit; no-op where the limit or /proc is unavailable. Yields the cap in bytes or None."""
    try:
        import resource
    except ImportError:  # not POSIX
        yield None
        return
    held = _meminfo_bytes("/proc/self/status", "VmData")
    if extra_bytes is None:
        avail = _meminfo_bytes("/proc/meminfo", "MemAvailable")
        extra_bytes = None if avail is None else int(fraction * avail)
    if held is None or extra_bytes is None or not hasattr(resource, "RLIMIT_DATA"):
        yield None
        return
    old = resource.getrlimit(resource.RLIMIT_DATA)
    cap = held + extra_bytes
    if old[1] != resource.RLIM_INFINITY:
        cap = min(cap, old[1])
    resource.setrlimit(resource.RLIMIT_DATA, (cap, old[1]))
    try:
        yield cap
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, old)
