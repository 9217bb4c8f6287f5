"""Byte-level language modelling on a local text corpus, reported in bits per byte.

Default corpus: the Python standard library's own ``.py`` source files, found from the
running interpreter (``sysconfig``'s ``stdlib`` path, site-packages excluded) — every
machine that runs rnnlab has it and nothing is downloaded. ``corpus`` may name any other
directory (all files matching ``pattern``). Files, not windows, are split: a file goes to
validation when a hash of its relative path falls in the ``valid_fraction`` bucket, so no
text is shared across the split. The SHA-256 over (relative path, content) of the files
used is recorded in the run config as ``corpus_sha256``. Training windows are drawn at
random offsets of the concatenated train bytes; the test set at each length is a fixed
set of windows of the validation bytes. Every position is scored; ``bpb`` = cross-entropy
in bits per byte. Diagnoses: a real-data sanity check of the language-modelling ability.
"""
from __future__ import annotations

import hashlib
import os
import sysconfig
from functools import lru_cache
from pathlib import Path

import numpy as np

from rnnlab.tasks.base import Task, as_tensor_batch, register_task, rng_for


def default_corpus() -> str:
    return sysconfig.get_paths()["stdlib"]


SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def list_files(root: str, pattern: str) -> tuple[tuple[str, int, int], ...]:
    """Sorted (relative path, mtime_ns, size) of files under root matching pattern (site-packages pruned)."""
    import fnmatch

    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for f in filenames:
            if fnmatch.fnmatch(f, pattern):
                p = os.path.join(dirpath, f)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                out.append((os.path.relpath(p, root).replace(os.sep, "/"), st.st_mtime_ns, st.st_size))
    return tuple(sorted(out))


def load_corpus(root: str, pattern: str, valid_fraction: float, max_bytes: int) -> tuple[np.ndarray, np.ndarray, str, int]:
    """-> (train bytes, validation bytes, sha256 hex, number of files). Files sorted by path;
    up to max_bytes in total (0 = no limit); each file followed by a NUL separator byte.
    Cached per process on the files' (path, mtime, size) listing."""
    if not Path(root).is_dir():
        raise ValueError(f"bytes_lm: corpus directory {root!r} does not exist; pass task.corpus=<directory of text files>")
    return _load(root, list_files(root, pattern), pattern, valid_fraction, max_bytes)


@lru_cache(maxsize=4)
def _load(root: str, listing: tuple, pattern: str, valid_fraction: float, max_bytes: int):
    base = Path(root)
    files = [base / rel for rel, _, _ in listing]
    h = hashlib.sha256()
    parts: dict[str, list[bytes]] = {"train": [], "valid": []}
    total = 0
    used = 0
    for p in files:
        rel = p.relative_to(base).as_posix()
        try:
            data = p.read_bytes()
        except OSError:
            continue
        if max_bytes and total + len(data) > max_bytes:
            continue
        bucket = int(hashlib.md5(rel.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        parts["valid" if bucket < valid_fraction else "train"].append(data + b"\0")
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
        total += len(data)
        used += 1
    train, valid = (np.frombuffer(b"".join(parts[k]), np.uint8) for k in ("train", "valid"))
    if len(train) == 0 or len(valid) == 0:
        raise ValueError(f"bytes_lm: corpus {root!r} with pattern {pattern!r} has no usable files for both splits "
                         f"({len(train)} train / {len(valid)} validation bytes)")
    return train, valid, h.hexdigest(), used


@register_task("bytes_lm")
class BytesLM(Task):
    """Byte-level language modelling on local text (default: the Python stdlib sources), bits per byte."""

    output = "lm"
    primary_metric = "bpb"
    higher_is_better = False
    report_metrics = ("bpb", "acc")

    def __init__(self, seq_len: int = 128, test_lengths: list[int] | None = None, corpus: str | None = None,
                 pattern: str = "*.py", valid_fraction: float = 0.05, max_bytes: int = 16_000_000):
        self.corpus = os.path.abspath(corpus or default_corpus())
        self.pattern, self.valid_fraction, self.max_bytes = pattern, float(valid_fraction), int(max_bytes)
        self.train_bytes, self.valid_bytes, self.sha256, self.num_files = load_corpus(
            self.corpus, pattern, self.valid_fraction, self.max_bytes)
        super().__init__(seq_len, test_lengths)

    def check_length(self, seq_len: int) -> None:
        if seq_len < 2 or seq_len + 1 > len(self.valid_bytes):
            raise ValueError(f"bytes_lm: length {seq_len} impossible; need 2 <= length < {len(self.valid_bytes)} "
                             "(validation bytes)")

    def model_io(self):
        return {"vocab_size": 256, "head": "lm"}

    def describe(self):
        return {"corpus": self.corpus, "corpus_sha256": self.sha256, "corpus_files": self.num_files,
                "train_bytes": int(len(self.train_bytes)), "valid_bytes": int(len(self.valid_bytes))}

    def sample(self, batch_size, seq_len, rng, split):
        T = seq_len or self.seq_len
        data = self.train_bytes if split == "train" else self.valid_bytes
        return self._windows(data, rng.integers(0, len(data) - T - 1, size=batch_size), T)

    def train_batch(self, batch_size, seed, step, rows=None):
        """Reads only the windows of ``rows``: the offsets of the whole batch are drawn, as ``sample`` draws them."""
        if rows is None:
            return super().train_batch(batch_size, seed, step)
        starts = rng_for(seed, "train", step).integers(0, len(self.train_bytes) - self.seq_len - 1, size=batch_size)
        return self._windows(self.train_bytes, starts[rows], self.seq_len)

    @staticmethod
    def _windows(data: np.ndarray, starts: np.ndarray, T: int):
        win = data[starts[:, None] + np.arange(T + 1)[None]].astype(np.int64)
        return as_tensor_batch(win[:, :-1], win[:, 1:])
