"""S5: HiPPO-N initialization in J blocks, B/C scales of the authors' code, and the layer (parallel
scan) against the paper's MIMO recurrence written out in float64."""
import torch
import torch.nn.functional as F

import rnnlab
from rnnlab.ops.hippo import hippo_n_diag
from rnnlab.testing import assert_close


def test_s5_hippo_n_block_init_and_scales():
    torch.manual_seed(0)
    P, J, H = 64, 2, 96
    m = rnnlab.create_mixer("s5", H, d_state=P, blocks=J)
    lam, _ = hippo_n_diag(P // J)
    lam = lam[: P // J // 2].repeat(J)  # one of each conjugate pair, per block
    assert_close(torch.complex(m.Lambda_re.double(), m.Lambda_im.double()), lam, tol=1e-6)
    # B ~ lecun_normal (P, H) then V⁻¹B: E|B̃|² = 1/P; C (H, P) complex, std 1/sqrt(P) each part, then CV: E|C̃|² = 2/P
    B2 = torch.view_as_complex(m.B.detach().contiguous()).abs().square().mean()
    C2 = torch.view_as_complex(m.C.detach().contiguous()).abs().square().mean()
    assert abs(float(B2) * P - 1) < 0.1 and abs(float(C2) * P / 2 - 1) < 0.1
    dt = torch.exp(m.log_dt.detach())
    assert m.log_dt.shape == (P // 2,) and dt.min() >= 1e-3 - 1e-9 and dt.max() <= 1e-1 + 1e-9


def test_s5_matches_paper_recurrence():
    """Λ̄ = exp(ΛΔ), B̄ = Λ⁻¹(Λ̄ − 1) B̃ (ZOH), x_k = Λ̄ x_{k−1} + B̄ u_k, y_k = 2 Re(C̃ x_k) + D u_k,
    out = GELU(y) ⊙ σ(W GELU(y) + b) (Smith et al. 2023 §3, eq. 6; the code's half_glu1)."""
    torch.manual_seed(0)
    m = rnnlab.create_mixer("s5", 6, d_state=8, blocks=2)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    u = torch.randn(2, 23, 6)
    y, s = m(u)
    lam = torch.complex(m.Lambda_re.double(), m.Lambda_im.double())
    delta = torch.exp(m.log_dt.double())
    lam_bar = torch.exp(lam * delta)
    B_bar = ((lam_bar - 1) / lam)[:, None] * torch.view_as_complex(m.B.double().contiguous())  # (P/2, H)
    C = torch.view_as_complex(m.C.double().contiguous())  # (H, P/2)
    x, ys = torch.zeros(2, 4, dtype=torch.complex128), []
    for t in range(23):
        x = lam_bar * x + u[:, t].double().to(B_bar.dtype) @ B_bar.T
        ys.append(2 * (x @ C.T).real + m.D.double() * u[:, t].double())
    g = F.gelu(torch.stack(ys, 1))
    ref = g * torch.sigmoid(g @ m.out2.weight.double().T + m.out2.bias.double())
    assert_close(y, ref.float())
    assert_close(torch.view_as_complex(s["h"]), x.to(torch.complex64))
