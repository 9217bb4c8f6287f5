"""Packed training batches: variable-length examples back to back in a fixed token budget, no padding.

With ``train.pack = true`` a step's examples are drawn from the step's own generator
(``rng_for(seed, "train", step)``, so a packed run resumes exactly like an unpacked one) batch after
batch until the next example would overflow the budget (``train.pack_tokens``, default
``batch_size * task.seq_len``: the padded batch's size). Each example is cut to its real length
(``Batch.lengths``), the examples are concatenated into one (1, T_total) row with ``cu_seqlens``, and
the model resets every recurrence, conv and position at the boundaries (the mixer contract). The
loss is the same per-token mean over scored targets; only the padding's compute is gone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rnnlab.ops.varlen import cu_seqlens_from_lengths
from rnnlab.tasks.base import Task, rng_for

__all__ = ["PackedBatch", "packed_batch"]


@dataclass
class PackedBatch:
    """inputs (1, T_total[, F]); targets (1, T_total[, O]) or (N,) for classification; cu_seqlens (N + 1,);
    count: scored targets over all processes' examples (the loss's denominator); tokens: real tokens, all processes."""

    inputs: Tensor
    targets: Tensor
    cu_seqlens: Tensor
    count: Tensor
    tokens: int

    def to(self, device) -> "PackedBatch":
        return PackedBatch(self.inputs.to(device), self.targets.to(device), self.cu_seqlens.to(device), self.count.to(device), self.tokens)


def packed_batch(task: Task, batch_size: int, seed: int, step: int, budget: int | None = None,
                 rank: int = 0, world: int = 1) -> PackedBatch:
    """The packed batch of ``step``: examples filling ``budget`` tokens (per process: budget // world),
    process ``rank`` taking every world-th example."""
    budget = (budget or batch_size * task.seq_len) // world * world
    rng = rng_for(seed, "train", step)
    rows, total = [], 0
    while True:
        b = task.sample(batch_size, None, rng, "train")
        lengths = b.row_lengths()
        for i, n in enumerate(lengths):
            if total + n > budget and len(rows) >= world:
                return _pack(task, rows, rank, world)
            rows.append((b.inputs[i, :n], b.targets[i] if task.output == "classify" else b.targets[i, :n]))
            total += n


def _pack(task: Task, rows: list, rank: int, world: int) -> PackedBatch:
    mine = rows[rank::world]
    count = sum(int(task.count_scored(t[None]).item()) for _, t in rows)
    inputs = torch.cat([x for x, _ in mine])[None]
    targets = torch.stack([t for _, t in mine]) if task.output == "classify" else torch.cat([t for _, t in mine])[None]
    cu = cu_seqlens_from_lengths([len(x) for x, _ in mine])
    return PackedBatch(inputs, targets, cu, torch.tensor(max(count, 1)), sum(len(x) for x, _ in rows))
