"""Hawk / RG-LRU: the a^c initialisation range, a_t in (0, 1), the paper's eqs. (1)-(4) per token."""
import math

import torch
import torch.nn.functional as F

import rnnlab
from rnnlab.testing import assert_close


def test_hawk_lambda_init_range():
    torch.manual_seed(0)
    m = rnnlab.create_mixer("hawk", 768)  # D_rnn = 1024
    a_c = torch.sigmoid(m.Lambda.detach().double()) ** 8
    assert m.d_rnn == 1024
    assert a_c.min() >= 0.9 - 1e-6 and a_c.max() <= 0.999 + 1e-6
    assert abs(float(a_c.mean()) - (0.9 + 0.999) / 2) < 0.01  # uniform
    # log space: a_t = a^{c r} for r in (0, 1) stays in (a^c, 1)
    r = torch.rand(1024)
    log_a = m.log_a(r).detach()
    assert_close(log_a.exp(), (torch.sigmoid(m.Lambda.double()) ** (8 * r.double())).float())
    assert (log_a < 0).all() and (log_a.exp() >= a_c - 1e-6).all()


def test_hawk_matches_paper_transcription():
    """Griffin Sec. 2.3-2.4 (eqs. 1-4), written per token with explicit conv window."""
    torch.manual_seed(0)
    m = rnnlab.create_mixer("hawk", 12)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 23, 12)
    y, s = m(x)
    Dr, W = m.d_rnn, m.conv.kernel_size
    buf, h, ys = torch.zeros(2, W - 1, Dr), torch.zeros(2, Dr), []
    a_base = torch.sigmoid(m.Lambda)
    for t in range(23):
        gate = F.gelu(x[:, t] @ m.linear_y.weight.T + m.linear_y.bias, approximate="tanh")
        u = x[:, t] @ m.linear_x.weight.T + m.linear_x.bias
        window = torch.cat([buf, u[:, None]], 1)
        buf = window[:, 1:]
        xc = (window * m.conv.weight.T).sum(1) + m.conv.bias
        r = torch.sigmoid(xc @ m.gate_a.weight.T + m.gate_a.bias)  # (1)
        i = torch.sigmoid(xc @ m.gate_x.weight.T + m.gate_x.bias)  # (2)
        a = a_base ** (8 * r)  # (3)
        h = a * h + torch.sqrt(1 - a**2) * (i * xc)  # (4)
        ys.append((h * gate) @ m.linear_out.weight.T + m.linear_out.bias)
    assert_close(y, torch.stack(ys, 1))
    assert_close(s["h"], h)
    assert_close(s["conv"], buf)
