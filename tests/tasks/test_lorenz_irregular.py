"""Irregularly sampled Lorenz: observations at random RK4 steps, Δt their gaps (the 4th input feature), targets on
the physical clock; and the model's time_input route (the last feature handed to continuous-time mixers as dt)."""
import numpy as np
import pytest
import torch

from rnnlab.models import ModelConfig, SequenceModel
from rnnlab.ops.varlen import cu_seqlens_from_lengths
from rnnlab.tasks import create_task
from rnnlab.tasks.lorenz import integrate
from rnnlab.testing import assert_close


def test_gaps_and_targets_follow_the_trajectory():
    """Re-integrating the denormalized observation k by its next gap gives observation k + 1, and by h regular steps
    gives the horizon-h target (float32 data: 1e-5)."""
    task = create_task("lorenz", irregular=True, seq_len=20, burn_in=50, horizons=[1, 3], max_gap=2.5)
    assert task.model_io()["input_dim"] == 4
    b = task.train_batch(3, seed=0, step=0)
    x, y = b.inputs.double().numpy(), b.targets.double().numpy()
    gaps = x[..., 3] * task.stride
    assert np.allclose(gaps, np.round(gaps)) and gaps.min() >= 1 and gaps.max() <= task.max_gap_steps
    assert len(np.unique(gaps)) > 1  # irregular
    state = x[..., :3] * task.std + task.mean
    for k in range(19):
        for r in range(3):
            nxt = integrate(state[r:r + 1, k], int(gaps[r, k + 1]), task.dt, 1)[0, -1]
            assert np.allclose((nxt - task.mean) / task.std, x[r, k + 1, :3], atol=1e-4)
            for i, h in enumerate((1, 3)):
                fut = integrate(state[r:r + 1, k], h * task.stride, task.dt, 1)[0, -1]
                assert np.allclose((fut - task.mean) / task.std, y[r, k, 3 * i:3 * i + 3], atol=1e-4)


def test_partial_observation():
    """observed=[0]: the inputs are x (and Δt), the targets the whole state."""
    task = create_task("lorenz", irregular=True, observed=[0], seq_len=10, burn_in=50, horizons=[1])
    assert task.model_io() == {"input_dim": 2, "head": "regress", "out_dim": 3}
    full = create_task("lorenz", irregular=True, seq_len=10, burn_in=50, horizons=[1])
    a, b = task.train_batch(2, seed=0, step=0), full.train_batch(2, seed=0, step=0)
    assert torch.equal(a.inputs[..., 0], b.inputs[..., 0]) and torch.equal(a.inputs[..., 1], b.inputs[..., 3])
    assert torch.equal(a.targets, b.targets)
    regular = create_task("lorenz", observed=[1, 2], seq_len=10, burn_in=50)
    assert regular.train_batch(2, 0, 0).inputs.shape == (2, 10, 2)
    with pytest.raises(ValueError, match="observed"):
        create_task("lorenz", observed=[3])


def test_time_input_reaches_only_time_step_mixers():
    """time_input=True: CfC's outputs change with the Δt column beyond what the feature alone does (the same weights
    with time_input=False differ), packed == separate; an LRU model ignores the route (identical outputs)."""
    x = torch.randn(1, 12, 4)
    x[..., 3] = 0.5 + 2 * torch.rand(1, 12)
    outs = {}
    for mixer, kw in (("cfc", {"backbone_units": 8}), ("lru", {})):
        for ti in (False, True):
            torch.manual_seed(0)
            m = SequenceModel(ModelConfig(mixer=mixer, d_model=8, n_layers=2, input_dim=4, head="regress", out_dim=3,
                                          time_input=ti, mixer_kwargs=kw))
            outs[mixer, ti] = m(x)[0]
            if ti:
                yp, _ = m(x, cu_seqlens=cu_seqlens_from_lengths([5, 7]))
                assert_close(yp, torch.cat([m(x[:, :5])[0], m(x[:, 5:])[0]], 1))
    assert (outs["cfc", True] - outs["cfc", False]).abs().max() > 1e-3
    assert torch.equal(outs["lru", True], outs["lru", False])
    with pytest.raises(ValueError, match="time_input"):
        ModelConfig(mixer="cfc", vocab_size=5, time_input=True)
