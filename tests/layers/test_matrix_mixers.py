"""RetNet, GLA, HGRN2 and linear attention mixers against float64 transcriptions of their papers'
equations from the mixers' own weights (parallel/quadratic or per-token forms), and the fixed
parameterizations the papers specify (RetNet's decays, GLA's 1/16 gate exponent, HGRN2's bound)."""
import math

import pytest
import torch
import torch.nn.functional as F

from rnnlab.layers.parts import rotary, rotary_cos_sin
from rnnlab.layers.registry import create_mixer
from rnnlab.testing import assert_close

D, T = 32, 29



def _x(seed=0):
    return torch.randn(2, T, D, generator=torch.Generator().manual_seed(seed))


def _heads(t, H):
    return t.view(*t.shape[:2], H, -1).transpose(1, 2)  # (B, H, T, d)


def _rms(t, w, eps):
    return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * w


def test_retnet_matches_parallel_retention():
    """Sun et al. 2023, eqs. 5-8: (Q Kᵀ ⊙ D) V with D_nm = γ^{n-m}, γ_h = 1 - 2^{-5-h}; GroupNorm; swish gate."""
    torch.manual_seed(0)
    m = create_mixer("retnet", D, num_heads=2, chunk_size=16)
    assert_close(torch.exp(m.log_gamma), 1 - 2.0 ** (-5 - torch.arange(2.0)), 1e-7)
    x = _x()
    w = lambda lin: lin.weight.double()  # noqa: E731
    cos, sin = rotary_cos_sin(torch.arange(T), m.head_k)
    q = _heads(rotary((x.double() @ w(m.q_proj).T).view(2, T, 2, -1), cos.double(), sin.double()).flatten(2), 2)
    k = _heads(rotary((x.double() @ w(m.k_proj).T).view(2, T, 2, -1), cos.double(), sin.double()).flatten(2), 2)
    v = _heads(x.double() @ w(m.v_proj).T, 2)
    n = torch.arange(T, dtype=torch.float64)
    gamma = 1 - 2.0 ** (-5 - torch.arange(2, dtype=torch.float64))
    Dm = gamma[:, None, None] ** (n[:, None] - n[None, :]) * (n[:, None] >= n[None, :])  # (H, T, T)
    o = (q @ k.transpose(-1, -2) / math.sqrt(m.head_k) * Dm) @ v  # (B, H, T, dv)
    o = (o - o.mean(-1, keepdim=True)) / torch.sqrt(o.var(-1, unbiased=False, keepdim=True) + m.group_norm.eps)
    o = o.transpose(1, 2).reshape(2, T, -1) * m.group_norm.weight.double() + m.group_norm.bias.double()
    y = (F.silu(x.double() @ w(m.g_proj).T) * o) @ w(m.o_proj).T
    assert_close(m(x)[0], y.float(), 1e-4)


def test_gla_matches_recurrence():
    """Yang et al. 2024, eqs. 3-4: α_t = σ(x W_α1 W_α2 + b)^{1/16}, S_t = Diag(α_t) S + k vᵀ, o = Sᵀ q / √d_k;
    y = (swish(x W_r + b_r) ⊙ RMSNorm(o)) W_O."""
    torch.manual_seed(0)
    m = create_mixer("gla", D, num_heads=2, chunk_size=16)
    x = _x(1).double()
    p = {n: t.detach().double() for n, t in m.named_parameters()}
    q, k, v = (_heads(x @ p[f"{n}_proj.weight"].T, 2) for n in "qkv")
    alpha = torch.sigmoid(x @ p["gk_proj.down.weight"].T @ p["gk_proj.up.weight"].T + p["gk_proj.up.bias"]) ** (1 / 16)
    alpha = _heads(alpha, 2)
    S, os = torch.zeros(2, 2, m.head_k, m.head_v, dtype=torch.float64), []
    for t in range(T):
        S = alpha[:, :, t, :, None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        os.append((S * q[:, :, t, :, None]).sum(-2) / math.sqrt(m.head_k))
    o = _rms(torch.stack(os, 1), p["o_norm.weight"], m.o_norm.eps)  # (B, T, H, dv)
    r = F.silu(x @ p["g_proj.weight"].T + p["g_proj.bias"]).view(2, T, 2, -1)
    y = (o * r).reshape(2, T, -1) @ p["o_proj.weight"].T
    assert_close(m(x.float())[0], y.float(), 1e-4)


@pytest.mark.parametrize("lower_bound", [0.0, 0.6])
def test_hgrn2_matches_recurrence(lower_bound):
    """Qin et al. 2024, eqs. 3-4: f = γ + (1-γ) σ(x W_f), S_t = Diag(f) S + (1 - f) iᵀ, o = Sᵀ SiLU(x W_q)."""
    torch.manual_seed(0)
    m = create_mixer("hgrn2", D, expand_ratio=8, lower_bound=lower_bound, chunk_size=16)
    x = _x(2).double()
    p = {n: t.detach().double() for n, t in m.named_parameters()}
    H = m.num_heads
    f = _heads(lower_bound + (1 - lower_bound) * torch.sigmoid(x @ p["f_proj.weight"].T), H)
    i, qo = _heads(x @ p["i_proj.weight"].T, H), _heads(F.silu(x @ p["q_proj.weight"].T), H)
    S, os = torch.zeros(2, H, 8, 8, dtype=torch.float64), []
    for t in range(T):
        S = f[:, :, t, :, None] * S + (1 - f[:, :, t, :, None]) * i[:, :, t, None, :]
        os.append((S * qo[:, :, t, :, None]).sum(-2))
    y = _rms(torch.stack(os, 1).reshape(2, T, -1), p["norm.weight"], m.norm.eps) @ p["o_proj.weight"].T
    assert_close(m(x.float())[0], y.float(), 1e-4)


@pytest.mark.parametrize("normalize", [True, False])
def test_linear_attention_matches_quadratic_form(normalize):
    """Katharopoulos et al. 2020, eqs. 6-9 causal: o_i = Σ_{j<=i} φ(q_i)ᵀφ(k_j) v_j / Σ_{j<=i} φ(q_i)ᵀφ(k_j), φ = elu + 1."""
    torch.manual_seed(0)
    m = create_mixer("linear_attention", D, num_heads=2, normalize=normalize, chunk_size=16)
    x = _x(3).double()
    q, k, v = (_heads(t, 2) for t in (x @ m.qkv.weight.double().T).chunk(3, -1))
    A = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2) * torch.ones(T, T, dtype=torch.float64).tril()
    o = (A @ v) / (A.sum(-1, keepdim=True) + m.eps if normalize else 1.0)
    y = o.transpose(1, 2).reshape(2, T, -1) @ m.out.weight.double().T
    assert_close(m(x.float())[0], y.float(), 1e-4)
