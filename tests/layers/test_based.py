"""Based mixer: the Taylor feature map approximates exp to 2nd order exactly as the paper's eq. 3;
the mixer equals the quadratic-form transcription (normalized Taylor attention) plus its sliding-window
attention; window=None keeps only the linear attention."""
import math

import pytest
import torch

from rnnlab.layers.based import taylor_feature_map
from rnnlab.layers.registry import create_mixer
from rnnlab.testing import assert_close



def test_feature_map_is_second_order_taylor():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 16, generator=gen, dtype=torch.float64), torch.randn(7, 16, generator=gen, dtype=torch.float64)
    s = q @ k.T / math.sqrt(16)
    assert taylor_feature_map(q).shape == (5, 1 + 16 + 256)
    assert_close(taylor_feature_map(q) @ taylor_feature_map(k).T, 1 + s + s**2 / 2, 1e-12)


def _quadratic_reference(m, x):
    """o_t = Σ_{s<=t} (1 + a_ts + a_ts²/2) v_s / Σ_{s<=t} (1 + a_ts + a_ts²/2), a = q·k/√d, float64."""
    B, T, _ = x.shape
    H, d = m.num_heads, m.feature_dim
    xd = x.double()
    heads = lambda t: t.view(B, T, H, -1).transpose(1, 2)  # (B, H, T, .)
    q, k, v = (heads(xd @ lin.weight.double().T) for lin in (m.q_proj, m.k_proj, m.v_proj))
    a = q @ k.transpose(-1, -2) / math.sqrt(d)
    A = (1 + a + a**2 / 2) * torch.ones(T, T, dtype=torch.float64).tril()
    o = (A @ v) / A.sum(-1, keepdim=True)
    return o.transpose(1, 2).reshape(B, T, -1) @ m.o_proj.weight.double().T


@pytest.mark.parametrize("window", [None, 8])
def test_matches_quadratic_form(window):
    torch.manual_seed(0)
    m = create_mixer("based", 32, num_heads=2, feature_dim=4, window=window, chunk_size=16)
    x = torch.randn(2, 37, 32)
    expected = _quadratic_reference(m, x).float()
    if window is not None:
        expected = expected + m.swa(x)[0]
    assert_close(m(x)[0], expected, 1e-4)
    assert m.state_size(37) == 2 * 21 * 17 + (m.swa.state_size(37) if window else 0)


def test_bad_options():
    with pytest.raises(ValueError, match="num_heads"):
        create_mixer("based", 32, num_heads=3)
    with pytest.raises(ValueError, match="feature_dim"):
        create_mixer("based", 32, feature_dim=0)
