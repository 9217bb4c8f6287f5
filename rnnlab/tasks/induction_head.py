"""Induction heads, Olsson et al. 2022; the synthetic setting of Gu & Dao 2023 ("Mamba", Sec. 4.1.2).

A sequence of random tokens (1..vocab_size-1) contains one trigger token (0) followed by
an answer token; the sequence ends with the trigger again and the model must output the
answer there (only the last position is scored). Training uses ``seq_len``; the default
test lengths go up to 16x the training length (Mamba tests 2^6 .. 2^20 after training on 256).
Diagnoses: in-context recall by copying the token after a previous occurrence, and
whether that mechanism extrapolates in length.
"""
from __future__ import annotations

import numpy as np

from rnnlab.tasks.base import IGNORE_INDEX, Task, as_tensor_batch, register_task


@register_task("induction_head")
class InductionHead(Task):
    """Induction head (Mamba setting): after the trigger reappears, output the token that followed it."""

    output = "lm"
    report_metrics = ("acc",)

    def __init__(self, seq_len: int = 64, test_lengths: list[int] | None = None, vocab_size: int = 16):
        self.vocab_size = int(vocab_size)
        if self.vocab_size < 3:
            raise ValueError(f"induction_head: vocab_size must be >= 3, got {vocab_size}")
        if test_lengths is None:
            test_lengths = [seq_len * f for f in (1, 2, 4, 8, 16)]
        super().__init__(seq_len, test_lengths)

    def check_length(self, seq_len: int) -> None:
        if seq_len < 4:
            raise ValueError(f"induction_head: length {seq_len} impossible; need >= 4")

    def model_io(self):
        return {"vocab_size": self.vocab_size, "head": "lm"}

    def sample(self, batch_size, seq_len, rng, split):
        T = seq_len or self.seq_len
        B = batch_size
        inputs = rng.integers(1, self.vocab_size, size=(B, T))
        pos = rng.integers(0, T - 2, size=B)  # trigger position; answer at pos+1 < T-1
        rows = np.arange(B)
        inputs[rows, pos] = 0
        inputs[:, -1] = 0
        targets = np.full((B, T), IGNORE_INDEX, np.int64)
        targets[:, -1] = inputs[rows, pos + 1]
        return as_tensor_batch(inputs, targets)
