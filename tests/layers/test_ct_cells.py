"""The sequential continuous-time cells (hippo_rnn, ltc, cfc): the recurrent form (input terms hoisted out of the
loop) against the cell written out token by token (backend="reference"), same weights, from a non-trivial state,
with and without per-token time steps dt: outputs, new state, gradients of x, dt, the initial state and every
parameter. Then each cell against its paper's equations written out independently.

The forms are compared in float64, to float64's tolerance: the two differ only in the order of float32 roundoff,
which sums of many gradient terms amplify (hippo_rnn with LegT/ZOH: 1.3e-5 relative in the memory bias's gradient,
measured), while a wrong formula shows at any precision. The float32 forms are held to each other by the
conformance suite (parallel == step, packed == separate)."""
import math

import pytest
import torch
import torch.nn.functional as F

from rnnlab.ops import hippo
from rnnlab.testing import assert_close
from tests.layers.test_diag_reference_forms import _make as make
from tests.layers.test_diag_reference_forms import check_against_reference

D = 8
CASES = {
    "hippo_rnn-legs-bilinear": ("hippo_rnn", {}),
    "hippo_rnn-legt-zoh": ("hippo_rnn", {"measure": "legt", "method": "zoh", "theta": 10.0}),
    "hippo_rnn-lagt-forward": ("hippo_rnn", {"measure": "lagt", "method": "forward", "memory_size": 2}),
    "ltc": ("ltc", {}),
    "cfc-paper": ("cfc", {}),
    "cfc-code": ("cfc", {"gate": "code"}),
}


def _make(name, **kw):
    return make(name, torch.float64, **kw)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("T", [1, 17, 64])
@pytest.mark.parametrize("with_dt", [False, True])
def test_recurrent_form_equals_reference(case, T, with_dt):
    name, kw = CASES[case]
    check_against_reference(name, T=T, dtype=torch.float64, with_dt=with_dt, **kw)


def test_hippo_rnn_matches_the_papers_cell():
    """h_t = (1 − g) h_{t−1} + g tanh(W_τ[h, c, x] + b), g = σ(W_g[h, c, x] + b_g), f_t = W_f h_t + b_f,
    c_t = bilinear LegS (I − A/2t)⁻¹[(I + A/2t) c_{t−1} + B f_t / t], written with dense inverses, float64."""
    m = _make("hippo_rnn", memory_order=5)
    x = torch.randn(2, 9, D, dtype=torch.float64)
    y, s = m(x)
    A, B = hippo.legs(5)
    I = torch.eye(5, dtype=torch.float64)
    W, b = m.weight.detach(), m.bias.detach()
    h, c = torch.zeros(2, D, dtype=torch.float64), torch.zeros(2, 5, dtype=torch.float64)
    for t in range(9):
        pre = torch.cat([h, c, x[:, t]], -1) @ W.T + b
        g = torch.sigmoid(pre[:, D:])
        h = (1 - g) * h + g * torch.tanh(pre[:, :D])
        f = h @ m.weight_f.detach().T + m.bias_f.detach()
        k = t + 1
        c = (c @ (I + A / (2 * k)).T + f * B / k) @ torch.linalg.inv(I - A / (2 * k)).T
        assert_close(y[:, t], h)
    assert_close(s["c"][:, 0], c) and assert_close(s["t"], torch.full((2,), 9.0, dtype=torch.float64))


def test_ltc_matches_the_fused_solver():
    """Eq. 3 unfolded 6 times per token with Δ = dt/6: x ← (x + Δ (g_l v_l + Σ a E + Σ s E^s)/c_m) /
    (1 + Δ (g_l + Σ a + Σ s)/c_m), a_ij = w_ij σ(σ_ij (x_i − μ_ij)), s_ij likewise on the input; float64."""
    m = _make("ltc")
    with torch.no_grad():
        m.input_w.mul_(1.3)
        m.output_b.add_(0.1)
    x, dt = torch.randn(2, 5, D, dtype=torch.float64), 0.3 + torch.rand(2, 5, dtype=torch.float64)
    y, s = m(x, dt=dt)
    p = {n: t.detach() for n, t in m.named_parameters()}
    sp = F.softplus
    v = torch.zeros(2, D, dtype=torch.float64)
    for t in range(5):
        I = x[:, t] * p["input_w"] + p["input_b"]
        sa = sp(p["sensory_w_raw"]) * torch.sigmoid(p["sensory_sigma"] * (I[:, :, None] - p["sensory_mu"]))
        for _ in range(6):
            a = sp(p["w_raw"]) * torch.sigmoid(p["sigma"] * (v[:, :, None] - p["mu"]))
            k = (dt[:, t, None] / 6) / sp(p["cm_raw"])
            num = sp(p["gleak_raw"]) * p["vleak"] + (a * p["erev"]).sum(1) + (sa * p["sensory_erev"]).sum(1)
            den = sp(p["gleak_raw"]) + a.sum(1) + sa.sum(1)
            v = (v + k * num) / (1 + k * den)
        assert_close(y[:, t], v * p["output_w"] + p["output_b"])
    assert_close(s["v"], v)
    # the authors' initial ranges, through softplus
    fresh = _make("ltc")
    assert 0.4 <= sp(fresh.cm_raw).min() and sp(fresh.cm_raw).max() <= 0.6
    assert set(fresh.erev.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("gate", ["paper", "code"])
def test_cfc_matches_eq_10(gate):
    """h_t = σ(−f t) g + (1 − σ(−f t)) h̃ on z = 1.7159 tanh(0.666 (W[x, h] + b)) (eq. 10), or the code's gate."""
    m = _make("cfc", gate=gate)
    x, dt = torch.randn(2, 6, D, dtype=torch.float64), 0.3 + torch.rand(2, 6, dtype=torch.float64)
    y, _ = m(x, dt=dt)
    W, b, Wh, bh = (p.detach() for p in (m.weight, m.bias, m.head_weight, m.head_bias))
    h = torch.zeros(2, D, dtype=torch.float64)
    for t in range(6):
        z = 1.7159 * torch.tanh(0.666 * (torch.cat([x[:, t], h], -1) @ W.T + b))
        heads = (z @ Wh.T + bh).split(D, -1)
        ts = dt[:, t, None]
        if gate == "paper":
            s = torch.sigmoid(-heads[0] * ts)
            h = s * torch.tanh(heads[1]) + (1 - s) * torch.tanh(heads[2])
        else:
            s = torch.sigmoid(heads[2] * ts + heads[3])
            h = (1 - s) * torch.tanh(heads[0]) + s * torch.tanh(heads[1])
        assert_close(y[:, t], h)
    assert math.isclose(float(m.weight.detach().std()), math.sqrt(2 / (2 * D + 16)), rel_tol=0.3)  # Xavier-uniform
