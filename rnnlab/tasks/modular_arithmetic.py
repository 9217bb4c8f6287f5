"""Modular arithmetic without brackets: Delétang et al. 2023 ("Neural Networks and the Chomsky Hierarchy",
Table A.1, a regular task), as used by Beck et al. 2024 (xLSTM, Fig. 4) and Grazzi et al. 2024 (Table 2,
"Mod. Arithm. w/o brackets").

    x_1 o_1 x_2 o_2 ... x_k =      -> (x_1 o_1 x_2 ... x_k) mod m, scored at "=" only

Numbers are 0..m-1 (tokens 0..m-1), operators + - * (tokens m, m+1, m+2), "=" is token m+3; "*" binds
tighter than "+" and "-" (as in the papers' generator), the value is taken mod m. A sequence of length L has
k = L / 2 numbers (L even: k numbers, k - 1 operators, "="). Training lengths are drawn per sequence
uniformly among the even lengths in [min_len, max_len] (right-padded, the padding not scored); a test length
fixes L. Chance is 1/m. Diagnoses: tracking a state in Z_m under a non-commutative mix of updates (a product
in progress and a running sum) — regular, so a finite automaton (an LSTM) solves it at any length.
"""
from __future__ import annotations

import numpy as np

from rnnlab.tasks.base import IGNORE_INDEX, Task, as_tensor_batch, register_task


@register_task("modular_arithmetic")
class ModularArithmetic(Task):
    """Evaluate a bracket-free expression mod m (Delétang et al. 2023), answer at "="."""

    output = "lm"
    report_metrics = ("acc",)

    def __init__(self, modulus: int = 5, min_len: int = 3, max_len: int = 40, test_lengths: list[int] | None = None):
        if not isinstance(modulus, int) or isinstance(modulus, bool) or modulus < 2:
            raise ValueError(f"{self.name}: modulus must be an int >= 2, got {modulus!r}")
        self.modulus = modulus
        self.min_len, self.max_len = int(min_len), int(max_len)
        if not 2 <= self.min_len <= self.max_len or self.max_len < 2 * ((self.min_len + 1) // 2):
            raise ValueError(f"{self.name}: need 2 <= min_len <= max_len with an even length between them, "
                             f"got {min_len}, {max_len}")
        super().__init__(self.max_len - self.max_len % 2,
                         test_lengths if test_lengths is not None else [40, 64, 128, 256])

    def check_length(self, seq_len: int) -> None:
        if seq_len % 2 or seq_len < 2:
            raise ValueError(f"{self.name}: a length is k numbers, k - 1 operators and '=' (even, >= 2), got {seq_len}")

    def model_io(self):
        return {"vocab_size": self.modulus + 4, "head": "lm"}

    def evaluate(self, nums: np.ndarray, ops: np.ndarray) -> np.ndarray:
        """nums (B, k), ops (B, k-1) in {0: +, 1: -, 2: *} -> (B,) the value mod m, "*" before "+" / "-"."""
        m = self.modulus
        total = np.zeros(len(nums), np.int64)
        term = nums[:, 0].astype(np.int64)
        sign = np.ones(len(nums), np.int64)
        for j in range(ops.shape[1]):
            op, x = ops[:, j], nums[:, j + 1].astype(np.int64)
            mul = op == 2
            total = np.where(mul, total, (total + sign * term) % m)
            sign = np.where(mul, sign, np.where(op == 1, -1, 1))
            term = np.where(mul, term * x % m, x)
        return (total + sign * term) % m

    def sample(self, batch_size, seq_len, rng, split):
        m = self.modulus
        T = seq_len or self.seq_len
        lo = (self.min_len + 1) // 2
        ks = np.full(batch_size, T // 2) if seq_len else rng.integers(lo, self.seq_len // 2 + 1, size=batch_size)
        kmax = T // 2
        nums = rng.integers(0, m, size=(batch_size, kmax))
        ops = rng.integers(0, 3, size=(batch_size, max(kmax - 1, 0)))
        # rows shorter than kmax: numbers past k do not count (the operators before them become "+ 0")
        live = np.arange(kmax)[None] < ks[:, None]
        nums = np.where(live, nums, 0)
        ops = np.where(live[:, 1:], ops, 0)
        answer = self.evaluate(nums, ops)
        tokens = np.zeros((batch_size, T), np.int64)
        tokens[:, 0::2] = nums
        tokens[:, 1:-1:2] = ops + m
        targets = np.full((batch_size, T), IGNORE_INDEX, np.int64)
        rows = np.arange(batch_size)
        eq = 2 * ks - 1  # position of "=" in each row
        tokens[rows, eq] = m + 3
        targets[rows, eq] = answer
        pad = np.arange(T)[None] > eq[:, None]
        tokens = np.where(pad, 0, tokens)
        return as_tensor_batch(tokens, targets, None if seq_len else 2 * ks)
