"""Data parallelism through torch.distributed, launched with ``torchrun``.

Every process builds the same model (same seed) and draws the same global batch (a batch
depends only on (seed, step)); process r trains on rows [r·b, (r+1)·b) of it. Each process's
loss is its sum over scored items divided by the GLOBAL count of scored items, and the
gradients are summed with one all-reduce, so the update equals the single-process update on
the whole global batch up to float summation order. gloo on CPU, nccl on CUDA.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "world", "all_reduce_grads", "is_main", "shutdown"]


def init_from_env(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1). -> (rank, world_size)."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return world()


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def all_reduce_grads(params: list[torch.Tensor]) -> None:
    """Sum the gradients over processes in one flat buffer (no-op on a single process)."""
    if world()[1] == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    i = 0
    for g in grads:
        g.copy_(flat[i:i + g.numel()].view_as(g))
        i += g.numel()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
