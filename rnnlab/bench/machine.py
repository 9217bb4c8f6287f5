"""What machine a benchmark ran on, and what that machine can do at best (the roofline).

    describe_machine() -> dict   # CPU model, cores, threads, torch / numba / transformers versions
    measure_roofline(quick=False) -> dict
        {"matmul_gflops": {"float32": .., "bfloat16": ..},      # torch.mm, 1024 x 1024 x 1024, fastest call
         "bmm64_gflops": {"float32": .., "bfloat16": ..},       # torch.bmm, 64 x 64 x 64 tiles, batch 1024
         "copy_gbps": ..}                                       # dst.copy_(src), 64 MiB, read + write bytes

An op's achieved fraction of the roofline is its FLOPs per second divided by
``matmul_gflops`` for its dtype: the best a chunkwise form (mostly matmuls) could do.
"""
from __future__ import annotations

import os
import platform
import sys

import torch

from rnnlab.allocator import allocator_tuned
from rnnlab.bench.timing import time_call

__all__ = ["describe_machine", "measure_roofline", "cpu_model"]


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() elsewhere), with its family/model numbers."""
    name, fam, model = None, None, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if key == "model name" and name is None:
                    name = val
                elif key == "cpu family" and fam is None:
                    fam = val
                elif key == "model" and model is None:
                    model = val
                if name and fam and model:
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    return f"{name} (family {fam}, model {model})" if fam else name


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2", "fma")))
    except OSError:
        pass
    return []


def _version(mod: str) -> str | None:
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "?")
    except Exception:
        return None


def describe_machine() -> dict:
    """The facts a benchmark table must be read with."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "numba": _version("numba"),
        "transformers": _version("transformers"),
        "malloc_tuned": allocator_tuned(),  # rnnlab/allocator.py: large tensors reuse heap memory
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def measure_roofline(quick: bool = False, device: str = "cpu") -> dict:
    """Measured matmul GFLOP/s (fp32, bf16; one big GEMM and batched 64x64 tiles) and copy bandwidth."""
    reps = 6 if quick else 15
    budget = 0.3 if quick else 1.5
    out: dict = {"matmul_gflops": {}, "bmm64_gflops": {}}
    # a peak is a best case: the fastest of the timed calls (on a shared machine the median reads the load)
    with torch.no_grad():
        n, nb = 1024, 1024
        for dt in (torch.float32, torch.bfloat16):
            key = str(dt).removeprefix("torch.")
            a, b, c = (torch.randn(n, n, device=device, dtype=dt) for _ in range(3))
            t = time_call(lambda: torch.mm(a, b, out=c), warmup=2, reps=reps, budget_s=budget, device=device)
            out["matmul_gflops"][key] = round(2 * n**3 / t.lo / 1e9, 1)
            a, b, c = (torch.randn(nb, 64, 64, device=device, dtype=dt) for _ in range(3))
            t = time_call(lambda: torch.bmm(a, b, out=c), warmup=2, reps=reps, budget_s=budget, device=device)
            out["bmm64_gflops"][key] = round(2 * nb * 64**3 / t.lo / 1e9, 1)
        numel = 64 * 2**20 // 4
        src = torch.randn(numel, device=device)
        dst = torch.empty_like(src)
        t = time_call(lambda: dst.copy_(src), warmup=2, reps=reps, budget_s=budget, device=device)
        out["copy_gbps"] = round(2 * numel * 4 / t.lo / 1e9, 1)
        out["matmul_shape"] = f"mm {n}x{n}x{n}; bmm {nb}x64x64x64; copy {numel * 4 // 2**20} MiB"
    return out
