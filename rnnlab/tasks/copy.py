"""Copying and n-gram lookup, Jelassi et al. 2024 ("Repeat After Me: Transformers are Better
than State Space Models at Copying", Sec. 3-4).

Layout (B = BOS, C = COPY separator, tokens 0..2 reserved):

    copy:        B x_1 .. x_n C x_1 .. x_n       scored on the copy (seq_acc = exact copy)
    prefix_key:  B x_1 .. x_n C x_i .. x_{i+g-1} -> x_{i+g}    (the key n-gram comes before the answer)
    suffix_key:  B x_1 .. x_n C x_{i+1} .. x_{i+g} -> x_i      (the key n-gram comes after the answer)

The string length n is drawn uniformly in [min_len, max_len] for training (right-padded,
padding not scored); a test length L fixes n so that the whole sequence has length L.
The lookup n-gram (length ``ngram``) is unique in its string. Diagnoses: whether a
fixed-size state can hold and retrieve a whole string (copy) and one position selected
after the fact (suffix key is the harder case for recurrent models).
"""
from __future__ import annotations

import numpy as np

from rnnlab.tasks.base import IGNORE_INDEX, Task, as_tensor_batch, register_task

MODES = ("copy", "prefix_key", "suffix_key")
PAD, BOS, SEP = 0, 1, 2


@register_task("copy", defaults={"mode": "copy"})
@register_task("copy_prefix_key", defaults={"mode": "prefix_key"})
@register_task("copy_suffix_key", defaults={"mode": "suffix_key"})
class Copy(Task):
    """Copy a random string after a separator (Jelassi et al. 2024), or look up an n-gram in it."""

    output = "lm"
    report_metrics = ("acc", "seq_acc")

    def __init__(self, mode: str = "copy", min_len: int = 4, max_len: int = 24, test_lengths: list[int] | None = None,
                 vocab_size: int = 16, ngram: int = 3):
        if mode not in MODES:
            raise ValueError(f"copy: mode must be one of {MODES}, got {mode!r}")
        self.mode, self.min_len, self.max_len = mode, int(min_len), int(max_len)
        self.vocab_size, self.ngram = int(vocab_size), int(ngram)
        if self.vocab_size < 5 or not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"copy: need vocab_size >= 5 and 1 <= min_len <= max_len, got {vocab_size}, {min_len}, {max_len}")
        if mode != "copy" and (self.ngram < 1 or self.min_len < self.ngram + 1):
            raise ValueError(f"copy ({mode}): need ngram >= 1 and min_len >= ngram+1, got ngram={ngram}, min_len={min_len}")
        super().__init__(self._total(self.max_len), test_lengths if test_lengths is not None else [self._total(self.max_len)])

    def _total(self, n: int) -> int:
        """Sequence length for a string of n tokens (inputs are the sequence without its last token)."""
        return 2 * n + 1 if self.mode == "copy" else n + self.ngram + 2

    def _string_len(self, T: int) -> int:
        return (T - 1) // 2 if self.mode == "copy" else T - self.ngram - 2

    def check_length(self, seq_len: int) -> None:
        n = self._string_len(seq_len)
        if self._total(n) != seq_len or n < (1 if self.mode == "copy" else self.ngram + 1):
            lo = self._total(1 if self.mode == "copy" else self.ngram + 1)
            raise ValueError(f"{self.name}: length {seq_len} impossible; lengths are "
                             + ("odd and " if self.mode == "copy" else "") + f">= {lo}")

    def model_io(self):
        return {"vocab_size": self.vocab_size, "head": "lm"}

    def _lookup_row(self, s: np.ndarray, rng) -> tuple[np.ndarray, int]:
        """s (n,) -> (key n-gram, answer) with the key unique in s; resamples s if needed."""
        g, n = self.ngram, len(s)
        for _ in range(100):
            i = int(rng.integers(0, n - g))  # answer/key window inside the string
            key = s[i:i + g] if self.mode == "prefix_key" else s[i + 1:i + 1 + g]
            win = np.lib.stride_tricks.sliding_window_view(s, g)
            if (win == key).all(1).sum() == 1:
                return key, int(s[i + g] if self.mode == "prefix_key" else s[i])
            s[:] = rng.integers(3, self.vocab_size, size=n)
        raise ValueError(f"{self.name}: could not draw a unique {g}-gram; raise vocab_size or ngram")

    def sample(self, batch_size, seq_len, rng, split):
        B = batch_size
        if seq_len is None:
            lens = rng.integers(self.min_len, self.max_len + 1, size=B)
            T = self._total(self.max_len)
        else:
            T = seq_len
            lens = np.full(B, self._string_len(T))
        seq = np.full((B, T + 1), PAD, np.int64)
        lab = np.full((B, T + 1), IGNORE_INDEX, np.int64)
        real = np.empty(B, np.int64)  # input tokens per row before the padding
        for b, n in enumerate(lens):
            s = rng.integers(3, self.vocab_size, size=n)
            if self.mode == "copy":
                row = np.concatenate([[BOS], s, [SEP], s])
                seq[b, :len(row)] = row
                lab[b, n + 2:len(row)] = s
            else:
                key, ans = self._lookup_row(s, rng)
                row = np.concatenate([[BOS], s, [SEP], key, [ans]])
                seq[b, :len(row)] = row
                lab[b, len(row) - 1] = ans
            real[b] = len(row) - 1
        return as_tensor_batch(seq[:, :-1], lab[:, 1:], real if seq_len is None else None)
