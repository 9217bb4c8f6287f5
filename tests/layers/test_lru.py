"""LRU: eigenvalue ring at init, paper transcription (complex numpy-style loop) (fast vs reference: tests/layers/test_diag_reference_forms.py)."""
import math

import pytest
import torch

import rnnlab
from rnnlab.testing import assert_close


@pytest.mark.parametrize("r_min,r_max,max_phase", [(0.9, 0.999, math.pi / 10), (0.0, 0.5, 2 * math.pi), (0.4, 0.6, 1.0)])
def test_lru_eigenvalues_on_ring(r_min, r_max, max_phase):
    torch.manual_seed(0)
    m = rnnlab.create_mixer("lru", 64, d_state=2048, r_min=r_min, r_max=r_max, max_phase=max_phase)
    lam = m.eigenvalues().detach()
    r, phase = lam.abs(), torch.angle(lam) % (2 * math.pi)
    assert r.min() >= r_min - 1e-5 and r.max() <= r_max + 1e-5
    assert phase.max() <= max_phase + 1e-5
    # area-uniform on the ring: r^2 is uniform in [r_min^2, r_max^2]
    assert abs(float((r**2).mean()) - (r_min**2 + r_max**2) / 2) < 0.02 * (r_max**2 - r_min**2) + 1e-3
    assert_close(torch.exp(m.gamma_log.detach()), torch.sqrt(1 - r**2))  # gamma = sqrt(1 - |lambda|^2)


def test_lru_matches_paper_transcription():
    """Orvieto et al. 2023, App. A forward_LRU, written per token in complex128."""
    torch.manual_seed(0)
    m = rnnlab.create_mixer("lru", 8, d_state=6)
    x = torch.randn(2, 19, 8)
    y, s = m(x)
    lam = torch.exp(-torch.exp(m.nu_log.double()) + 1j * torch.exp(m.theta_log.double()))
    B_norm = (m.B_re.double() + 1j * m.B_im.double()) * torch.exp(m.gamma_log.double())[:, None]
    C = m.C_re.double() + 1j * m.C_im.double()
    h = torch.zeros(2, 6, dtype=torch.complex128)
    ys = []
    for t in range(19):
        h = lam * h + x[:, t].double().to(torch.complex128) @ B_norm.T
        ys.append((h @ C.T).real + m.D.double() * x[:, t].double())
    assert_close(y, torch.stack(ys, 1).float())
    assert_close(torch.view_as_complex(s["h"]), h.to(torch.complex64))
