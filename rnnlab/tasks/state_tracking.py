"""State tracking: word problems over finite groups, scored at every position.

Given g_1 .. g_T (tokens = group elements), the target at position t is the prefix product
g_1 g_2 ... g_t (Merrill, Petty & Sabharwal 2024, "The Illusion of State in State-Space
Models"; Liu et al. 2023). Groups: ``Z<m>`` (cyclic: the running sum mod m), ``S3``, ``S5``
(symmetric), ``A5`` (alternating, the smallest non-solvable group: NC^1-complete). Four
registered names share this one generator:

    parity        Z2, training lengths 3..40, test up to 256 (Grazzi et al. 2024, "Unlocking
                  State-Tracking in Linear RNNs Through Negative Eigenvalues", Sec. 5.1)
    modular_sum   Z<modulus> (running sum mod m)
    sum           Z5 at Fan et al.'s lengths: train 40, test up to 500 (Fan, Chi & Rudnicky 2024, "Advancing
                  Regular Language Reasoning in Linear Recurrent Neural Networks", Sum(M))
    word_problem  any group (default S5)
    word_problem_s3  the same with S3 (solvable, non-abelian), a name of its own for sweeps

Training lengths are drawn per sequence uniformly in [min_len, max_len] (right-padded, the
padding not scored); each test length fixes the length. ``supervise="all"`` scores every prefix
product (a dense signal); ``"last"`` only the product of the whole word, as Grazzi et al.'s and the
xLSTM paper's parity (Delétang et al. 2023's formulation). ``last_acc`` is the accuracy of the
final prefix product (the whole sequence's parity). Diagnoses: tracking a state through a
non-commutative (S5/A5) or commutative (Z_m) group — what diagonal linear recurrences with
positive decays cannot express at arbitrary length.
"""
from __future__ import annotations

import itertools
import re
from functools import lru_cache

import numpy as np

from rnnlab.tasks.base import IGNORE_INDEX, Task, as_tensor_batch, register_task, right_padded

GROUPS = "Z<m> (e.g. Z2, Z5), S3, S5, A5"
SUPERVISE = ("all", "last")


def _parity(p: tuple[int, ...]) -> int:
    p, sign = list(p), 0
    for i in range(len(p)):
        while p[i] != i:
            j = p[i]
            p[i], p[j] = p[j], p[i]
            sign ^= 1
    return sign


@lru_cache(maxsize=None)
def group_elements(group: str) -> list:
    """Elements: ints 0..m-1 for Z<m>; permutation tuples (sorted, identity first) for S_n/A_n."""
    m = re.fullmatch(r"Z(\d+)", group)
    if m and int(m.group(1)) >= 2:
        return list(range(int(m.group(1))))
    m = re.fullmatch(r"([SA])(\d)", group)
    if m and int(m.group(2)) >= 2:
        perms = list(itertools.permutations(range(int(m.group(2)))))
        return [p for p in perms if m.group(1) == "S" or _parity(p) == 0]
    raise ValueError(f"unknown group {group!r}; valid choices: {GROUPS}")


def compose(group: str, a, b):
    """The product a·b: apply a first, then b (so prefix products read left to right)."""
    if group.startswith("Z"):
        return (a + b) % len(group_elements(group))
    return tuple(b[a[i]] for i in range(len(a)))


@lru_cache(maxsize=None)
def multiplication_table(group: str) -> np.ndarray:
    """(n, n) int64: table[i, j] = index of elements[i]·elements[j]."""
    el = group_elements(group)
    index = {e: i for i, e in enumerate(el)}
    return np.array([[index[compose(group, a, b)] for b in el] for a in el], np.int64)


@register_task("word_problem_s3", defaults={"group": "S3"})
@register_task("word_problem", defaults={"group": "S5"})
@register_task("parity", defaults={"group": "Z2", "min_len": 3, "max_len": 40, "test_lengths": [40, 64, 128, 256]})
class WordProblem(Task):
    """Group word problem: output the prefix product at every position (Merrill et al. 2024)."""

    output = "lm"
    report_metrics = ("acc", "last_acc")

    def __init__(self, group: str = "S5", min_len: int = 16, max_len: int = 16, test_lengths: list[int] | None = None,
                 supervise: str = "all"):
        if supervise not in SUPERVISE:
            raise ValueError(f"{self.name}: supervise must be one of {SUPERVISE}, got {supervise!r}")
        self.group, self.supervise = group, supervise
        self.table = multiplication_table(group)
        self.min_len, self.max_len = int(min_len), int(max_len)
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"{self.name}: need 1 <= min_len <= max_len, got {min_len}, {max_len}")
        super().__init__(self.max_len, test_lengths if test_lengths is not None else [self.max_len, 4 * self.max_len])

    @property
    def order(self) -> int:
        return len(self.table)

    def model_io(self):
        return {"vocab_size": self.order, "head": "lm"}

    def prefix_products(self, tokens: np.ndarray) -> np.ndarray:
        """tokens (B, T) element indices -> (B, T) indices of g_1···g_t."""
        out = np.empty_like(tokens)
        acc = tokens[:, 0]
        out[:, 0] = acc
        for t in range(1, tokens.shape[1]):
            acc = self.table[acc, tokens[:, t]]
            out[:, t] = acc
        return out

    def sample(self, batch_size, seq_len, rng, split):
        T = seq_len or self.max_len
        tokens = rng.integers(0, self.order, size=(batch_size, T))
        targets = self.prefix_products(tokens)
        lens = None
        if seq_len is None and self.min_len < self.max_len:
            lens = rng.integers(self.min_len, self.max_len + 1, size=batch_size)
        if self.supervise == "last":  # only the whole word's product is scored (the papers' parity)
            last = (np.full(batch_size, T) if lens is None else lens) - 1
            keep = np.arange(T)[None] == last[:, None]
            targets = np.where(keep, targets, IGNORE_INDEX)
        if lens is not None:
            return right_padded(tokens, targets, lens)
        return as_tensor_batch(tokens, targets)


@register_task("sum", defaults={"modulus": 5, "min_len": 40, "max_len": 40, "test_lengths": [40, 160, 500]})
@register_task("modular_sum")
class ModularSum(WordProblem):
    """Running sum mod m at every position (the word problem of Z_m). ``sum`` is Fan et al.'s Sum(M) with their
    setting: M = 5, training length 40, tested up to 500 (the same task, not a new one)."""

    def __init__(self, modulus: int = 5, min_len: int = 16, max_len: int = 16, test_lengths: list[int] | None = None,
                 supervise: str = "all"):
        if not isinstance(modulus, int) or modulus < 2:
            raise ValueError(f"modular_sum: modulus must be an int >= 2, got {modulus!r}")
        self.modulus = modulus
        super().__init__(f"Z{modulus}", min_len, max_len, test_lengths, supervise)
