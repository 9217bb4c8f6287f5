"""Bounded Dyck(K, m): K bracket types nested at most m deep; the target is the bracket that must close next.

*Sarrof, Veitsman & Hahn 2024, "The Expressive Capacity of State Space Models: A Formal Language Perspective",
experiments (their result: a two-layer SSM models bounded hierarchical structure with optimal memory, without
simulating a stack); the setting and metric of Yao et al. 2021 ("Self-Attention Networks Can Process Bounded
Hierarchical Languages") and Hewitt et al. 2020, as in the authors' code (github.com/lacoco-lab/ssm_expressivity,
bounded_dyck_expt): K = 8, m = 10, trained on lengths 1–700, tested on 701–1400.* Words are drawn from their
probabilistic automaton: at depth 0 an opening bracket, at depth m a closing one, otherwise each with probability 1/2
(the opening bracket's type uniform); a closing bracket always closes the innermost open one, so every word is a
prefix of a word of the language. The authors train a language model and score, at every position where a bracket
is open, whether the mass on the correct closing bracket exceeds 0.8 of the mass on all closing brackets ("closing
accuracy"). Here that position's target is the correct closing bracket itself (the matching bracket of the innermost
open one), scored only where a bracket is open; ``acc`` is then the closing accuracy with an argmax in place of
the 0.8 threshold, and ``seq_acc`` whether every closing decision of a word is right. Tokens: opening bracket of
type k = k, closing = K + k. Defaults scale the lengths down to a laptop (train 1–128, test 128 and 256: the
paper's ratio, test up to 2x the training length). **Diagnoses** hierarchical structure with bounded depth: the
model must keep the stack of up to m open types (m log K bits) — what a fixed-size state can hold exactly.
"""
from __future__ import annotations

import numpy as np

from rnnlab.tasks.base import IGNORE_INDEX, Task, as_tensor_batch, register_task, right_padded

__all__ = ["BoundedDyck"]


@register_task("dyck")
class BoundedDyck(Task):
    """Bounded Dyck(K, m): at every position with an open bracket, the closing bracket that must come next."""

    output = "lm"
    report_metrics = ("acc", "seq_acc")

    def __init__(self, num_types: int = 8, max_depth: int = 10, min_len: int = 1, max_len: int = 128,
                 test_lengths: list[int] | None = None):
        if not isinstance(num_types, int) or num_types < 1 or not isinstance(max_depth, int) or max_depth < 1:
            raise ValueError(f"dyck: need ints num_types >= 1 and max_depth >= 1, got {num_types!r}, {max_depth!r}")
        self.num_types, self.max_depth = num_types, max_depth
        self.min_len, self.max_len = int(min_len), int(max_len)
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"dyck: need 1 <= min_len <= max_len, got {min_len}, {max_len}")
        super().__init__(self.max_len, test_lengths if test_lengths is not None else [self.max_len, 2 * self.max_len])

    def model_io(self):
        return {"vocab_size": 2 * self.num_types, "head": "lm"}

    def generate(self, B: int, T: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, targets) (B, T): words of the automaton; the innermost open bracket's closer where one is open."""
        K, m = self.num_types, self.max_depth
        stack = np.zeros((B, m), np.int64)  # open types, bottom first
        depth = np.zeros(B, np.int64)
        rows = np.arange(B)
        tokens = np.empty((B, T), np.int64)
        targets = np.full((B, T), IGNORE_INDEX, np.int64)
        coin, kinds = rng.random((B, T)), rng.integers(0, K, size=(B, T))
        for t in range(T):
            opens = (depth == 0) | ((depth < m) & (coin[:, t] < 0.5))
            top = stack[rows, np.maximum(depth - 1, 0)]
            tokens[:, t] = np.where(opens, kinds[:, t], K + top)
            stack[rows[opens], depth[opens]] = kinds[opens, t]
            depth = depth + np.where(opens, 1, -1)
            open_now = depth > 0
            targets[open_now, t] = K + stack[rows[open_now], depth[open_now] - 1]
        return tokens, targets

    def sample(self, batch_size, seq_len, rng, split):
        T = seq_len or self.max_len
        tokens, targets = self.generate(batch_size, T, rng)
        if seq_len is None and self.min_len < self.max_len:
            return right_padded(tokens, targets, rng.integers(self.min_len, self.max_len + 1, size=batch_size))
        return as_tensor_batch(tokens, targets)
