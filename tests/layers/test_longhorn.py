"""Longhorn: the layer against its closed-form online-learning update written out per token
(Liu et al. 2024, eq. 9-10), weights copied, incl. the conv and SSM state across a split sequence."""
import torch

import rnnlab
from rnnlab.testing import assert_close


def paper_longhorn(m, u, S=None, buf=None):
    """u (B, T, D) -> (y, S, conv buffer); float64, explicit conv window, one token at a time."""
    W = {n: p.double() for n, p in m.named_parameters()}
    di, N, r = m.d_inner, m.d_state, m.dt_rank
    Bsz, T, _ = u.shape
    S = torch.zeros(Bsz, di, N, dtype=torch.float64) if S is None else S
    buf = torch.zeros(Bsz, m.conv.kernel_size - 1, di, dtype=torch.float64) if buf is None else buf
    ys = []
    for t in range(T):
        x, z = (u[:, t].double() @ W["in_proj.weight"].T).split(di, -1)
        window = torch.cat([buf, x[:, None]], 1)  # (B, W, di), oldest first
        buf = window[:, 1:]
        x = (window * W["conv.weight"].T).sum(1) + W["conv.bias"]
        x = x * torch.sigmoid(x)
        b_low, k, q = (x @ W["x_proj.weight"].T).split([r, N, N], -1)
        beta = torch.sigmoid(b_low @ W["dt_proj.weight"].T + W["dt_proj.bias"])  # (B, di)
        eps = beta / (1 + beta * (k * k).sum(-1, keepdim=True))  # ε_t = β_t / (1 + β_t kᵀk)
        S = (1 - eps[..., None] * k[:, None] ** 2) * S + (eps * x)[..., None] * k[:, None]  # eq. (10)
        y = (S * q[:, None]).sum(-1) + W["D"] * x
        ys.append((y * z * torch.sigmoid(z)) @ W["out_proj.weight"].T)
    return torch.stack(ys, 1), S, buf


def test_longhorn_matches_paper_update_with_split():
    torch.manual_seed(0)
    m = rnnlab.create_mixer("longhorn", 8, d_state=4, chunk_size=8)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    u = torch.randn(2, 27, 8)
    ref, S, buf = paper_longhorn(m, u)
    y, st = m(u)
    assert_close(y, ref.float())
    assert_close(st["ssm"], S.float())
    y1, s1 = m(u[:, :10])
    y2, s2 = m(u[:, 10:11], s1)  # one token: the recurrent step
    y3, s3 = m(u[:, 11:], s2)
    assert_close(torch.cat([y1, y2, y3], 1), ref.float())
    assert_close(s3["conv"], buf.float())
