"""HGRN: the lower bound on the forget gate, the paper's HGRU equations per token (fast vs reference: tests/layers/test_diag_reference_forms.py)."""
import pytest
import torch
import torch.nn.functional as F

import rnnlab
from rnnlab.layers.hgrn import hgrn_lower_bounds
from rnnlab.testing import assert_close


def _paper_hgrn(m, x, gamma):
    """Qin et al. 2023 Sec. 3.1, per token, complex128."""
    D = m.d_model
    h = torch.zeros(x.shape[0], D, dtype=torch.complex128)
    W = {n: (getattr(m, n).weight.double(), getattr(m, n).bias.double()) for n in ("input_proj", "forget_proj", "gate_proj", "out_proj")}
    ys = []
    for t in range(x.shape[1]):
        xt = x[:, t].double()
        c = F.silu(xt @ W["input_proj"][0].T + W["input_proj"][1])
        c = c[:, :D] + 1j * c[:, D:]
        f = gamma.double() + (1 - gamma.double()) * torch.sigmoid(xt @ W["forget_proj"][0].T + W["forget_proj"][1])
        h = f * torch.exp(1j * m.theta.double()) * h + (1 - f) * c
        gt = F.silu(xt @ W["gate_proj"][0].T + W["gate_proj"][1])
        o = F.layer_norm(gt * torch.cat([h.real, h.imag], -1), (2 * D,), m.norm.weight.double(), m.norm.bias.double(), m.norm.eps)
        ys.append(o @ W["out_proj"][0].T + W["out_proj"][1])
    return torch.stack(ys, 1), h


@pytest.mark.parametrize("gamma", [0.0, 0.75])
def test_hgrn_matches_paper_transcription(gamma):
    torch.manual_seed(0)
    m = rnnlab.create_mixer("hgrn", 10, lower_bound=gamma)
    x = torch.randn(2, 21, 10)
    y, s = m(x)
    floor = torch.as_tensor(m.floor()).detach()
    assert_close(floor.expand(10), torch.full((10,), gamma))  # starts at the given lower bound
    y_ref, h_ref = _paper_hgrn(m, x, floor)
    assert_close(y, y_ref.float())
    assert_close(torch.view_as_complex(s["h"]), h_ref.to(torch.complex64))


def test_hgrn_lower_bound_holds_and_is_learned():
    torch.manual_seed(0)
    m = rnnlab.create_mixer("hgrn", 16, lower_bound=0.9)
    lam, _ = m._coeffs(torch.randn(2, 50, 16) * 10)
    assert lam.detach().abs().min() >= 0.9 - 1e-6 and lam.detach().abs().max() <= 1 + 1e-6
    m(torch.randn(2, 9, 16))[0].square().sum().backward()
    assert m.lower_bound_logit.grad.abs().min() > 0  # the floor is a trained parameter, per channel
    assert getattr(m.lower_bound_logit, "_no_weight_decay", False)
    first = rnnlab.create_mixer("hgrn", 16)  # the paper's first layer: gamma = 0, nothing to learn
    assert first.floor() == 0.0 and first.lower_bound_logit is None
    assert hgrn_lower_bounds(4) == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="lower_bound"):
        rnnlab.create_mixer("hgrn", 16, lower_bound=1.0)
