"""passkey: the scored targets are the key read back from where it was hidden (a direct lookup), only the key is scored,
the key depth (fixed and drawn), the filler (the repeated cycle, interrupted by the key), test lengths up to 16x,
determinism per (seed, step), and the quick path through the 16x evaluation."""
import numpy as np
import pytest
import torch

from rnnlab.tasks import IGNORE_INDEX, create_task
from tests.tasks.quick import train_briefly

KEY, QUERY, FILLER = 10, 11, 12


def _lookup(x, n):
    """(T,) tokens -> (the key's start, the n digits after KEY, the position of QUERY)."""
    (k,), (q,) = np.flatnonzero(x == KEY), np.flatnonzero(x == QUERY)
    return k, x[k + 1:k + 1 + n], q


@pytest.mark.parametrize("filler", ["repeat", "random"])
def test_targets_are_the_hidden_key(filler):
    n = 5
    task = create_task("passkey", seq_len=32, key_len=n, filler=filler, filler_vocab=6)
    assert task.test_lengths == [32, 64, 128, 256, 512] and task.model_io()["vocab_size"] == 18
    for L in (32, 512):
        b = next(task.test_batches(L, 32, 32, seed=0))
        for x, y in zip(b.inputs.numpy(), b.targets.numpy()):
            k, key, q = _lookup(x, n)
            assert (key < 10).all() and q == L - n and k + n < q
            assert np.array_equal(y[q:], key) and (y[:q] == IGNORE_INDEX).all()  # only the key is scored
            assert np.array_equal(x[q + 1:], key[:-1])  # the answer so far follows the question
            fill = np.delete(x[:q], np.arange(k, k + n + 1))
            assert (fill >= FILLER).all() and (fill < FILLER + 6).all()
            if filler == "repeat":  # the paper's repeated sentence, continued across the key
                assert np.array_equal(fill, FILLER + np.arange(len(fill)) % 6)


def test_key_depth():
    n, L = 3, 40
    n_fill = L - 2 * n - 1
    for d in (0.0, 0.25, 1.0):
        b = next(create_task("passkey", seq_len=L, key_len=n, depth=d).test_batches(L, 8, 8, seed=1))
        starts = [_lookup(x, n)[0] for x in b.inputs.numpy()]
        assert starts == [round(d * n_fill)] * 8  # that fraction of the filler precedes the key
    b = create_task("passkey", seq_len=L, key_len=n).train_batch(512, seed=0, step=0)
    starts = np.array([_lookup(x, n)[0] for x in b.inputs.numpy()])
    assert starts.min() == 0 and starts.max() == n_fill and abs(starts.mean() - n_fill / 2) < 1.5  # uniform depth
    with pytest.raises(ValueError, match="depth"):
        create_task("passkey", depth=1.5)
    with pytest.raises(ValueError, match="length 11 impossible"):
        create_task("passkey", seq_len=11)


def test_determinism_per_seed_and_step():
    task = create_task("passkey")
    assert torch.equal(task.train_batch(8, 2, 5).inputs, task.train_batch(8, 2, 5).inputs)
    assert not torch.equal(task.train_batch(8, 2, 5).inputs, task.train_batch(8, 2, 6).inputs)


def test_quick_path_evaluates_up_to_16x(tmp_path):
    res = train_briefly(tmp_path, "passkey", "task.seq_len=16", "task.key_len=2")
    assert set(res["metrics"]) == {"16", "32", "64", "128", "256"}
