"""Forecasting the Lorenz-63 system (Lorenz 1963), integrated locally with classical RK4.

dx/dt = σ(y − x), dy/dt = x(ρ − z) − y, dz/dt = xy − βz with σ=10, ρ=28, β=8/3; step
``dt`` = 0.01, one observation every ``stride`` steps. Each sequence starts on the attractor
(random initial point, ``burn_in`` steps discarded). Inputs (B, T, 3) are the states
normalized by the attractor's mean and standard deviation; at every position t the model
regresses the normalized states at t+h for every h in ``horizons`` (targets (B, T, 3·H)).
Because targets are normalized, RMSE is the normalized RMSE (NRMSE = RMSE / std); it is
reported per horizon (``nrmse@h``) and averaged (``nrmse``, the primary metric). Train and
test trajectories come from independent seeded initial conditions. Diagnoses: modelling a
chaotic continuous-valued dynamical system (error growth with horizon).

Partial observation (``observed``, default all three): only those coordinates are inputs, while the targets stay
the full state, so the hidden coordinates must be inferred from the observed history (a delay embedding).

Irregular sampling (``irregular=True``): the observations are taken at random times. Each gap is a whole number of
RK4 steps, uniform in {1, …, round(max_gap · stride)} (so Δt ∈ (0, max_gap] in units of the regular observation step
dt·stride, mean ≈ max_gap/2), and the inputs gain a last feature, Δt_t, the time since the previous observation (the
first observation's gap too). The targets stay on the physical clock: the state h regular steps (h·dt·stride) after
each observation, wherever the next observations fall. A model sees Δt as a feature; one built with
``ModelConfig(time_input=True)`` also hands it to its continuous-time mixers as their time step (LTC, CfC, HiPPO-RNN).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from rnnlab.tasks.base import Task, as_tensor_batch, register_task

SIGMA, RHO, BETA = 10.0, 28.0, 8.0 / 3.0


def _f(s: np.ndarray) -> np.ndarray:
    x, y, z = s[..., 0], s[..., 1], s[..., 2]
    return np.stack([SIGMA * (y - x), x * (RHO - z) - y, x * y - BETA * z], -1)


def integrate(s0: np.ndarray, steps: int, dt: float, stride: int = 1) -> np.ndarray:
    """s0 (B, 3) -> (B, steps, 3): RK4 states after each of ``steps`` observations (stride RK4 steps apart)."""
    out, s = [], s0.astype(np.float64)
    for _ in range(steps):
        for _ in range(stride):
            k1 = _f(s)
            k2 = _f(s + 0.5 * dt * k1)
            k3 = _f(s + 0.5 * dt * k2)
            k4 = _f(s + dt * k3)
            s = s + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(s)
    return np.stack(out, 1)


@lru_cache(maxsize=4)
def attractor_stats(dt: float, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (3,) of the attractor from a fixed long trajectory."""
    traj = integrate(np.array([[1.0, 1.0, 1.0]]), 6000, dt, stride)[0, 1000:]
    return traj.mean(0), traj.std(0)


@register_task("lorenz")
class Lorenz(Task):
    """Lorenz-63 forecasting: regress the state h steps ahead; NRMSE per horizon."""

    output = "regress"
    primary_metric = "nrmse"
    higher_is_better = False

    def __init__(self, seq_len: int = 64, test_lengths: list[int] | None = None, horizons: list[int] | None = None,
                 dt: float = 0.01, stride: int = 2, burn_in: int = 500, irregular: bool = False, max_gap: float = 3.0,
                 observed: list[int] | None = None):
        self.horizons = [int(h) for h in (horizons or [1, 4, 16])]
        if any(h < 1 for h in self.horizons):
            raise ValueError(f"lorenz: horizons must be positive ints, got {horizons}")
        self.dt, self.stride, self.burn_in = float(dt), int(stride), int(burn_in)
        self.irregular, self.max_gap = bool(irregular), float(max_gap)
        self.observed = [int(i) for i in (observed if observed is not None else [0, 1, 2])]
        if not self.observed or sorted(set(self.observed)) != sorted(self.observed) or not set(self.observed) <= {0, 1, 2}:
            raise ValueError(f"lorenz: observed must list distinct coordinates among 0 (x), 1 (y), 2 (z), got {observed}")
        self.max_gap_steps = max(1, round(self.max_gap * self.stride))  # the largest gap, in RK4 steps
        if self.irregular and not self.max_gap > 0:
            raise ValueError(f"lorenz: max_gap must be > 0 (in regular observation steps), got {max_gap}")
        self.mean, self.std = attractor_stats(self.dt, self.stride)
        self.report_metrics = ("nrmse",) + tuple(f"nrmse@{h}" for h in self.horizons)
        super().__init__(seq_len, test_lengths)

    def check_length(self, seq_len: int) -> None:
        if seq_len < 1:
            raise ValueError(f"lorenz: length {seq_len} impossible; need >= 1")

    def model_io(self):
        return {"input_dim": len(self.observed) + self.irregular, "head": "regress", "out_dim": 3 * len(self.horizons)}

    def sample(self, batch_size, seq_len, rng, split):
        T = seq_len or self.seq_len
        H = max(self.horizons)
        s0 = rng.normal(0, 1, size=(batch_size, 3)) * np.array([8.0, 9.0, 8.0]) + np.array([0.0, 0.0, 25.0])
        burn = integrate(s0, 1, self.dt, self.burn_in)[:, -1]
        if not self.irregular:
            traj = (integrate(burn, T + H, self.dt, self.stride) - self.mean) / self.std  # (B, T+H, 3)
            x = traj[:, :T, self.observed]
            y = np.concatenate([traj[:, h:h + T] for h in self.horizons], -1)
            return as_tensor_batch(x.astype(np.float32), y.astype(np.float32))
        gaps = rng.integers(1, self.max_gap_steps + 1, size=(batch_size, T))  # in RK4 steps
        at = gaps.cumsum(1) - 1  # (B, T): the RK4 step of each observation
        fine = (integrate(burn, int(at.max()) + H * self.stride + 1, self.dt, 1) - self.mean) / self.std  # (B, S, 3)
        rows = np.arange(batch_size)[:, None]
        x = np.concatenate([fine[rows, at][..., self.observed], (gaps / self.stride)[..., None]], -1)  # [observed, Δt]
        y = np.concatenate([fine[rows, at + h * self.stride] for h in self.horizons], -1)
        return as_tensor_batch(x.astype(np.float32), y.astype(np.float32))

    def metric_sums(self, outputs, targets):
        sums = super().metric_sums(outputs, targets)
        with torch.no_grad():
            err = (outputs.float() - targets) ** 2  # (B, T, 3H)
            for i, h in enumerate(self.horizons):
                e = err[..., 3 * i:3 * i + 3]
                ok = ~torch.isnan(e)
                sums[f"se@{h}"] = float(e[ok].sum())
                sums[f"n@{h}"] = float(ok.sum())
        return sums

    def finalize(self, sums):
        out = super().finalize(sums)
        out["nrmse"] = out.pop("rmse")
        for h in self.horizons:
            out[f"nrmse@{h}"] = math.sqrt(sums[f"se@{h}"] / max(sums[f"n@{h}"], 1.0))
        return out
