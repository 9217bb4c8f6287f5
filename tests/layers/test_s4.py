"""S4: at initialization the NPLR parameters are HiPPO-LegS (A = V (Λ − P Pᴴ) Vᴴ, B in the eigenbasis),
and the layer (Cauchy + Woodbury kernel, FFT) equals the bilinear-discretized HiPPO-LegS SSM run
as a dense recurrence in the original basis, in float64."""
import pytest
import torch
import torch.nn.functional as F

import rnnlab
from rnnlab.ops.hippo import legs as hippo_legs, nplr_legs
from rnnlab.testing import assert_close


def test_s4_init_is_hippo_legs():
    torch.manual_seed(0)
    m = rnnlab.create_mixer("s4", 3, d_state=8)
    lam = torch.complex(-torch.exp(m.log_neg_lam_re.double()), m.lam_im.double())
    P, B = (torch.view_as_complex(t.double().contiguous()) for t in (m.P, m.B))
    _, _, _, V = nplr_legs(8)
    A_legs, B_legs = hippo_legs(8)
    for h in range(3):
        A = V @ (torch.diag(lam[h]) - P[h][:, None] * P[h].conj()[None]) @ V.conj().T
        assert_close(A.real, A_legs, tol=1e-6)
        assert_close(V @ B[h], B_legs.to(V.dtype), tol=1e-6)
    assert torch.allclose(lam.real, torch.full_like(lam.real, -0.5))
    dt = torch.exp(m.log_dt.detach())
    assert dt.min() >= 1e-3 - 1e-9 and dt.max() <= 1e-1 + 1e-9
    with pytest.raises(ValueError, match="backend"):
        rnnlab.create_mixer("s4", 3, backend="scan")


def test_s4_matches_bilinear_hippo_recurrence():
    """x_k = Ā x_{k−1} + B̄ u_k with Ā = (I − Δ/2 A)⁻¹(I + Δ/2 A), B̄ = (I − Δ/2 A)⁻¹ Δ B for the real
    HiPPO-LegS (A, B), y_k = Re(C Vᴴ x_k) + D u_k, out = GLU(W GELU(y) + b): S4 eq. (3), float64."""
    torch.manual_seed(0)
    H, N, T = 3, 8, 40
    m = rnnlab.create_mixer("s4", H, d_state=N)
    _, _, _, V = nplr_legs(N)
    A, B = hippo_legs(N)
    C = torch.view_as_complex(m.C.double().contiguous()) @ V.conj().T  # C in the original basis
    dt = torch.exp(m.log_dt.double())
    u = torch.randn(2, T, H)
    y, _ = m(u)
    I = torch.eye(N, dtype=torch.float64)
    ys = []
    for h in range(H):
        M = torch.linalg.inv(I - dt[h] / 2 * A)
        Abar, Bbar = M @ (I + dt[h] / 2 * A), M @ (dt[h] * B)
        x, out = torch.zeros(2, N, dtype=torch.float64), []
        for t in range(T):
            x = x @ Abar.T + u[:, t, h, None].double() * Bbar
            out.append((x.to(C.dtype) @ C[h]).real)
        ys.append(torch.stack(out, 1))
    ys = torch.stack(ys, -1) + m.D.double() * u.double()
    ref = F.glu(F.gelu(ys) @ m.out_proj.weight.double().T + m.out_proj.bias.double(), dim=-1)
    assert_close(y, ref.float())


@pytest.mark.parametrize("T", [17, 64, 1000])
@pytest.mark.parametrize("with_state", [False, True])
def test_s4_kernel_form_matches_dense_loop(T, with_state):
    """Cauchy/Woodbury + FFT form vs the dense recurrence: values and gradients at awkward lengths."""
    from tests.layers.test_diag_reference_forms import check_against_reference

    check_against_reference("s4", T=T, with_state=with_state)
