"""Passkey retrieval: a digit key hidden at a controlled depth in filler, asked for at the end.

*Mohtashami & Jaggi 2023, "Landmark Attention: Random-Access Infinite Context Length for Transformers" (the
passkey test); Chen et al. 2024, "Stuffed Mamba: State Collapse and State Capacity of RNN-Based Long-Context
Modeling" (a 5-digit passkey, trained at one length, retrieved at growing lengths: accuracy collapses past
the length the state can hold).* Token-level version of the prompt "<filler> The pass key is 71432. <filler> What is
the pass key? The pass key is 71432":

    f f f ... KEY k_1 .. k_n f f ... f QUERY k_1 .. k_{n-1}

with the targets k_1 (at QUERY), k_2 (at k_1), ..., k_n: only the key's n tokens are scored (``seq_acc`` = the whole
key right, the papers' accuracy). The filler is the paper's repeated sentence — a fixed cycle of ``filler_vocab``
tokens (``filler="repeat"``) — or i.i.d. filler tokens (``"random"``); the key interrupts it. ``depth`` in [0, 1]
places the key block at that fraction of the filler (0: the start of the context, 1: just before the question);
None draws it uniformly per sequence. Test lengths default to 1x, 2x, 4x, 8x, 16x the training length (the harness's
extrapolation evaluation: train at L, test up to 16 L). Tokens: digits 0–9, KEY = 10, QUERY = 11, filler 12 ... .
**Diagnoses** whether a fixed-size state keeps a few tokens over a long stretch of uninformative input, and whether
that survives lengths beyond training (state collapse: a model that never had to forget at its training length
fails to once the context outgrows it).
"""
from __future__ import annotations

import numpy as np

from rnnlab.tasks.base import IGNORE_INDEX, Task, as_tensor_batch, register_task

__all__ = ["Passkey"]

KEY, QUERY, FILLER = 10, 11, 12
FILLERS = ("repeat", "random")


@register_task("passkey")
class Passkey(Task):
    """Passkey retrieval (Mohtashami & Jaggi 2023; Chen et al. 2024): recall a digit key hidden in filler."""

    output = "lm"
    report_metrics = ("acc", "seq_acc")

    def __init__(self, seq_len: int = 64, test_lengths: list[int] | None = None, key_len: int = 5,
                 depth: float | None = None, filler: str = "repeat", filler_vocab: int = 8):
        if not isinstance(key_len, int) or key_len < 1:
            raise ValueError(f"passkey: key_len must be an int >= 1, got {key_len!r}")
        if depth is not None and not 0.0 <= float(depth) <= 1.0:
            raise ValueError(f"passkey: depth must lie in [0, 1] or be None, got {depth!r}")
        if filler not in FILLERS:
            raise ValueError(f"passkey: filler must be one of {FILLERS}, got {filler!r}")
        if not isinstance(filler_vocab, int) or filler_vocab < 1:
            raise ValueError(f"passkey: filler_vocab must be an int >= 1, got {filler_vocab!r}")
        self.key_len, self.filler, self.filler_vocab = key_len, filler, filler_vocab
        self.depth = None if depth is None else float(depth)
        if test_lengths is None:
            test_lengths = [seq_len * f for f in (1, 2, 4, 8, 16)]
        super().__init__(seq_len, test_lengths)

    def check_length(self, seq_len: int) -> None:
        if seq_len < 2 * self.key_len + 2:
            raise ValueError(f"passkey: length {seq_len} impossible; need >= 2*key_len + 2 = {2 * self.key_len + 2} "
                             "(the key, its marker, the question and one filler token)")

    def model_io(self):
        return {"vocab_size": FILLER + self.filler_vocab, "head": "lm"}

    def key_start(self, B: int, T: int, rng: np.random.Generator) -> np.ndarray:
        """(B,) position of the KEY marker: the depth's fraction of the T − 2·key_len − 1 filler tokens precede it."""
        n_fill = T - 2 * self.key_len - 1
        d = rng.random(B) if self.depth is None else np.full(B, self.depth)
        return np.rint(d * n_fill).astype(np.int64)

    def sample(self, batch_size, seq_len, rng, split):
        T = seq_len or self.seq_len
        B, n = batch_size, self.key_len
        keys = rng.integers(0, 10, size=(B, n))
        start = self.key_start(B, T, rng)
        ctx = T - n  # the context: filler with the key block inside, then QUERY k_1 .. k_{n-1}
        if self.filler == "repeat":
            fill = np.broadcast_to(FILLER + np.arange(ctx - n - 1) % self.filler_vocab, (B, ctx - n - 1))
        else:
            fill = rng.integers(FILLER, FILLER + self.filler_vocab, size=(B, ctx - n - 1))
        pos = np.arange(ctx)[None]
        block = (pos >= start[:, None]) & (pos <= start[:, None] + n)  # KEY k_1 .. k_n
        tokens = np.empty((B, T), np.int64)
        tokens[:, :ctx][~block] = fill.reshape(-1)
        offset = np.clip(pos - start[:, None] - 1, 0, n - 1)
        tokens[:, :ctx] = np.where(block, np.where(pos == start[:, None], KEY, np.take_along_axis(keys, offset, 1)),
                                   tokens[:, :ctx])
        tokens[:, ctx] = QUERY
        tokens[:, ctx + 1:] = keys[:, :-1]
        targets = np.full((B, T), IGNORE_INDEX, np.int64)
        targets[:, ctx:] = keys
        return as_tensor_batch(tokens, targets)
