"""flip_flop: the reads' targets against a one-bit memory replayed pair by pair, the instruction probabilities of the
three variants, scoring only the reads, determinism per (seed, step), the lengths, and the quick path."""
import numpy as np
import pytest
import torch

from rnnlab.tasks import IGNORE_INDEX, create_task
from tests.tasks.quick import train_briefly

W, R, I = 0, 1, 2


def _replay(x):
    """(T,) tokens -> (T,) expected targets: at every read, the bit of the most recent write (a plain loop)."""
    want, memory = np.full(len(x), IGNORE_INDEX), None
    for t in range(0, len(x), 2):
        op, bit = int(x[t]), int(x[t + 1])
        assert op in (W, R, I) and bit in (3, 4)
        if op == W:
            memory = bit
        elif op == R:
            assert memory is not None and bit == memory  # the data after a read is the remembered bit
            want[t] = memory
    return want


@pytest.mark.parametrize("name", ["flip_flop", "flip_flop_sparse", "flip_flop_dense"])
def test_reads_return_the_last_write(name):
    task = create_task(name, seq_len=64)
    for b in (task.train_batch(64, seed=1, step=3), next(task.test_batches(64, 64, 64, seed=1))):
        x, y = b.inputs.numpy(), b.targets.numpy()
        assert (x[:, 0] == W).all() and (x[:, -2] == R).all()  # the first instruction writes, the last reads
        for row_x, row_y in zip(x, y):
            assert np.array_equal(row_y, _replay(row_x))  # scored exactly at the reads
    assert torch.equal(task.train_batch(8, 1, 3).inputs, task.train_batch(8, 1, 3).inputs)
    assert not torch.equal(task.train_batch(8, 1, 3).inputs, task.train_batch(8, 1, 4).inputs)


@pytest.mark.parametrize("name,p_train,p_test", [("flip_flop", 0.8, 0.8), ("flip_flop_sparse", 0.8, 0.98),
                                                 ("flip_flop_dense", 0.8, 0.1)])
def test_instruction_probabilities(name, p_train, p_test):
    """FFL(p): the middle instructions are ignore with probability p, write and read (1 − p)/2 each (64·255 draws:
    std ≤ 0.004)."""
    task = create_task(name, seq_len=512)
    for batch, p in ((task.train_batch(64, 0, 0), p_train), (next(task.test_batches(512, 64, 64, 0)), p_test)):
        ops = batch.inputs[:, 2:-2:2].numpy()
        assert abs((ops == I).mean() - p) < 0.02
        assert abs((ops == W).mean() - (1 - p) / 2) < 0.02 and abs((ops == R).mean() - (1 - p) / 2) < 0.02


def test_lengths_and_options():
    with pytest.raises(ValueError, match="length 63 impossible"):
        create_task("flip_flop", test_lengths=[63])
    with pytest.raises(ValueError, match="ignore"):
        create_task("flip_flop", p_ignore=1.0)
    assert create_task("flip_flop").seq_len == 512  # Liu et al.'s T


def test_quick_path(tmp_path):
    res = train_briefly(tmp_path, "flip_flop_sparse", "task.seq_len=32", "task.test_lengths=[32,64]")
    assert set(res["metrics"]) == {"32", "64"}
