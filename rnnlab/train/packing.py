"""Training batches, one process's share: its rows of the global batch, or its examples packed back to back.

A step's global batch is a function of (seed, step) only (``rng_for(seed, "train", step)``), cut into
``shards`` = processes x gradient-accumulation micro-batches; process r runs shards r * grad_accum ...
(r + 1) * grad_accum - 1 (rnnlab.train.distributed). What a step trains on therefore does not depend on the
number of processes, and a resumed run, on any number of them, sees the batches an uninterrupted one would.

- Padded (``train.pack = false``): shard j holds rows [j b, (j + 1) b) of the global batch, b = batch_size /
  shards. ``Task.train_batch(..., rows=)`` returns just those rows (a real-data task reads only their windows).
- Packed (``train.pack = true``): examples are drawn batch after batch until the next one would overflow the
  step's budget (``train.pack_tokens``, default ``batch_size * task.seq_len``: the padded batch's size). Each is
  cut to its real length (``Batch.lengths``); shard j takes every shards-th example, concatenated into one
  (1, T_total) row with ``cu_seqlens``, and the model resets every recurrence, conv and position at the
  boundaries (the mixer contract). A step always holds at least one example per shard.

The loss is the per-token mean over the scored targets of the whole global batch: each shard reports its
``count``, the trainer sums them over micro-batches and processes, and only the padding's compute is gone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rnnlab.ops.varlen import cu_seqlens_from_lengths
from rnnlab.tasks.base import Task, rng_for

__all__ = ["TrainBatch", "train_shard", "packed_batch"]


@dataclass
class TrainBatch:
    """inputs (b, T[, F]) padded rows, or (1, T_total[, F]) packed examples with cu_seqlens (N + 1,); targets to
    match ((N,) for packed classification); count: scored targets in this shard; tokens: its tokens; prefix_len (b,):
    each row's prompt prefix for bidirectional layers (rnnlab.models.bidirectional; None: the task's context)."""

    inputs: Tensor
    targets: Tensor
    cu_seqlens: Tensor | None
    count: int
    tokens: int
    prefix_len: Tensor | None = None

    def to(self, device) -> "TrainBatch":
        cu = None if self.cu_seqlens is None else self.cu_seqlens.to(device)
        prefix = None if self.prefix_len is None else self.prefix_len.to(device)
        return TrainBatch(self.inputs.to(device), self.targets.to(device), cu, self.count, self.tokens, prefix)


def train_shard(task: Task, step: int, shard: int, shards: int, *, batch_size: int, seed: int, pack: bool,
                pack_tokens: int | None) -> TrainBatch:
    """Shard ``shard`` of ``shards`` of the global batch of ``step`` (padded rows, or packed examples)."""
    if pack:
        return packed_batch(task, batch_size, seed, step, pack_tokens, shard, shards)
    b = batch_size // shards
    rows = task.train_batch(batch_size, seed, step, rows=slice(shard * b, (shard + 1) * b))
    return TrainBatch(rows.inputs, rows.targets, None, int(task.count_scored(rows.targets)),
                      rows.inputs.shape[0] * rows.inputs.shape[1])


def packed_batch(task: Task, batch_size: int, seed: int, step: int, budget: int | None = None,
                 shard: int = 0, shards: int = 1) -> TrainBatch:
    """The packed batch of ``step``: examples filling ``budget`` tokens; shard ``shard`` takes every shards-th."""
    budget = budget or batch_size * task.seq_len
    rng = rng_for(seed, "train", step)
    rows, total = [], 0
    while True:
        b = task.sample(batch_size, None, rng, "train")
        lengths = b.row_lengths()
        for i, n in enumerate(lengths):
            if total + n > budget and len(rows) >= shards:
                return _pack(task, rows[shard::shards])
            rows.append((b.inputs[i, :n], b.targets[i] if task.output == "classify" else b.targets[i, :n]))
            total += n


def _pack(task: Task, mine: list) -> TrainBatch:
    inputs = torch.cat([x for x, _ in mine])[None]
    targets = torch.stack([t for _, t in mine]) if task.output == "classify" else torch.cat([t for _, t in mine])[None]
    cu = cu_seqlens_from_lengths([len(x) for x, _ in mine])
    return TrainBatch(inputs, targets, cu, int(task.count_scored(targets)), inputs.shape[1])
