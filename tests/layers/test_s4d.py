"""S4D: the S4D-Lin / S4D-Inv initializations, and the layer (Vandermonde kernel + FFT
convolution) against eq. (6) and the S4 block output written out in float64."""
import math

import pytest
import torch
import torch.nn.functional as F

import rnnlab
from rnnlab.testing import assert_close


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_s4d_initializations(init):
    torch.manual_seed(0)
    N = 16
    m = rnnlab.create_mixer("s4d", 32, d_state=N, init=init)
    n = torch.arange(N // 2, dtype=torch.float32)
    imag = math.pi * n if init == "lin" else N / math.pi * (N / (2 * n + 1) - 1)  # S4D paper §4 / Table
    assert_close(m.A_imag.detach(), imag.expand(32, -1))
    assert_close(-torch.exp(m.log_A_real.detach()), torch.full((32, N // 2), -0.5))
    dt = torch.exp(m.log_dt.detach())
    assert dt.min() >= 1e-3 - 1e-9 and dt.max() <= 1e-1 + 1e-9
    assert all(getattr(p, "_no_weight_decay", False) for p in (m.log_A_real, m.A_imag, m.log_dt))
    with pytest.raises(ValueError, match="init"):
        rnnlab.create_mixer("s4d", 8, init="legs")
    with pytest.raises(ValueError, match="backend"):
        rnnlab.create_mixer("s4d", 8, backend="kernel")


def test_s4d_matches_paper_equations():
    """K_l = 2 Re Σ_n C_n (exp(ΔA_n) − 1)/A_n · exp(ΔA_n l) (eq. 6, B = 1), y = K * u + D u,
    out = GLU(W GELU(y) + b), evaluated directly in float64; also the state handed to a second piece."""
    torch.manual_seed(0)
    m = rnnlab.create_mixer("s4d", 4, d_state=8)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    u = torch.randn(2, 29, 4)
    y, state = m(u)
    A = torch.complex(-torch.exp(m.log_A_real.double()), m.A_imag.double())  # (H, N/2)
    dtA = torch.exp(m.log_dt.double())[:, None] * A
    C = torch.view_as_complex(m.C.double().contiguous())
    l = torch.arange(29, dtype=torch.float64)
    K = 2 * (C * (torch.exp(dtA) - 1) / A)[..., None].mul(torch.exp(dtA[..., None] * l)).sum(1).real  # (H, L)
    ys = torch.stack([sum(K[:, t - s] * u[:, s].double() for s in range(t + 1)) for t in range(29)], 1)
    ys = ys + m.D.double() * u.double()
    ref = F.glu(F.gelu(ys) @ m.out_proj.weight.double().T + m.out_proj.bias.double(), dim=-1)
    assert_close(y, ref.float())
    # the final state continues the convolution: y on [0:29) then [29:40) == y on [0:40)
    u2 = torch.randn(2, 11, 4)
    y2, _ = m(u2, state)
    assert_close(y2, m(torch.cat([u, u2], 1))[0][:, 29:])
