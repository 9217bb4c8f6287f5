"""Multi-query associative recall (MQAR), Arora et al. 2023, "Zoology" (Sec. 3, App. E).

A sequence starts with ``num_kv_pairs`` key-value pairs (keys from the lower half of the
vocabulary, values from the upper half, all distinct within a sequence), followed by the
same keys again as queries, in random order, at positions drawn with a power-law gap
distribution p(g) ∝ a·g^(a-1) (Zoology's ``power_a``). Only the position of a query key
is scored: its target is the value paired with that key. Other positions hold random
tokens (``random_non_queries``) or 0. This follows Zoology's ``multiquery_ar`` generator.
Diagnoses: associative recall capacity of a fixed-size state (the Zoology plot).
"""
from __future__ import annotations

import numpy as np

from rnnlab.tasks.base import IGNORE_INDEX, Task, as_tensor_batch, register_task


@register_task("mqar")
class MQAR(Task):
    """Multi-query associative recall (Zoology): query keys must retrieve their values."""

    output = "lm"
    report_metrics = ("acc", "seq_acc")

    def __init__(self, seq_len: int = 64, test_lengths: list[int] | None = None, num_kv_pairs: int = 8,
                 vocab_size: int = 256, power_a: float = 0.01, random_non_queries: bool = True):
        self.num_kv_pairs, self.vocab_size = int(num_kv_pairs), int(vocab_size)
        self.power_a, self.random_non_queries = float(power_a), bool(random_non_queries)
        if self.num_kv_pairs < 1 or self.vocab_size // 2 - 1 < self.num_kv_pairs:
            raise ValueError(f"mqar: need 1 <= num_kv_pairs <= vocab_size//2 - 1 distinct keys, got "
                             f"num_kv_pairs={num_kv_pairs}, vocab_size={vocab_size}")
        super().__init__(seq_len, test_lengths)

    def check_length(self, seq_len: int) -> None:
        if seq_len % 2 or seq_len < 4 * self.num_kv_pairs:
            raise ValueError(f"mqar: length {seq_len} impossible with num_kv_pairs={self.num_kv_pairs}; "
                             f"lengths must be even and >= 4*num_kv_pairs = {4 * self.num_kv_pairs}")

    def context_len(self, seq_len: int) -> int:
        """The key-value pairs (what JRT-Prompt gives twice)."""
        return 2 * self.num_kv_pairs

    def model_io(self):
        return {"vocab_size": self.vocab_size, "head": "lm"}

    def sample(self, batch_size, seq_len, rng, split):
        T = seq_len or self.seq_len
        B, n, V = batch_size, self.num_kv_pairs, self.vocab_size
        half = V // 2
        keys = np.argsort(rng.random((B, half - 1)), 1)[:, :n] + 1  # distinct keys in [1, V/2)
        values = np.argsort(rng.random((B, V - half)), 1)[:, :n] + half  # distinct values in [V/2, V)
        ctx = 2 * n
        kvs = np.empty((B, ctx), np.int64)
        kvs[:, 0::2], kvs[:, 1::2] = keys, values
        space = (T - ctx) // 2
        p = self.power_a * np.arange(1, space + 1) ** (self.power_a - 1)
        p = p / p.sum()
        # n distinct gaps per row drawn without replacement with probabilities p (Gumbel top-k)
        gaps = np.argsort(-(np.log(p)[None] + rng.gumbel(size=(B, space))), 1)[:, :n]
        queries = np.zeros((B, T - ctx + 1), np.int64)
        np.put_along_axis(queries, gaps * 2, keys, 1)
        seq = np.concatenate([kvs, queries], 1)
        labels = np.full((B, T + 1), IGNORE_INDEX, np.int64)
        np.put_along_axis(labels, gaps * 2 + ctx + 1, values, 1)
        inputs, targets = seq[:, :-1], labels[:, 1:]
        if self.random_non_queries:
            fill = rng.integers(0, V, size=inputs.shape)
            inputs = np.where(inputs == 0, fill, inputs)
        return as_tensor_batch(inputs, targets)
