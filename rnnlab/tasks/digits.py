"""Sequential digits: the 8x8 handwritten digits that scikit-learn ships (``load_digits``,
1797 images, UCI optdigits), read pixel by pixel as a length-64 sequence of 1-d features
and classified from the last (or mean-pooled) state — the small-scale analogue of
sequential / permuted MNIST (Le, Jaitly & Hinton 2015). With ``permute=True`` one fixed
seeded permutation of the 64 pixels destroys locality (psMNIST). The train/test split is a
fixed seeded shuffle (``test_fraction``), the same for every run. Diagnoses: long-range
integration of a real signal into a classification.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from rnnlab.tasks.base import Task, as_tensor_batch, register_task

LENGTH = 64


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


@register_task("digits")
class Digits(Task):
    """Sequential (optionally permuted) pixel-by-pixel classification of sklearn's 8x8 digits."""

    output = "classify"
    report_metrics = ("acc",)

    def __init__(self, permute: bool = False, test_fraction: float = 0.2, split_seed: int = 0,
                 test_lengths: list[int] | None = None):
        x, y = _load()
        self.permute = bool(permute)
        order = np.random.default_rng(split_seed).permutation(len(x))
        n_test = int(round(test_fraction * len(x)))
        if not 0 < n_test < len(x):
            raise ValueError(f"digits: test_fraction must be in (0, 1), got {test_fraction}")
        self.perm = np.random.default_rng([split_seed, 7]).permutation(LENGTH) if self.permute else np.arange(LENGTH)
        x = x[:, self.perm]
        self.x_train, self.y_train = x[order[n_test:]], y[order[n_test:]]
        self.x_test, self.y_test = x[order[:n_test]], y[order[:n_test]]
        super().__init__(LENGTH, test_lengths)

    def check_length(self, seq_len: int) -> None:
        if seq_len != LENGTH:
            raise ValueError(f"digits: length {seq_len} impossible; images are 8x8, so the only length is {LENGTH}")

    def model_io(self):
        return {"input_dim": 1, "head": "classify", "num_classes": 10}

    def sample(self, batch_size, seq_len, rng, split):
        idx = rng.integers(0, len(self.x_train), size=batch_size)
        return as_tensor_batch(self.x_train[idx, :, None], self.y_train[idx])

    def test_batches(self, seq_len, num_examples, batch_size, seed):
        """The whole fixed test split (num_examples is ignored: the split is the test set)."""
        for i in range(0, len(self.x_test), batch_size):
            yield as_tensor_batch(self.x_test[i:i + batch_size, :, None], self.y_test[i:i + batch_size])
