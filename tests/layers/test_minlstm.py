"""minLSTM: log-space training form vs the paper's normalised sequential formulation (fast vs reference: tests/layers/test_diag_reference_forms.py)."""
import torch

import rnnlab
from rnnlab.ops.log_scan import g
from rnnlab.testing import assert_close


def test_minlstm_matches_sequential_paper_form():
    """Feng et al. 2024 Sec. 3.2: f' = f / (f + i), i' = i / (f + i), h_t = f' h_{t-1} + i' g(h~_t)."""
    torch.manual_seed(0)
    m = rnnlab.create_mixer("minlstm", 12, expansion=1.5)
    x = torch.randn(2, 29, 12)
    y, s = m(x)
    f, i, hc = (x.double() @ m.in_proj.weight.double().T + m.in_proj.bias.double()).chunk(3, -1)
    f, i = torch.sigmoid(f), torch.sigmoid(i)
    h, hs = torch.zeros(2, 18, dtype=torch.float64), []
    for t in range(29):
        h = f[:, t] / (f[:, t] + i[:, t]) * h + i[:, t] / (f[:, t] + i[:, t]) * g(hc[:, t])
        hs.append(h)
    y_ref = torch.stack(hs, 1) @ m.out_proj.weight.double().T
    assert_close(y, y_ref.float())
    assert_close(s["h"], h.float())


def test_minlstm_finite_at_4096_with_strong_forgetting():
    """f' ~ 0 (log f' ~ -8 per step, cumsum ~ -3e4 over 4096 steps): the log-space scan stays finite and exact."""
    torch.manual_seed(0)
    m = rnnlab.create_mixer("minlstm", 8)
    with torch.no_grad():
        m.in_proj.bias[:8].fill_(-8.0)  # forget gate logits
        m.in_proj.bias[8:16].fill_(8.0)  # input gate logits
    x = torch.randn(1, 4096, 8, requires_grad=True)
    y, s = m(x)
    y.square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and torch.isfinite(s["h"]).all()
    ref = rnnlab.create_mixer("minlstm", 8, backend="reference")
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert_close(y, ref(x)[0])
