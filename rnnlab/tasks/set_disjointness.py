"""Set disjointness (Arora et al. 2024, "Just read twice: closing the recall gap for recurrent language models", §3.1,
the synthetic of their code's ``disjoint_sets``): two sets that share exactly one element; the model names it.

    [SET_A] a_1 ... a_s [SET_B] b_1 ... b_l [ANSWER] -> the element of A ∩ B

A has ``short_length`` = s distinct tokens, B the rest of the sequence, l = seq_len − s − 3 distinct tokens, drawn
from disjoint halves of the non-special vocabulary, and one position of B holds one of A's tokens: |A ∩ B| = 1 by
construction. Only the answer position is scored. The paper's point is the order: a recurrent model that reads the
short set first needs to remember only it (``short_first=True``, the default, as the authors' generator); with the
long set first it must store the long one, unless the sets are read twice (JRT-Prompt: ``context_len`` is both sets,
so ``train.eval_prompt=jrt_prompt`` repeats them). Test lengths change l (the long set's size).
"""
from __future__ import annotations

import numpy as np

from rnnlab.tasks.base import IGNORE_INDEX, Task, as_tensor_batch, register_task

SET_A, SET_B, ANSWER, SPECIAL = 1, 2, 3, 4  # token 0 unused (the authors' mask token)


@register_task("set_disjointness")
class SetDisjointness(Task):
    """Set disjointness (JRT): name the one element two sets share."""

    output = "lm"
    report_metrics = ("acc",)

    def __init__(self, seq_len: int = 32, test_lengths: list[int] | None = None, short_length: int = 4, vocab_size: int = 128,
                 short_first: bool = True):
        self.short_length, self.vocab_size, self.short_first = int(short_length), int(vocab_size), bool(short_first)
        if self.short_length < 1:
            raise ValueError(f"set_disjointness: short_length must be >= 1, got {short_length}")
        super().__init__(seq_len, test_lengths)

    def _long(self, seq_len: int) -> int:
        return seq_len - self.short_length - 3

    def check_length(self, seq_len: int) -> None:
        half = (self.vocab_size - SPECIAL) // 2
        if self._long(seq_len) < 1 or max(self._long(seq_len), self.short_length) > half:
            raise ValueError(f"set_disjointness: length {seq_len} impossible with short_length={self.short_length} and "
                             f"vocab_size={self.vocab_size}: the long set has seq_len - short_length - 3 >= 1 tokens and "
                             f"both sets at most (vocab_size - {SPECIAL}) // 2 = {half} distinct tokens")

    def context_len(self, seq_len: int) -> int:
        """Both sets with their markers (what JRT-Prompt repeats); the answer marker follows."""
        return seq_len - 1

    def model_io(self):
        return {"vocab_size": self.vocab_size, "head": "lm"}

    def sample(self, batch_size, seq_len, rng, split):
        T = seq_len or self.seq_len
        B, s, l = batch_size, self.short_length, self._long(T)
        half = (self.vocab_size - SPECIAL) // 2
        perm = np.argsort(rng.random((B, self.vocab_size - SPECIAL)), 1) + SPECIAL  # a random split of the vocabulary
        short = perm[:, :s]  # distinct, from the first half
        long = perm[:, half : half + l].copy()  # distinct, from the second half
        rows = np.arange(B)
        shared = short[rows, rng.integers(0, s, B)]
        long[rows, rng.integers(0, l, B)] = shared  # exactly one common element
        first, second = (short, long) if self.short_first else (long, short)
        col = lambda v: np.full((B, 1), v, np.int64)  # noqa: E731
        inputs = np.concatenate([col(SET_A), first, col(SET_B), second, col(ANSWER)], 1)
        targets = np.full((B, T), IGNORE_INDEX, np.int64)
        targets[:, -1] = shared
        return as_tensor_batch(inputs, targets)
