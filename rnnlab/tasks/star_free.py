"""D_n, the star-free languages of dot-depth n (character prediction), from Sarrof et al.'s star-free suite.

*Sarrof, Veitsman & Hahn 2024, "The Expressive Capacity of State Space Models: A Formal Language Perspective",
experiments (the languages D_2, D_3, D_4, D_12 of Bhattamishra et al. 2020); their result: SSMs with
non-negative gates predictively model every star-free language at any length.* Over {a, b}:
D_0 = {ε}, D_n = (a D_{n-1} b)* — the balanced strings of nesting depth at most n (Dyck-1 bounded at n), star-free
for every n (Brzozowski & Knast's dot-depth hierarchy). After a prefix of depth d (#a − #b): a may follow iff d < n,
b iff d > 0, END iff d = 0 — the authors' labels ('10' / '11' / '01' over {a, b}) with END added (END is allowed
exactly where b is not, so no information is added). Words are uniform among the members of each length (the
authors' generator draws nested blocks recursively; the labels, which are what is learned, are the same). Even
lengths only. Training lengths 2..100 (the authors' window), test 100 and 200 (their second bin reaches 200).
**Diagnoses** finite-state (star-free) tracking of a bounded counter: no modular counting is needed, so diagonal
non-negative gates (Mamba) suffice at any length — the contrast with parity (non-star-free) in the same suite.
Symbols: a = 0, b = 1.
"""
from __future__ import annotations

import numpy as np

from rnnlab.tasks.base import register_task
from rnnlab.tasks.char_prediction import BalancedWords, balanced_walks

__all__ = ["DyckDepthN"]


@register_task("d_n")
class DyckDepthN(BalancedWords):
    """D_n = (a D_{n-1} b)*: at every position, the symbols (a, b, END) that may follow (Sarrof et al. 2024)."""

    num_symbols = 2

    def __init__(self, depth: int = 2, min_len: int = 2, max_len: int = 100, test_lengths: list[int] | None = None):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"d_n: depth must be an int >= 1, got {depth!r}")
        self.depth = depth
        super().__init__(min_len, max_len, test_lengths)

    def words(self, lengths, T, rng):
        return (balanced_walks(lengths, T, self.depth, rng) < 0).astype(np.int64)  # a = up = 0, b = down = 1

    def allowed(self, words):
        d = np.cumsum(np.where(words == 0, 1, -1), 1)
        return np.stack([d < self.depth, d > 0, d == 0], -1)
