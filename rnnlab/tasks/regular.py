"""Regular-language transduction with length extrapolation: Fan et al.'s EvenPair(M) and ModArith(M).

*Fan, Chi & Rudnicky 2024, "Advancing Regular Language Reasoning in Linear Recurrent Neural Networks", NAACL,
Sec. 5 (tasks), following the authors' released generators (github.com/tinghanf/RegluarLRNN); their third task,
Sum(M), is the word problem of Z_M: ``sum`` in state_tracking.py.* Trained at one short length, tested at lengths
up to 12.5x longer; the answer is scored at every position a prefix is complete:

    even_pair   x_1 .. x_T symbols in [0, M); target at t: 1 if x_t == x_1 else 0. With M = 2 this is
                Delétang et al.'s EvenPair (the number of "ab" and "ba" in x_1..x_t is even iff x_t == x_1).
                Scored at every position. Train 40, test 500 (the released scripts: M = 5).
    mod_arith   n_0 o_1 n_1 o_2 n_2 ... n_k: numbers in [0, M) (tokens 0..M-1) and operators + − × (tokens M,
                M+1, M+2), × binding tighter than + and −. Target at each number: the value of the expression
                read so far, mod M; operator positions are not scored. Odd lengths; train 39, test 499.

Training lengths are drawn per sequence in [min_len, max_len] (right-padded, the padding not scored; for
mod_arith odd lengths only); Fan et al. train at one fixed length (min_len = max_len, the default). ``last_acc``
(the last scored position, the whole string's answer) is the paper's test metric; they report the best test
accuracy over training. **Diagnoses** whether a linear RNN learns the automaton (and so extrapolates) rather than
a length-bound shortcut: EvenPair needs to keep a symbol, ModArith a non-commutative update (multiplication
binds to the last term).
"""
from __future__ import annotations

import numpy as np

from rnnlab.tasks.base import IGNORE_INDEX, Task, as_tensor_batch, register_task, right_padded

__all__ = ["EvenPair", "ModArith"]


class _Extrapolation(Task):
    """Shared: lm output, lengths uniform in [min_len, max_len] for training, fixed at test."""

    output = "lm"
    report_metrics = ("acc", "last_acc")

    def __init__(self, min_len: int, max_len: int, test_lengths: list[int]):
        self.min_len, self.max_len = int(min_len), int(max_len)
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"{self.name}: need 1 <= min_len <= max_len, got {min_len}, {max_len}")
        self.check_length(self.min_len)
        self.check_length(self.max_len)
        super().__init__(self.max_len, test_lengths)

    def generate(self, batch_size: int, T: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, targets) (B, T) of full-length rows."""
        raise NotImplementedError

    def train_lengths(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.min_len, self.max_len + 1, size=batch_size)

    def sample(self, batch_size, seq_len, rng, split):
        T = seq_len or self.max_len
        if seq_len is None and self.min_len < self.max_len:
            lengths = self.train_lengths(batch_size, rng)
            return right_padded(*self.generate(batch_size, T, rng), lengths)
        return as_tensor_batch(*self.generate(batch_size, T, rng))


@register_task("even_pair")
class EvenPair(_Extrapolation):
    """EvenPair(M): at every position, does the symbol equal the first one (Fan et al. 2024)."""

    def __init__(self, num_symbols: int = 5, min_len: int = 40, max_len: int = 40, test_lengths: list[int] | None = None):
        if not isinstance(num_symbols, int) or num_symbols < 2:
            raise ValueError(f"even_pair: num_symbols must be an int >= 2, got {num_symbols!r}")
        self.num_symbols = num_symbols
        super().__init__(min_len, max_len, test_lengths if test_lengths is not None else [40, 160, 500])

    def model_io(self):
        return {"vocab_size": self.num_symbols, "head": "lm"}

    def generate(self, batch_size, T, rng):
        tokens = rng.integers(0, self.num_symbols, size=(batch_size, T))
        return tokens, (tokens == tokens[:, :1]).astype(np.int64)


@register_task("mod_arith")
class ModArith(_Extrapolation):
    """ModArith(M): the running value mod M of an expression with + − × (× first), at every number."""

    def __init__(self, modulus: int = 5, min_len: int = 39, max_len: int = 39, test_lengths: list[int] | None = None):
        if not isinstance(modulus, int) or modulus < 2:
            raise ValueError(f"mod_arith: modulus must be an int >= 2, got {modulus!r}")
        self.modulus = modulus
        super().__init__(min_len, max_len, test_lengths if test_lengths is not None else [39, 159, 499])

    def check_length(self, seq_len: int) -> None:
        if seq_len % 2 == 0:
            raise ValueError(f"mod_arith: length {seq_len} impossible; an expression n o n ... o n has an odd length")

    def model_io(self):
        return {"vocab_size": self.modulus + 3, "head": "lm"}

    def train_lengths(self, batch_size, rng):
        return 2 * rng.integers((self.min_len + 1) // 2, (self.max_len + 1) // 2 + 1, size=batch_size) - 1

    def generate(self, batch_size, T, rng):
        M, k = self.modulus, (T + 1) // 2
        nums = rng.integers(0, M, size=(batch_size, k))
        ops = rng.integers(0, 3, size=(batch_size, k - 1))  # 0: +, 1: −, 2: ×
        tokens = np.empty((batch_size, T), np.int64)
        tokens[:, 0::2], tokens[:, 1::2] = nums, M + ops
        targets = np.full((batch_size, T), IGNORE_INDEX, np.int64)
        done, last = np.zeros(batch_size, np.int64), nums[:, 0] % M  # the closed sum, the open product term
        targets[:, 0] = last
        for i in range(1, k):
            op, n = ops[:, i - 1], nums[:, i]
            times = op == 2
            done = np.where(times, done, (done + last) % M)
            last = np.where(times, last * n, np.where(op == 0, n, -n)) % M
            targets[:, 2 * i] = (done + last) % M
        return tokens, targets
