"""Mimetic initialization of Mamba / Mamba-2 (Trockman et al. 2024): decays near 1 (A ~ -U(0, 1]), C = B at
initialization; everything else, and the default initialization, unchanged."""
import math

import pytest
import torch
import torch.nn.functional as F

from rnnlab.layers.registry import create_mixer, mixer_info
from rnnlab.testing import assert_close, rel_err

D = 32


def build(name, seed=0, **kw):
    torch.manual_seed(seed)
    return create_mixer(name, D, **{**mixer_info(name).small, **kw})


def c_rows(name, m):
    """The parameter entries mimetic init rewrites: A_log, and the C rows (W_x / W_in) and C conv channels."""
    if name == "mamba":
        r, N = m.dt_rank, m.d_state
        return {"A_log": (slice(None),), "x_proj.weight": (slice(r + N, None),)}
    di, GN = m.d_inner, m.ngroups * m.d_state
    return {"A_log": (slice(None),), "in_proj.weight": (slice(2 * di + GN, 2 * di + 2 * GN),),
            "conv.weight": (slice(di + GN, di + 2 * GN),), "conv.bias": (slice(di + GN, di + 2 * GN),)}


def b_and_c(name, m, x):
    """B_t and C_t (B, T, ...) as the layer computes them from x."""
    if name == "mamba":
        _, _, _, Bm, Cm, _, _ = m._inputs(x, m.init_state(x.shape[0]))
        return Bm, Cm
    di, GN, H = m.d_inner, m.ngroups * m.d_state, m.num_heads
    _, xBC, _ = m.in_proj(x).split([di, di + 2 * GN, H], -1)
    xBC, _ = m.conv(xBC, m.init_state(x.shape[0])["conv"])
    _, Bm, Cm = xBC.split([di, GN, GN], -1)
    return Bm, Cm


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_default_init_unchanged(name):
    a, b = build(name), build(name, init="default")
    for (k, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), k


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_mimetic_changes_only_A_and_C(name):
    """Same seed: every parameter entry equals the default's except A_log and the C rows / channels."""
    a, m = build(name), build(name, init="mimetic")
    touched = c_rows(name, m)
    for (k, p), q in zip(a.named_parameters(), m.parameters()):
        p, q = p.detach().clone(), q.detach().clone()
        if k in touched:
            p[touched[k]], q[touched[k]] = 0, 0
        assert torch.equal(p, q), k


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_mimetic_C_equals_B(name):
    m = build(name, init="mimetic")
    x = torch.randn(2, 13, D)
    Bm, Cm = b_and_c(name, m, x)
    assert Bm.abs().sum() > 0
    assert_close(Cm, Bm, name="C_t vs B_t")  # equal weights; the matmul may round rows differently
    Bd, Cd = b_and_c(name, build(name), x)  # the default draws them independently
    assert rel_err(Cd, Bd) > 0.5


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_mimetic_decays_near_one(name):
    """A = exp(A_log) ~ U(0, 1]: in range, mean 1/2 within 5 standard errors (sd 1/sqrt(12 n)); the decay exp(-Δ A) at
    the initial Δ = softplus(bias) is >= exp(-0.1) (Δ <= 0.1)."""
    A = [torch.exp(build(name, seed=s, init="mimetic").A_log.detach()).flatten() for s in range(8)]
    A = torch.cat(A)
    assert bool(((A > 0) & (A <= 1)).all())
    assert abs(A.mean().item() - 0.5) < 5 / math.sqrt(12 * A.numel())
    m = build(name, init="mimetic")
    dt = F.softplus(m.dt_proj.bias if name == "mamba" else m.dt_bias).detach()
    A = torch.exp(m.A_log.detach())
    decay = torch.exp(-(dt[:, None] * A if name == "mamba" else dt * A))
    assert decay.min() >= math.exp(-0.1) - 1e-6 and decay.max() < 1
    assert torch.exp(build(name).A_log.detach()).max() > 1  # the default: S4D-real -(n+1) / U(1, 16)


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_bad_init_rejected(name):
    with pytest.raises(ValueError, match="init must be one of default, mimetic"):
        build(name, init="xavier")
