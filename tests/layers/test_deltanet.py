"""Delta-rule mixers (deltanet, gated_deltanet, deltaproduct): parameterization checks beyond the conformance suite."""
import pytest
import torch

import rnnlab
from rnnlab.testing import assert_close


def test_negative_eigenvalues_doubles_beta():
    torch.manual_seed(0)
    m = rnnlab.create_mixer("deltanet", 32, num_heads=2, chunk_size=16)
    torch.manual_seed(0)
    m2 = rnnlab.create_mixer("deltanet", 32, num_heads=2, chunk_size=16, negative_eigenvalues=True)
    x = torch.randn(2, 5, 32)
    beta = torch.sigmoid(m.b_proj(x))
    assert beta.max() < 1
    assert torch.equal(m2.b_proj.weight, m.b_proj.weight)
    y, _ = m(x)
    y2, _ = m2(x)
    assert (y - y2).abs().max() > 0  # β = 2σ(·) changes the memory


def test_gated_deltanet_gate_init():
    """Mamba-2 init: A ∈ [0, 16] (A_log = log A), dt = softplus(dt_bias) ∈ [1e-3, 0.1]; no weight decay on them."""
    m = rnnlab.create_mixer("gated_deltanet", 64, num_heads=8)
    A = m.A_log.exp()
    assert (A >= 0).all() and (A <= 16).all()
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert (dt >= 1e-4).all() and (dt <= 0.1 + 1e-6).all()
    assert m.A_log._no_weight_decay and m.dt_bias._no_weight_decay


@pytest.mark.parametrize("neg", [False, True])
def test_deltaproduct_nh1_equals_gated_deltanet(neg):
    """DeltaProduct with one Householder step per token is Gated DeltaNet (same weights)."""
    torch.manual_seed(0)
    gdn = rnnlab.create_mixer("gated_deltanet", 32, num_heads=2, chunk_size=16, negative_eigenvalues=neg)
    dp = rnnlab.create_mixer("deltaproduct", 32, num_heads=2, chunk_size=16, num_householder=1, negative_eigenvalues=neg)
    dp.load_state_dict(gdn.state_dict())
    x = torch.randn(2, 23, 32)
    y, s = gdn(x)
    y2, s2 = dp(x)
    assert_close(y2, y, 1e-6)
    assert_close(s2["S"], s["S"], 1e-6)


@pytest.mark.parametrize("nh", [2, 3])
def test_deltaproduct_projections_carry_nh(nh):
    m = rnnlab.create_mixer("deltaproduct", 32, num_heads=2, num_householder=nh)
    assert m.k_proj.out_features == 2 * nh * 16 and m.b_proj.out_features == 2 * nh
    y, s = m(torch.randn(1, 9, 32))
    assert y.shape == (1, 9, 32) and s["S"].shape == (1, 2, 16, 32)


def test_deltaproduct_defaults_and_projection_layout():
    """flash-linear-attention's GatedDeltaProduct defaults (n_h = 2, β = 2σ(·)) and projection row order
    (n_h, H, ·): zero keys make a Householder step the identity, so zeroing the rows of step 1 leaves
    the n_h = 1 mixer built from the rows of step 0."""
    torch.manual_seed(0)
    dp = rnnlab.create_mixer("deltaproduct", 32, num_heads=2, chunk_size=16)
    assert dp.nh == 2 and dp.negative_eigenvalues
    one = rnnlab.create_mixer("deltaproduct", 32, num_heads=2, chunk_size=16, num_householder=1)
    H, K, V = 2, 16, 32
    with torch.no_grad():
        dp.k_proj.weight[H * K :] = 0.0
    sd = dp.state_dict()
    rows = {"k_proj.weight": H * K, "k_conv.weight": H * K, "v_proj.weight": H * V, "v_conv.weight": H * V, "b_proj.weight": H}
    one.load_state_dict({n: t[: rows[n]] if n in rows else t for n, t in sd.items()})
    x = torch.randn(2, 19, 32)
    y, s = dp(x)
    y1, s1 = one(x)
    assert_close(y, y1, 1e-5)
    assert_close(s["S"], s1["S"], 1e-5)
