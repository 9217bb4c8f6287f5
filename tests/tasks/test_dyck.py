"""dyck: words checked with an explicit stack (every closer matches, the depth never passes m), the targets the closer
of the innermost open bracket and scored only where one is open, the depth bound reached, the automaton's
probabilities, determinism per (seed, step), padding, and the quick path."""
import numpy as np
import pytest
import torch

from rnnlab.tasks import IGNORE_INDEX, create_task
from tests.tasks.quick import train_briefly


def _stack_targets(x, K, m):
    """(T,) tokens -> (T,) expected targets, replaying a Python list as the stack; asserts the word is in Dyck(K, m)."""
    stack, want = [], []
    for tok in x.tolist():
        if tok < K:
            stack.append(tok)
            assert len(stack) <= m
        else:
            assert stack and stack.pop() == tok - K  # a closer closes the innermost open bracket
        want.append(K + stack[-1] if stack else IGNORE_INDEX)
    return np.array(want)


@pytest.mark.parametrize("K,m", [(8, 10), (2, 3), (1, 1)])
def test_targets_are_the_stack_top(K, m):
    task = create_task("dyck", num_types=K, max_depth=m, min_len=1, max_len=40, test_lengths=[40, 120])
    b = next(task.test_batches(120, 64, 64, seed=2))
    depths = []
    for x, y in zip(b.inputs.numpy(), b.targets.numpy()):
        assert np.array_equal(y, _stack_targets(x, K, m))
        depths.append(np.cumsum(np.where(x < K, 1, -1)).max())
    assert max(depths) == m and set(b.inputs.unique().tolist()) == set(range(2 * K))  # the bound is reached
    assert task.model_io()["vocab_size"] == 2 * K


def test_automaton_probabilities_and_padding():
    """Yao et al.'s automaton: strictly inside (0, m) open and close are equally likely; the types are uniform.
    Training rows have lengths uniform in [min_len, max_len], the rest unscored padding."""
    task = create_task("dyck", num_types=4, max_depth=6, min_len=5, max_len=60)
    b = task.train_batch(256, seed=0, step=7)
    x, n = b.inputs.numpy(), b.lengths.numpy()
    assert n.min() >= 5 and n.max() <= 60 and len(set(n)) > 30
    depth = np.cumsum(np.where(x < 4, 1, -1), 1)
    inner = (np.arange(60)[None] < n[:, None] - 1) & (depth > 0) & (depth < 6)
    nxt_open = x[:, 1:] < 4
    assert abs(nxt_open[inner[:, :-1]].mean() - 0.5) < 0.03
    counts = np.bincount(x[(x < 4) & (np.arange(60)[None] < n[:, None])], minlength=4)
    assert counts.min() > 0.9 * counts.mean()
    pad = np.arange(60)[None] >= n[:, None]
    assert (b.targets.numpy()[pad] == IGNORE_INDEX).all() and (x[pad] == 0).all()
    for row, tgt, k in zip(x, b.targets.numpy(), n):
        assert np.array_equal(_stack_targets(row[:k], 4, 6), tgt[:k])
    assert torch.equal(task.train_batch(8, 0, 7).inputs, task.train_batch(8, 0, 7).inputs)


def test_bad_options():
    with pytest.raises(ValueError, match="max_depth"):
        create_task("dyck", max_depth=0)


def test_quick_path(tmp_path):
    train_briefly(tmp_path, "dyck", "task.max_len=24", "task.test_lengths=[24,48]")
