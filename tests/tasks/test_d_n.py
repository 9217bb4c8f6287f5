"""d_n (star-free D_n): every word matches D_n's regular expression, the labels equal a search over completions
checked by that expression, the depth bound is reached, every position is scored, determinism, and the quick path."""
import re

import numpy as np
import pytest
import torch

from rnnlab.tasks import IGNORE_INDEX, create_task
from tests.tasks.formal import reference_classes
from tests.tasks.quick import train_briefly


def _regex(n):
    """D_0 = ε, D_n = (a D_{n-1} b)*."""
    return "" if n == 0 else f"(?:a{_regex(n - 1)}b)*"


def _member(n):
    pattern = re.compile(_regex(n))
    return lambda w: pattern.fullmatch("".join("ab"[s] for s in w)) is not None


@pytest.mark.parametrize("n", [1, 2, 3])
def test_labels_are_the_sets_a_search_finds(n):
    task = create_task("d_n", depth=n, min_len=2, max_len=12, test_lengths=[12, 40])
    member = _member(n)
    b = next(task.test_batches(12, 16, 16, seed=0))
    for x, y in zip(b.inputs.numpy(), b.targets.numpy()):
        assert member(tuple(x))
        assert np.array_equal(y, reference_classes(x, 2, member, n + 1))  # n + 1 b's close any prefix
    long = next(task.test_batches(40, 32, 32, seed=0)).inputs.numpy()
    assert all(member(tuple(x)) for x in long)
    assert np.cumsum(np.where(long == 0, 1, -1), 1).max() == n  # the depth bound is reached, never passed


def test_training_words_and_determinism():
    task = create_task("d_n")  # the authors' window: lengths 2..100, test 100 and 200
    assert task.test_lengths == [100, 200] and task.model_io()["vocab_size"] == 8
    b = task.train_batch(64, seed=0, step=1)
    member = _member(2)
    n = b.lengths.numpy()
    assert (n % 2 == 0).all() and n.min() >= 2 and n.max() <= 100 and len(set(n)) > 20
    for x, y, k in zip(b.inputs.numpy(), b.targets.numpy(), n):
        assert member(tuple(x[:k])) and (y[:k] != IGNORE_INDEX).all() and (y[k:] == IGNORE_INDEX).all()
    assert torch.equal(task.train_batch(8, 0, 1).inputs, task.train_batch(8, 0, 1).inputs)
    with pytest.raises(ValueError, match="length 101 impossible"):
        create_task("d_n", test_lengths=[101])


def test_quick_path(tmp_path):
    train_briefly(tmp_path, "d_n", "task.max_len=16", "task.test_lengths=[16,32]")
