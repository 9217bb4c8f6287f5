"""mLSTM mixer: the block wired as xLSTM's Appendix B (checked against a transcription of the block
with the paper's un-stabilized cell in float64), its initialization, bad options."""
import math

import pytest
import torch
import torch.nn.functional as F

from rnnlab.layers.registry import create_mixer
from rnnlab.testing import assert_close



def _block_reference(m, x):
    """The mLSTM block of the paper, token by token in float64, from the mixer's weights."""
    w = {n: p.detach().double() for n, p in m.named_parameters()}
    x = x.double()
    E, H, d = m.d_inner, m.num_heads, m.head_dim
    xm, z = (x @ w["proj_up.weight"].T).split(E, -1)
    W = w["conv.weight"].shape[-1]
    c = F.silu(F.conv1d(F.pad(xm.transpose(1, 2), (W - 1, 0)), w["conv.weight"][:, None], w["conv.bias"], groups=E)).transpose(1, 2)
    blocks = lambda weight: torch.block_diag(*weight)  # (nb, out, in) -> dense block-diagonal (nb*out, nb*in)
    bs = m.v.block_size
    Wqk = w["qk.weight"]
    q, k, v = c @ blocks(Wqk[:, :bs]).T, c @ blocks(Wqk[:, bs:]).T, xm @ blocks(w["v.weight"]).T
    g = torch.cat([q, k, v], -1) @ w["gates.weight"].T + w["gates.bias"]
    i, f = g[..., :H], g[..., H:]
    B, T = x.shape[:2]
    C, n, hs = torch.zeros(B, H, d, d, dtype=torch.float64), torch.zeros(B, H, d, dtype=torch.float64), []
    for t in range(T):  # eqs. 19-27: C_t = f C + i v kᵀ, n_t = f n + i k, h = C q / max(|nᵀq|, 1)
        qt, kt, vt = (u[:, t].view(B, H, d) for u in (q, k, v))
        kt = kt / math.sqrt(d)
        ft, it = torch.sigmoid(f[:, t])[..., None], torch.exp(i[:, t])[..., None]
        C = ft[..., None] * C + it[..., None] * vt[..., :, None] * kt[..., None, :]
        n = ft * n + it * kt
        hs.append((C @ qt[..., None])[..., 0] / (n * qt).sum(-1, keepdim=True).abs().clamp_min(1.0))
    h = torch.stack(hs, 1)  # (B, T, H, d)
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + m.norm_eps)
    h = h.reshape(B, T, E) * w["norm_weight"]
    return ((h + w["skip"] * c) * F.silu(z)) @ w["proj_down.weight"].T


@pytest.mark.parametrize("T", [1, 45])
def test_block_matches_paper(T):
    torch.manual_seed(0)
    m = create_mixer("mlstm", 16, num_heads=2, chunk_size=16)
    with torch.no_grad():  # informative gates: non-zero gate weights
        m.gates.weight.normal_(std=0.3)
    x = torch.randn(2, T, 16)
    y, _ = m(x)
    assert_close(y, _block_reference(m, x).float(), 1e-4)


@pytest.mark.parametrize("dim, block, out", [(512, 4, 8), (96, 4, None), (24, 3, None)])
def test_headwise_linear_is_block_diagonal(dim, block, out):
    """HeadwiseLinear (grouped dense block-diagonal bmm) equals x @ block_diag(W_j)ᵀ, values and gradients."""
    from rnnlab.layers.mlstm import HeadwiseLinear

    torch.manual_seed(0)
    m = HeadwiseLinear(dim, block, out)
    x = torch.randn(2, 7, dim, requires_grad=True)
    y, y_ref = m(x), x @ torch.block_diag(*m.weight).T
    assert_close(y, y_ref, name="y")
    cot = torch.randn(y.shape)
    for name, a, e in zip(("x", "weight"), torch.autograd.grad((y * cot).sum(), [x, m.weight]),
                          torch.autograd.grad((y_ref * cot).sum(), [x, m.weight])):
        assert_close(a, e, name=f"grad {name}")


def test_init_as_authors():
    m = create_mixer("mlstm", 32, num_heads=4)
    assert m.d_inner == 64 and m.head_dim == 16
    assert torch.equal(m.gates.weight, torch.zeros_like(m.gates.weight))
    assert_close(m.gates.bias[4:], torch.linspace(3, 6, 4))
    assert torch.equal(m.skip, torch.ones(64))
    assert m.state_size(10) == 3 * 64 + 4 * (16 * 16 + 16 + 1)


def test_bad_options():
    with pytest.raises(ValueError, match="num_heads"):
        create_mixer("mlstm", 32, num_heads=5)
    with pytest.raises(ValueError, match="forget_gate"):
        create_mixer("mlstm", 32, forget_gate="tanh")
