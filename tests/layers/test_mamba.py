"""Mamba vs an independent transcription of the paper's equations (weights copied), incl. the
conv state across a split sequence; the negative-eigenvalue option; HF MambaMixer parity if installed."""

import pytest
import torch
import torch.nn.functional as F

from rnnlab.layers.mamba import Mamba
from rnnlab.testing import assert_close


def paper_mamba(u, W_in, conv_w, conv_b, W_x, W_dt, b_dt, A_log, Dskip, W_out, dt_rank, N, neg=False, h=None, conv_buf=None):
    """Gu & Dao 2023, Alg. 2 + Fig. 3, written out per token with explicit loops.
    u (B, T, D). conv_buf (B, d_inner, W-1) holds the previous conv inputs (oldest first)."""
    Bsz, T, _ = u.shape
    d_inner, W = conv_w.shape
    A = -torch.exp(A_log)  # (d_inner, N)
    h = torch.zeros(Bsz, d_inner, N) if h is None else h.clone()
    buf = torch.zeros(Bsz, d_inner, W - 1) if conv_buf is None else conv_buf.clone()
    outs = []
    for t in range(T):
        xz = u[:, t] @ W_in.T
        x, z = xz[:, :d_inner], xz[:, d_inner:]
        window = torch.cat([buf, x[:, :, None]], dim=2)  # (B, d_inner, W)
        buf = window[:, :, 1:]
        xc = (window * conv_w).sum(-1) + conv_b
        xc = xc * torch.sigmoid(xc)  # SiLU
        dbc = xc @ W_x.T
        delta_low, Bt, Ct = dbc[:, :dt_rank], dbc[:, dt_rank:dt_rank + N], dbc[:, dt_rank + N:]
        delta = torch.log1p(torch.exp(delta_low @ W_dt.T + b_dt))  # softplus
        Abar = torch.exp(delta[:, :, None] * A)  # ZOH of A
        if neg:
            Abar = 2 * Abar - 1
        h = Abar * h + delta[:, :, None] * Bt[:, None, :] * xc[:, :, None]
        y = (h * Ct[:, None, :]).sum(-1) + Dskip * xc
        y = y * (z * torch.sigmoid(z))
        outs.append(y @ W_out.T)
    return torch.stack(outs, 1), h, buf


def _weights(m):
    return dict(W_in=m.in_proj.weight, conv_w=m.conv.weight, conv_b=m.conv.bias, W_x=m.x_proj.weight, W_dt=m.dt_proj.weight,
                b_dt=m.dt_proj.bias, A_log=m.A_log, Dskip=m.D, W_out=m.out_proj.weight, dt_rank=m.dt_rank, N=m.d_state)


@pytest.mark.parametrize("neg", [False, True])
@pytest.mark.parametrize("backend", ["kernel", "chunked"])
def test_mamba_matches_paper_transcription_with_split(neg, backend):
    torch.manual_seed(0)
    m = Mamba(16, d_state=4, negative_eigenvalues=neg, backend=backend, chunk_size=8)
    with torch.no_grad():  # move away from the init so every term matters
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    u = torch.randn(2, 29, 16)
    with torch.no_grad():
        ref, h_ref, buf_ref = paper_mamba(u, **_weights(m), neg=neg)
        y, st = m(u)
        assert_close(y, ref)
        assert_close(st["ssm"], h_ref)
        assert_close(st["conv"], buf_ref.transpose(1, 2))
        # split sequence: the second piece continues from the first's conv and ssm state
        y1, s1 = m(u[:, :12])
        y2, s2 = m(u[:, 12:13], s1)  # one token: the recurrent step
        y3, s3 = m(u[:, 13:], s2)
        r1, h1, b1 = paper_mamba(u[:, :12], **_weights(m), neg=neg)
        r2, _, _ = paper_mamba(u[:, 12:], **_weights(m), neg=neg, h=h1, conv_buf=b1)
        assert_close(torch.cat([y1, y2, y3], 1), ref)
        assert_close(torch.cat([y2, y3], 1), r2)
        assert_close(s3["ssm"], h_ref)


def test_mamba_init_as_paper():
    torch.manual_seed(0)
    m = Mamba(64)
    assert m.d_inner == 128 and m.dt_rank == 4 and m.d_state == 16
    assert torch.allclose(torch.exp(m.A_log.detach()), torch.arange(1, 17).float().expand(128, 16))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6 and dt.min() < 3e-3 and dt.max() > 3e-2
    assert torch.equal(m.D.data, torch.ones(128))
    assert getattr(m.A_log, "_no_weight_decay", False) and getattr(m.D, "_no_weight_decay", False)


def test_negative_eigenvalues_allow_parity_state():
    """With Δ large, 2exp(ΔA) − 1 ≈ −1: the state flips sign each step (impossible with exp(ΔA) > 0)."""
    from rnnlab.ops.selective_scan import transition_coeffs

    a = transition_coeffs(torch.full((1, 2), 20.0), -torch.ones(2, 3), torch.zeros(1, 3), "exp_neg")
    assert torch.allclose(a, -torch.ones_like(a), atol=1e-6)


def test_mamba_matches_hf_mamba_mixer():
    tr = pytest.importorskip("transformers")
    from transformers.models.mamba.modeling_mamba import MambaConfig, MambaMixer

    torch.manual_seed(0)
    m = Mamba(32, d_state=8)
    cfg = MambaConfig(hidden_size=32, state_size=8, expand=2, conv_kernel=4, time_step_rank=m.dt_rank, use_bias=False, use_conv_bias=True)
    hf = MambaMixer(cfg, layer_idx=0)
    with torch.no_grad():
        hf.in_proj.weight.copy_(m.in_proj.weight)
        hf.conv1d.weight.copy_(m.conv.weight[:, None, :])
        hf.conv1d.bias.copy_(m.conv.bias)
        hf.x_proj.weight.copy_(m.x_proj.weight)
        hf.dt_proj.weight.copy_(m.dt_proj.weight)
        hf.dt_proj.bias.copy_(m.dt_proj.bias)
        hf.A_log.copy_(m.A_log)
        hf.D.copy_(m.D)
        hf.out_proj.weight.copy_(m.out_proj.weight)
    u = torch.randn(2, 23, 32)
    with torch.no_grad():
        out = hf(u)
        out = out[0] if isinstance(out, tuple) else out
        assert_close(m(u)[0], out, name=f"vs transformers {tr.__version__}")
