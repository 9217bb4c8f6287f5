"""Selective copying, Gu & Dao 2023 ("Mamba", Sec. 3.1 and 4.1.1, Fig. 2).

``num_tokens`` data tokens (from 1..vocab_size-3) are scattered at random positions among
noise tokens (0) in a context of ``seq_len - num_tokens`` positions; then ``num_tokens``
marker tokens (vocab_size-1) follow, and at each marker the model must output the data
tokens in their order of appearance. Only the marker positions are scored (seq_acc = all
tokens copied). Test lengths grow the noisy context. Diagnoses: content-dependent
(selective) memory — time-invariant recurrences cannot skip the noise.
"""
from __future__ import annotations

import numpy as np

from rnnlab.tasks.base import IGNORE_INDEX, Task, as_tensor_batch, register_task


@register_task("selective_copy")
class SelectiveCopy(Task):
    """Selective copying (Mamba): copy the data tokens scattered among noise, in order."""

    output = "lm"
    report_metrics = ("acc", "seq_acc")

    def __init__(self, seq_len: int = 64, test_lengths: list[int] | None = None, num_tokens: int = 8, vocab_size: int = 12):
        self.num_tokens, self.vocab_size = int(num_tokens), int(vocab_size)
        if self.num_tokens < 1 or self.vocab_size < 4:
            raise ValueError(f"selective_copy: need num_tokens >= 1 and vocab_size >= 4, got {num_tokens}, {vocab_size}")
        self.marker = self.vocab_size - 1
        super().__init__(seq_len, test_lengths)

    def check_length(self, seq_len: int) -> None:
        if seq_len < 2 * self.num_tokens:
            raise ValueError(f"selective_copy: length {seq_len} impossible; need >= 2*num_tokens = {2 * self.num_tokens}")

    def model_io(self):
        return {"vocab_size": self.vocab_size, "head": "lm"}

    def sample(self, batch_size, seq_len, rng, split):
        T = seq_len or self.seq_len
        B, n = batch_size, self.num_tokens
        ctx = T - n
        data = rng.integers(1, self.vocab_size - 2, size=(B, n))
        pos = np.sort(np.argsort(rng.random((B, ctx)), 1)[:, :n], 1)  # n distinct sorted positions
        inputs = np.zeros((B, T), np.int64)
        np.put_along_axis(inputs, pos, data, 1)
        inputs[:, ctx:] = self.marker
        targets = np.full((B, T), IGNORE_INDEX, np.int64)
        targets[:, ctx:] = data
        return as_tensor_batch(inputs, targets)
