"""arrow_pointing: the labels against plane geometry computed from the grid alone (the generator's own helpers are
not used), one arrow and one mark per grid, line-break features, class balance, far hits on larger grids, lengths."""
import numpy as np
import pytest

from rnnlab.tasks import create_task

ANGLES = np.deg2rad(45 * np.arange(8))  # E, NE, N, NW, ...: counter-clockwise, y up


def _decode(inputs):
    """(B, n², 10) -> arrow (B, 2), angle (B,), mark (B, 2) as (row, col), and n."""
    B, T, _ = inputs.shape
    n = int(round(T ** 0.5))
    g = inputs.reshape(B, n, n, -1)
    assert (g[..., :8].sum((1, 2, 3)) == 1).all() and (g[..., 8].sum((1, 2)) == 1).all()  # one arrow, one mark
    assert (g[:, :, 0, 9] == 1).all() and g[:, :, 1:, 9].sum() == 0  # the line breaks
    b, r, c, k = np.nonzero(g[..., :8])
    _, mr, mc = np.nonzero(g[..., 8])
    return np.stack([r, c], 1), ANGLES[k], np.stack([mr, mc], 1), n


def _hits(arrow, angle, mark):
    """The ray from the arrow cell's centre at the angle passes through the mark cell's centre, ahead of the arrow."""
    dx, dy = mark[:, 1] - arrow[:, 1], -(mark[:, 0] - arrow[:, 0])  # rows grow downwards
    ux, uy = np.cos(angle), np.sin(angle)
    return (np.abs(ux * dy - uy * dx) < 1e-9) & (ux * dx + uy * dy > 0)


@pytest.mark.parametrize("L", [64, 256, 1024])
def test_labels_are_the_geometry(L):
    task = create_task("arrow_pointing")
    batch = next(task.test_batches(L, 400, 400, seed=1))
    arrow, angle, mark, n = _decode(batch.inputs.numpy())
    hits = _hits(arrow, angle, mark)
    assert np.array_equal(hits.astype(np.int64), batch.targets.numpy())
    assert 0.4 < hits.mean() < 0.6
    assert (np.abs(arrow - mark).max(1) >= 1).all()
    if n == 32:  # hits farther than a training grid is wide, and misses next to the ray
        assert (np.abs(arrow - mark).max(1)[hits] > 8).sum() > 20


def test_training_batches_and_lengths():
    task = create_task("arrow_pointing", seq_len=36, test_lengths=[36, 144])
    b = task.train_batch(64, seed=0, step=3)
    arrow, angle, mark, n = _decode(b.inputs.numpy())
    assert n == 6 and np.array_equal(_hits(arrow, angle, mark), b.targets.numpy().astype(bool))
    for bad in (50, 1):
        with pytest.raises(ValueError, match=f"length {bad} impossible"):
            create_task("arrow_pointing", seq_len=bad)
    with pytest.raises(ValueError, match="length 100 impossible|length 99 impossible"):
        create_task("arrow_pointing", test_lengths=[64, 99])
