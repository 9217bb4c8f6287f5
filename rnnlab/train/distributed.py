"""Data parallelism on torch's own engines, launched with ``torchrun`` (one process per device; torchrun's
c10d rendezvous joins several nodes: docs/scale.md).

``train.parallel`` picks the engine when more than one process runs:

- ``"ddp"``: ``DistributedDataParallel``. Gradients are bucketed and all-reduced while the backward pass
  runs; ``no_sync`` skips the communication on every gradient-accumulation micro-batch but the last.
- ``"fsdp"``: ``fully_shard`` (FSDP2) on every block, then on the root (embedding, final norm, head):
  parameters, gradients and optimizer state are sharded over the processes and a block's parameters are
  gathered only while it runs. ``set_requires_gradient_sync(False)`` is its ``no_sync``.

The split of the work (rnnlab.train.packing): every process builds the same model (same seed) and
trains on its shard of the global batch; each process's loss is its sum over scored items divided by the
GLOBAL count of scored items. Both engines average gradients over processes, so the trainer scales each
process's loss by the number of processes: the reduced gradient is the sum, and the update equals the
single-process update on the whole global batch up to float summation order. gloo on CPU, nccl on CUDA.

Checkpoints stay one safetensors file in the single-process layout (rnnlab.train.checkpoint):
``full_tensor`` gathers a sharded tensor (every process takes part), the coordinating process writes it;
on resume every process reads the file and keeps its own shard (``shard_like``), so a run resumes under
any number of processes and either engine.
"""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch import nn

from rnnlab.train.config import PARALLEL

__all__ = ["init_from_env", "world", "is_main", "wrap", "no_sync", "all_reduce_sum", "full_tensor",
           "shard_like", "shutdown"]


def init_from_env(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1). -> (rank, world_size, device):
    on CUDA, each process takes the GPU of its LOCAL_RANK."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if ws > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return (*world(), device)


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def wrap(model: nn.Module, parallel: str) -> nn.Module:
    """The module the training step calls: ``model`` itself on one process; DDP around it, or ``model``
    sharded in place (FSDP2: each block, then the root) on several."""
    if world()[1] == 1:
        return model
    if parallel == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        return fully_shard(model)
    raise ValueError(f"train.parallel must be one of {', '.join(PARALLEL)}; got {parallel!r}")


def no_sync(net: nn.Module, sync: bool):
    """Context for one micro-batch's backward: gradients reduced over processes only when ``sync`` (the
    last micro-batch of a step); the others accumulate locally."""
    if sync or world()[1] == 1:
        return nullcontext()
    if isinstance(net, nn.parallel.DistributedDataParallel):
        return net.no_sync()
    return _fsdp_no_sync(net)


@contextmanager
def _fsdp_no_sync(net):
    net.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        net.set_requires_gradient_sync(True)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over processes, in place (unchanged on a single process)."""
    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded one (a collective: every process must call it, in the same order);
    any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` on ``like``'s device, sharded as ``like`` is when that is a sharded tensor (each process keeps
    its own part of the copy it read; no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(like, DTensor):
        return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)
    return full.to(like.device)


def shutdown() -> bool:
    """Leave the process group at the end of a run; True if there was one. The barrier first: no process tears its
    group down (closing its connections, joining gloo's worker threads) while another still has collectives of the
    run in flight — a rank that left early aborted its peer once under load ("terminate called without an active
    exception"). A caller that gets True should leave with ``os._exit`` once its output is flushed: the same abort
    still came at exit, about once in ten runs under load, and none in 20 once the interpreter's finalization is
    skipped (objects that still hold gloo's work destroyed after the group, as pytorch/pytorch pull request 179291
    describes; inferred from the fix, not traced)."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.barrier()
    dist.destroy_process_group()
    return True
