"""Counter languages: a^n b^n (c^n) and Shuffle-Dyck words checked by their definitions, the labels equal a search over
completions checked by membership alone, every position scored, determinism, and the quick path."""
import numpy as np
import pytest
import torch

from rnnlab.tasks import IGNORE_INDEX, create_task
from tests.tasks.formal import reference_classes
from tests.tasks.quick import train_briefly


def _anbn_member(k):
    def member(w):
        n = len(w) // k
        return n >= 1 and len(w) == k * n and tuple(w) == tuple(s for s in range(k) for _ in range(n))
    return member


def _shuffle_member(types):
    """Every type's projection is a Dyck-1 word: its count of open brackets never drops below 0 and ends at 0."""
    def member(w):
        for i in range(types):
            depth = 0
            for s in w:
                depth += int(s == 2 * i) - int(s == 2 * i + 1)
                if depth < 0:
                    return False
            if depth:
                return False
        return True
    return member


@pytest.mark.parametrize("name,k,L", [("anbn", 2, 8), ("anbncn", 3, 6), ("anbn", 4, 4)])
def test_anbn_labels(name, k, L):
    task = create_task(name, num_chars=k, min_len=k, max_len=4 * k, test_lengths=[L])
    member = _anbn_member(k)
    x, y = (t.numpy()[0] for t in (lambda b: (b.inputs, b.targets))(next(task.test_batches(L, 1, 1, 0))))
    assert member(tuple(x))
    assert np.array_equal(y, reference_classes(x, k, member, (k - 1) * (L // k + 1)))
    b = task.train_batch(32, seed=0, step=0)
    for row, tgt, n in zip(b.inputs.numpy(), b.targets.numpy(), b.lengths.numpy()):
        assert n % k == 0 and member(tuple(row[:n])) and (tgt[n:] == IGNORE_INDEX).all()
        assert np.array_equal(tgt[:n], next(create_task(name, num_chars=k, test_lengths=[int(n)])
                                            .test_batches(int(n), 1, 1, 0)).targets.numpy()[0])  # one word per length
    with pytest.raises(ValueError, match="multiples of"):
        create_task(name, num_chars=k, test_lengths=[k * 5 + 1])


@pytest.mark.parametrize("types", [1, 2])
def test_shuffle_dyck_labels(types):
    """Prefixes of a word of length 8 have at most 5 open brackets after one more symbol: 5-symbol completions suffice."""
    task = create_task("shuffle_dyck", num_types=types, min_len=2, max_len=8, test_lengths=[8, 40])
    member = _shuffle_member(types)
    b = next(task.test_batches(8, 6, 6, seed=3))
    for x, y in zip(b.inputs.numpy(), b.targets.numpy()):
        assert member(tuple(x))
        assert np.array_equal(y, reference_classes(x, 2 * types, member, 5))
    long = next(task.test_batches(40, 64, 64, seed=3)).inputs.numpy()
    assert all(member(tuple(x)) for x in long) and set(np.unique(long)) == set(range(2 * types))


def test_shuffle_interleaves_the_types_and_determinism():
    task = create_task("shuffle_dyck", num_types=2)
    b = task.train_batch(64, seed=1, step=2)
    x, n = b.inputs.numpy(), b.lengths.numpy()
    crossed = 0
    for row, k in zip(x, n):
        w = row[:k]
        assert _shuffle_member(2)(tuple(w))
        d0 = np.cumsum((w == 0).astype(int) - (w == 1))
        d1 = np.cumsum((w == 2).astype(int) - (w == 3))
        crossed += bool(((d0 > 0) & (d1 > 0)).any())  # both types open at once: not a concatenation
    assert crossed > 10
    assert torch.equal(task.train_batch(8, 1, 2).inputs, task.train_batch(8, 1, 2).inputs)


@pytest.mark.parametrize("name", ["anbncn", "shuffle_dyck"])
def test_quick_path(tmp_path, name):
    train_briefly(tmp_path, name, "task.max_len=12", "task.test_lengths=[12,24]")
