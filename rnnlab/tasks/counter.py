"""Counter languages (character prediction) from Sarrof et al.'s suite: a^n b^n (c^n (d^n)) and Shuffle-Dyck.

*Sarrof, Veitsman & Hahn 2024, "The Expressive Capacity of State Space Models: A Formal Language Perspective",
experiments (the counter languages of Bhattamishra et al. 2020: Dyck-1, Shuffle-2/4/6, a^n b^n,
a^n b^n c^n, a^n b^n c^n d^n, Boolean-3/5); their result: SSMs keep unbounded counters exactly, but at finite precision
the comparison a counter needs degrades with length.* The target after every prefix is the set of symbols (END
included) that may follow, one class per set (char_prediction.py).

    anbn, anbncn   a^n b^n (c^n (d^n)), n >= 1 (``num_chars`` 2, 3 or 4; symbols a, b, c, d = 0..3). Within the a
                   block a or b may follow; after the first b the rest is forced ({b}, then {c}, ..., {END}) — the
                   authors' labels. Lengths are the multiples of num_chars; a length fixes n, so the language has one
                   word per length and a test set at length L is that word (the authors' bins hold several n).
                   Training n = 1..50 (the authors' window), test 150 and 300 symbols for a^n b^n c^n (n = 50, 100).
    shuffle_dyck   Shuffle-k: interleavings of k Dyck-1 languages (``num_types``; opening bracket i = 2i, closing
                   2i + 1): an opening bracket may always follow, closing bracket i iff more i's are open than closed,
                   END iff all are closed. num_types=1 is Dyck-1. Words are uniform random interleavings of one
                   uniformly drawn balanced word per type (the pairs split multinomially). Even lengths; training
                   2..50 (the authors' window for Shuffle-2), test 50 and 100.

**Diagnoses** counting: unbounded (non-finite-state) memory that a recurrence can keep in one coordinate that adds
+1 / −1 — possible with linear recurrences (decay 1), impossible for bounded-state automata, and brittle at lengths
beyond training where the counts exceed what was seen.
"""
from __future__ import annotations

import numpy as np

from rnnlab.tasks.base import register_task
from rnnlab.tasks.char_prediction import BalancedWords, NextSymbolSets, balanced_walks

__all__ = ["AnBn", "ShuffleDyck"]


@register_task("anbncn", defaults={"num_chars": 3, "min_len": 3, "max_len": 150, "test_lengths": [150, 300]})
@register_task("anbn")
class AnBn(NextSymbolSets):
    """a^n b^n (c^n (d^n)): at every position, the symbols (then END) that may follow (Sarrof et al. 2024)."""

    def __init__(self, num_chars: int = 2, min_len: int = 2, max_len: int = 100, test_lengths: list[int] | None = None):
        if num_chars not in (2, 3, 4):
            raise ValueError(f"{self.name}: num_chars must be 2, 3 or 4, got {num_chars!r}")
        self.num_symbols = num_chars
        super().__init__(min_len, max_len, test_lengths)

    def valid_length(self, n):
        return n >= self.num_symbols and n % self.num_symbols == 0

    def length_rule(self):
        return f"words of this language have lengths that are multiples of {self.num_symbols}"

    def words(self, lengths, T, rng):
        n = np.asarray(lengths)[:, None] // self.num_symbols
        return np.minimum(np.arange(T)[None] // n, self.num_symbols - 1)

    def allowed(self, words):
        B, T = words.shape
        k = self.num_symbols
        n = (words == 0).sum(1, keepdims=True)  # every row here is one whole word (or padding, unscored)
        pos = np.arange(T)[None] + 1  # symbols read
        block, done = (pos - 1) // n, pos % n == 0  # the block of the last symbol; whether it closes that block
        out = np.zeros((B, T, k + 1), bool)
        a_block = pos <= n
        out[..., 0] = a_block
        out[..., 1] = a_block  # b may start once one a is read
        nxt = np.where(done, block + 1, block)  # the forced next symbol after the a block (k = END)
        forced = ~a_block
        for s in range(1, k + 1):
            out[..., s] |= forced & (nxt == s)
        return out


@register_task("shuffle_dyck")
class ShuffleDyck(BalancedWords):
    """Shuffle-k Dyck: at every position, the brackets (then END) that may follow (Sarrof et al. 2024)."""

    def __init__(self, num_types: int = 2, min_len: int = 2, max_len: int = 50, test_lengths: list[int] | None = None):
        if not isinstance(num_types, int) or not 1 <= num_types <= 4:
            raise ValueError(f"shuffle_dyck: num_types must be an int in 1..4, got {num_types!r}")
        self.num_types = num_types
        self.num_symbols = 2 * num_types
        super().__init__(min_len, max_len, test_lengths)

    def words(self, lengths, T, rng):
        B, k = len(lengths), self.num_types
        pairs = np.stack([rng.multinomial(n // 2, np.full(k, 1 / k)) for n in lengths])  # (B, k) pairs per type
        walks = [balanced_walks(2 * pairs[:, i], T, T, rng) for i in range(k)]  # Dyck-1 word of each type
        out = np.zeros((B, T), np.int64)
        for b in range(B):
            order = rng.permutation(np.repeat(np.arange(k), 2 * pairs[b]))  # a uniform interleaving
            for i in range(k):
                steps = walks[i][b, :2 * pairs[b, i]]
                out[b, np.flatnonzero(order == i)] = 2 * i + (steps < 0)
        return out

    def allowed(self, words):
        B, T = words.shape
        out = np.zeros((B, T, self.num_symbols + 1), bool)
        open_total = np.zeros((B, T), np.int64)
        for i in range(self.num_types):
            count = np.cumsum((words == 2 * i).astype(np.int64) - (words == 2 * i + 1), 1)
            out[..., 2 * i] = True
            out[..., 2 * i + 1] = count > 0
            open_total += count
        out[..., -1] = open_total == 0
        return out
