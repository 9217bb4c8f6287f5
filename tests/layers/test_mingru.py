"""minGRU: log-space training form vs the paper's sequential formulation, finite at T = 4096,
expansion with an output projection (fast vs reference: test_diag_reference_forms.py)."""
import torch

import rnnlab
from rnnlab.ops.log_scan import g
from rnnlab.testing import assert_close


def test_mingru_matches_sequential_paper_form():
    """Feng et al. 2024 Sec. 3.1.3: h_t = (1 - z_t) h_{t-1} + z_t g(h~_t), in float64."""
    torch.manual_seed(0)
    m = rnnlab.create_mixer("mingru", 12)
    x = torch.randn(2, 31, 12)
    y, s = m(x)
    k, hc = (x.double() @ m.in_proj.weight.double().T + m.in_proj.bias.double()).chunk(2, -1)
    z, h, ys = torch.sigmoid(k), torch.zeros(2, 12, dtype=torch.float64), []
    for t in range(31):
        h = (1 - z[:, t]) * h + z[:, t] * g(hc[:, t])
        ys.append(h)
    assert_close(y, torch.stack(ys, 1).float())
    assert_close(s["h"], h.float())


def test_mingru_finite_at_4096_with_strong_forgetting():
    torch.manual_seed(0)
    m = rnnlab.create_mixer("mingru", 16, expansion=2.0)
    with torch.no_grad():
        m.in_proj.bias[:32].fill_(6.0)  # z ~ 1: log(1 - z) ~ -6 per step, cumsum ~ -2.5e4
    x = torch.randn(1, 4096, 16, requires_grad=True)
    y, s = m(x)
    y.square().mean().backward()
    assert m.out_proj is not None and y.shape == x.shape
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and torch.isfinite(s["h"]).all()
    ref = rnnlab.create_mixer("mingru", 16, expansion=2.0, backend="reference")
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert_close(y, ref(x)[0])
