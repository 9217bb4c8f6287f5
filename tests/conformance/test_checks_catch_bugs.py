"""The conformance checks must fail on broken mixers, or they prove nothing."""
import pytest
import torch
from torch import nn

from rnnlab.layers.base import Mixer
from tests.conformance import checks


class ToyEMA(Mixer):
    """h_t = a*h_{t-1} + (1-a)*W x_t, y = h. Correct unless a bug flag is set."""

    def __init__(self, d_model, bug=None):
        super().__init__(d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.logit = nn.Parameter(torch.zeros(d_model))
        self.bug = bug

    def init_state(self, batch_size, device=None, dtype=None):
        return {"h": torch.zeros(batch_size, self.d_model, device=device, dtype=dtype or torch.float32)}

    def state_size(self, seq_len):
        return self.d_model + (1 if self.bug == "state_size" else 0)

    def parallel(self, x, state):
        a = torch.sigmoid(self.logit)
        u = (1 - a) * self.proj(x)
        h = state["h"].to(x.dtype)
        hs = []
        for t in range(x.shape[1]):
            h = a * h + u[:, t]
            hs.append(h)
        y = torch.stack(hs, 1)
        if self.bug == "batch_mix":
            y = y + 1e-3 * y.mean(0, keepdim=True)
        return y, {"h": h.float()}

    def step(self, x, state):
        if self.bug == "step_ignores_state":
            state = self.init_state(x.shape[0])
        return self.parallel(torch.cat([x, x], 1)[:, :1], state) if self.bug != "step_wrong" else (x, state)


class ToyConv(Mixer):
    """y = causal depthwise conv (width 4) of W x, state = the last 3 inputs. With bug="leaky_packed" its
    native packed form runs the packed batch as one row: the conv reads across every boundary."""

    W = 4

    def __init__(self, d_model, bug=None):
        super().__init__(d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.weight = nn.Parameter(torch.randn(d_model, self.W) * 0.5)
        self.bug = bug

    def init_state(self, batch_size, device=None, dtype=None):
        return {"tail": torch.zeros(batch_size, self.W - 1, self.d_model, device=device, dtype=dtype or torch.float32)}

    def state_size(self, seq_len):
        return (self.W - 1) * self.d_model

    def parallel(self, x, state):
        from rnnlab.ops.conv import causal_conv1d

        y, tail = causal_conv1d(self.proj(x), self.weight, None, state["tail"])
        return y, {"tail": tail}

    step = parallel

    def packed(self, x, state, packing):
        if self.bug != "leaky_packed":
            return super().packed(x, state, packing)
        y, s = self.parallel(x, {"tail": state["tail"][:1]})
        return y, {"tail": s["tail"].expand(len(packing.lengths), -1, -1)}


def make(bug=None, cls=ToyEMA):
    def f():
        torch.manual_seed(0)
        return cls(checks.D_MODEL, bug)

    return f


@pytest.mark.parametrize("check", sorted(checks.CHECKS))
def test_correct_toy_passes(check):
    checks.CHECKS[check](make())


@pytest.mark.parametrize(
    "bug, check",
    [
        ("step_ignores_state", "parallel_equals_step"),
        ("step_ignores_state", "split_equals_full"),
        ("step_wrong", "parallel_equals_step"),
        ("batch_mix", "batch_independence"),
        ("state_size", "state_size"),
    ],
)
def test_broken_mixer_is_reported(bug, check):
    with pytest.raises(AssertionError):
        checks.CHECKS[check](make(bug))


@pytest.mark.parametrize("check", ["packed_equals_separate", "parallel_equals_step", "split_equals_full"])
def test_correct_toy_conv_passes(check):
    checks.CHECKS[check](make(cls=ToyConv))


def test_leaky_conv_across_a_boundary_is_reported():
    with pytest.raises(AssertionError, match="packed vs separate"):
        checks.check_packed_equals_separate(make("leaky_packed", cls=ToyConv))


def test_dead_parameter_is_reported():
    def f():
        m = make()()
        m.unused = nn.Parameter(torch.ones(3))
        return m

    with pytest.raises(AssertionError, match="unused"):
        checks.check_gradients(f)


def test_unchecked_input_is_reported():
    class NoCheck(ToyEMA):
        def check_input(self, x):
            pass

    def f():
        return NoCheck(checks.D_MODEL)

    with pytest.raises((AssertionError, RuntimeError, IndexError)):
        checks.check_bad_input(f)


class ToyTimeEMA(ToyEMA):
    """A continuous-time EMA, h_t = e^{−k dt_t} h_{t−1} + (1 − e^{−k dt_t}) W x_t: correct unless a bug flag is set
    ("step_ignores_dt": the step uses dt = 1; "dt_unused": dt is accepted and ignored)."""

    takes_dt = True

    def parallel(self, x, state, dt=None):
        dt = torch.ones(x.shape[:2]) if dt is None or self.bug == "dt_unused" else dt
        a = torch.exp(-torch.nn.functional.softplus(self.logit) * dt[..., None])
        u, h, hs = self.proj(x), state["h"].to(x.dtype), []
        for t in range(x.shape[1]):
            h = a[:, t] * h + (1 - a[:, t]) * u[:, t]
            hs.append(h)
        return torch.stack(hs, 1), {"h": h.float()}

    def step(self, x, state, dt=None):
        return self.parallel(x, state, None if self.bug == "step_ignores_dt" else dt)


def test_correct_time_mixer_passes():
    checks.check_time_step(make(cls=ToyTimeEMA))


@pytest.mark.parametrize("bug", ["step_ignores_dt", "dt_unused"])
def test_broken_time_step_is_reported(bug):
    with pytest.raises(AssertionError):
        checks.check_time_step(make(bug, cls=ToyTimeEMA))
