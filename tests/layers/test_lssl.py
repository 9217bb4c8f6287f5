"""LSSL: A and B start as the HiPPO matrix, Δ log-uniform; the layer equals the paper's equations written out
(bilinear Ā, B̄, the recurrence, GELU, the output projection) in float64; its convolutional form (Krylov kernel +
FFT) equals its recurrent form in values and gradients of x, the state and every parameter."""
import pytest
import torch
import torch.nn.functional as F

import rnnlab
from rnnlab.ops import hippo
from rnnlab.testing import assert_close
from tests.layers.test_diag_reference_forms import check_against_reference


@pytest.mark.parametrize("measure", hippo.MEASURES)
def test_init_is_hippo(measure):
    torch.manual_seed(0)
    m = rnnlab.create_mixer("lssl", 4, d_state=6, measure=measure)
    A, B = hippo.transition(measure, 6)
    assert_close(m.A.double(), A.float().double()) and assert_close(m.B.double(), B.float().double())
    assert isinstance(m.A, torch.nn.Parameter) and m.A._no_weight_decay
    dt = torch.exp(m.log_dt.detach())
    assert dt.min() >= 1e-3 - 1e-9 and dt.max() <= 1e-1 + 1e-9
    fixed = rnnlab.create_mixer("lssl", 4, d_state=6, train_A=False)
    assert "A" not in dict(fixed.named_parameters()) and "A" in dict(fixed.named_buffers())
    with pytest.raises(ValueError, match="backend"):
        rnnlab.create_mixer("lssl", 4, backend="chunk")
    with pytest.raises(ValueError, match="method"):
        rnnlab.create_mixer("lssl", 4, method="rk4")


def test_matches_the_papers_equations():
    """x_k = Ā x_{k−1} + B̄ u_k with Ā = (I − Δ/2 A)⁻¹(I + Δ/2 A), B̄ = (I − Δ/2 A)⁻¹ Δ B (LSSL eq. (3), (5)),
    y = C x + D u, out = W GELU(y) + b; float64, written out channel by channel."""
    torch.manual_seed(0)
    H, N, T = 3, 8, 30
    m = rnnlab.create_mixer("lssl", H, d_state=N).double()
    u = torch.randn(2, T, H, dtype=torch.float64)
    y, s = m(u)
    A, B, I = m.A.detach(), m.B.detach(), torch.eye(N, dtype=torch.float64)
    ys, hs = [], []
    for h in range(H):
        dt = torch.exp(m.log_dt[h].detach())
        M = torch.linalg.inv(I - dt / 2 * A)
        Ab, Bb = M @ (I + dt / 2 * A), M @ (dt * B)
        x, out = torch.zeros(2, N, dtype=torch.float64), []
        for t in range(T):
            x = x @ Ab.T + u[:, t, h, None] * Bb
            out.append(x @ m.C[h].detach() + m.D[h].detach() * u[:, t, h])
        ys.append(torch.stack(out, 1))
        hs.append(x)
    ref = m.out_proj(F.gelu(torch.stack(ys, -1)))
    assert_close(y, ref)
    assert_close(s["h"], torch.stack(hs, 1))


@pytest.mark.parametrize("T", [1, 17, 64, 257])
@pytest.mark.parametrize("with_state", [False, True])
def test_convolution_equals_recurrence(T, with_state):
    """backend="fft" (the materialized Krylov kernel + FFT) == backend="reference" (the recurrence), float32:
    outputs, final state, gradients of x, the initial state, A, B, log Δ, C, D and the projection."""
    check_against_reference("lssl", T=T, with_state=with_state)
