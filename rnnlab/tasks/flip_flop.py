"""Flip-flop language modeling: write / ignore / read instructions with bits; the reads are scored.

*Liu, Ash, Goel, Krishnamurthy & Zhang 2023, "Exposing Attention Glitches with Flip-Flop Language Modeling",
Definition 1 and Sec. 3; used by Sarrof, Veitsman & Hahn 2024 ("The Expressive Capacity of State Space Models",
experiments and their flip-flop result: a two-layer SSM models it at any length).* FFL(p_i): T/2 instruction–bit pairs;
the first instruction is ``w``, the last ``r``, the others ``w``, ``r``, ``i`` with probabilities
((1 − p_i)/2, (1 − p_i)/2, p_i). The bit after ``w`` or ``i`` is uniform; the bit after ``r`` is the bit of the most
recent ``w`` — the only deterministic tokens, and the only scored ones: the target at each ``r`` is the next bit
(as the authors' code does, which masks all but the read answers; Liu et al. train on every token and evaluate on
the reads). Liu et al. train on FFL(0.8) at T = 512 and test in distribution, on sparse FFL(0.98) (long gaps
between writes and reads) and dense FFL(0.1); the sparse test is the one that exposes "attention glitches". Three
names: ``flip_flop`` (train and test FFL(p_ignore)), ``flip_flop_sparse`` (train FFL(0.8), test FFL(0.98)),
``flip_flop_dense`` (train FFL(0.8), test FFL(0.1)); ``test_p_ignore`` sets any test distribution. Lengths are even
(pairs) and at least 4. Tokens: w = 0, r = 1, i = 2, bit 0 = 3, bit 1 = 4. **Diagnoses** robust one-bit memory
over long gaps: a star-free task (a set–reset flip-flop) that SSMs with non-negative gates solve exactly at any
length and attention solves only approximately (sporadic errors on rare long gaps).
"""
from __future__ import annotations

import numpy as np

from rnnlab.tasks.base import IGNORE_INDEX, Task, as_tensor_batch, register_task

__all__ = ["FlipFlop"]

W, R, I, BIT0 = 0, 1, 2, 3


@register_task("flip_flop_dense", defaults={"test_p_ignore": 0.1})
@register_task("flip_flop_sparse", defaults={"test_p_ignore": 0.98})
@register_task("flip_flop")
class FlipFlop(Task):
    """Flip-flop language FFL(p_ignore) (Liu et al. 2023): at each read, output the last written bit."""

    output = "lm"
    report_metrics = ("acc", "seq_acc")

    def __init__(self, seq_len: int = 512, test_lengths: list[int] | None = None, p_ignore: float = 0.8,
                 test_p_ignore: float | None = None):
        self.p_ignore = float(p_ignore)
        self.test_p_ignore = self.p_ignore if test_p_ignore is None else float(test_p_ignore)
        for p in (self.p_ignore, self.test_p_ignore):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{self.name}: probabilities of ignore must lie in [0, 1), got {p}")
        super().__init__(seq_len, test_lengths)

    def check_length(self, seq_len: int) -> None:
        if seq_len % 2 or seq_len < 4:
            raise ValueError(f"{self.name}: length {seq_len} impossible; instruction-bit pairs make even lengths >= 4")

    def model_io(self):
        return {"vocab_size": 5, "head": "lm"}

    def sample(self, batch_size, seq_len, rng, split):
        T = seq_len or self.seq_len
        p = self.p_ignore if split == "train" else self.test_p_ignore
        B, n = batch_size, T // 2
        ops = rng.choice(3, size=(B, n), p=[(1 - p) / 2, (1 - p) / 2, p])  # W, R, I
        ops[:, 0], ops[:, -1] = W, R
        bits = rng.integers(0, 2, size=(B, n))
        written = np.where(ops == W, np.arange(n)[None], 0)
        last_write = np.maximum.accumulate(written, 1)  # index of the most recent write (the first pair is one)
        bits = np.where(ops == R, np.take_along_axis(bits, last_write, 1), bits)
        tokens = np.empty((B, T), np.int64)
        tokens[:, 0::2], tokens[:, 1::2] = ops, BIT0 + bits
        targets = np.full((B, T), IGNORE_INDEX, np.int64)
        targets[:, 0::2] = np.where(ops == R, BIT0 + bits, IGNORE_INDEX)
        return as_tensor_batch(tokens, targets)
