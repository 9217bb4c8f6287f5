"""decay_exp: exp of log-decay exponents, clamped into the range where torch's CPU exp stays fast."""
import math

import torch

from rnnlab.ops._exp import EXP_FLOOR, decay_exp


def test_decay_exp_is_exp_in_range_and_clamped_outside():
    x = torch.tensor([float("-inf"), -1000.0, -100.0, EXP_FLOOR, -3.0, 0.0, 5.0, 500.0], requires_grad=True)
    y = decay_exp(x, max=0.0)
    assert torch.equal(y[3:6], torch.exp(x[3:6].detach()))
    floor = math.exp(EXP_FLOOR)
    assert torch.allclose(y[:3], torch.full((3,), floor)) and torch.equal(y[6:], torch.ones(2))
    assert (y >= torch.finfo(torch.float32).tiny).all()  # never a denormal or zero: matmuls after it stay fast
    y.sum().backward()
    assert torch.equal(x.grad[:3], torch.zeros(3)) and torch.equal(x.grad[6:], torch.zeros(2))
    assert torch.allclose(x.grad[4], torch.exp(torch.tensor(-3.0)))


def test_decay_exp_without_upper_bound():
    x = torch.tensor([-200.0, 10.0])
    assert torch.allclose(decay_exp(x), torch.tensor([math.exp(EXP_FLOOR), math.exp(10.0)]))
