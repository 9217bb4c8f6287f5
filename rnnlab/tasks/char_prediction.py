"""The character-prediction task of the formal-language suites: at every position, the set of symbols that may follow.

*Bhattamishra, Ahuja & Goyal 2020, "On the Ability and Limitations of Transformers to Recognize Formal Languages",
(character prediction); the suite Sarrof, Veitsman & Hahn 2024 ("The Expressive Capacity of State Space Models:
A Formal Language Perspective", experiments) train Mamba on (github.com/lacoco-lab/ssm_expressivity).* A word of
the language is read one symbol at a time; after each prefix the target is the set of symbols (END included) that can
continue it to a word of the language. The set is one class: the bitmask ``sum 2^s`` over the allowed symbols s, END
being bit ``num_symbols`` — which is what the authors' cross-entropy training does (each distinct target set one
output class). Every position is scored; a word counts as recognized when all its positions are right, which is
``seq_acc`` (the paper's accuracy); ``acc`` is per position.

Training words have lengths uniform among the language's valid lengths in [min_len, max_len] (right-padded, padding
not scored); a test length L draws words of exactly L symbols. Subclasses: star_free.py, counter.py.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from rnnlab.tasks.base import Task, as_tensor_batch, right_padded

__all__ = ["NextSymbolSets", "BalancedWords", "balanced_walks", "set_classes"]


def set_classes(allowed: np.ndarray) -> np.ndarray:
    """allowed (..., S + 1) bool (the symbols, then END) -> (...) int64 class = bitmask of the allowed set."""
    return (allowed.astype(np.int64) << np.arange(allowed.shape[-1])).sum(-1)


@lru_cache(maxsize=32)
def _up_probability(max_steps: int, bound: int) -> np.ndarray:
    """(max_steps + 1, bound + 1): the probability of a step up at depth d with r steps left, uniform over the
    walks that stay in [0, bound] and end at 0. N[r, d], the number of such walks, obeys
    N[r, d] = N[r-1, d-1] + N[r-1, d+1]; only ratios within one row are needed, so each row is rescaled (no overflow)."""
    n = np.zeros((max_steps + 1, bound + 2))
    n[0, 0] = 1.0
    up = np.zeros((max_steps + 1, bound + 1))
    for r in range(1, max_steps + 1):
        prev = n[r - 1]
        down = np.concatenate([[0.0], prev[:-2]])  # N[r-1, d-1]
        rise = prev[1:]  # N[r-1, d+1] (0 beyond the bound)
        total = down + rise
        up[r] = np.divide(rise, total, out=np.zeros_like(total), where=total > 0)
        n[r, :-1] = total / max(total.max(), 1e-300)
    return up


def balanced_walks(lengths: np.ndarray, T: int, bound: int, rng: np.random.Generator) -> np.ndarray:
    """(B, T) steps +1 / -1: row b is uniform among the walks of lengths[b] (even) steps that stay in [0, bound] and
    end at 0 (a balanced bracket word of depth <= bound); positions from lengths[b] on are 0."""
    lengths = np.asarray(lengths)
    up = _up_probability(int(T), int(bound))
    B = len(lengths)
    steps = np.zeros((B, T), np.int64)
    depth = np.zeros(B, np.int64)
    u = rng.random((B, T))
    for t in range(T):
        left = lengths - t
        live = left > 0
        p = up[np.clip(left, 0, T), np.minimum(depth, bound)]
        s = np.where(u[:, t] < p, 1, -1) * live
        steps[:, t] = s
        depth = depth + s
    return steps


class NextSymbolSets(Task):
    """Shared: the character-prediction task over ``num_symbols`` symbols (module docstring)."""

    output = "lm"
    report_metrics = ("acc", "seq_acc")
    num_symbols: int = 2

    def __init__(self, min_len: int, max_len: int, test_lengths: list[int] | None):
        self.min_len, self.max_len = int(min_len), int(max_len)
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"{self.name}: need 1 <= min_len <= max_len, got {min_len}, {max_len}")
        self.train_choices = np.array([n for n in range(self.min_len, self.max_len + 1) if self.valid_length(n)])
        if not len(self.train_choices):
            raise ValueError(f"{self.name}: no valid length in [{min_len}, {max_len}]; {self.length_rule()}")
        super().__init__(self.max_len, test_lengths if test_lengths is not None else [self.max_len, 2 * self.max_len])

    # --- to implement ---------------------------------------------------------------
    def valid_length(self, n: int) -> bool:
        return True

    def length_rule(self) -> str:
        return "any length"

    def words(self, lengths: np.ndarray, T: int, rng: np.random.Generator) -> np.ndarray:
        """(B, T) int64 symbols: row b a word of the language of length lengths[b] (anything after it)."""
        raise NotImplementedError

    def allowed(self, words: np.ndarray) -> np.ndarray:
        """(B, T) words -> (B, T, num_symbols + 1) bool: the symbols (then END) that may follow each prefix."""
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------
    def check_length(self, seq_len: int) -> None:
        if not self.valid_length(seq_len):
            raise ValueError(f"{self.name}: length {seq_len} impossible; {self.length_rule()}")

    def model_io(self):
        return {"vocab_size": max(self.num_symbols, 2 ** (self.num_symbols + 1)), "head": "lm"}

    def sample(self, batch_size, seq_len, rng, split):
        T = seq_len or self.max_len
        lengths = rng.choice(self.train_choices, size=batch_size) if seq_len is None else np.full(batch_size, T)
        words = self.words(lengths, T, rng)
        targets = set_classes(self.allowed(words))
        if seq_len is None:
            return right_padded(words, targets, lengths)
        return as_tensor_batch(words, targets)


class BalancedWords(NextSymbolSets):
    """Languages of balanced bracket words (one bracket opened and closed per pair): even lengths >= 2."""

    def valid_length(self, n):
        return n >= 2 and n % 2 == 0

    def length_rule(self):
        return "balanced words have even lengths >= 2"
