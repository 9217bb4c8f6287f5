"""H3: the layer equals Algorithm 1 written out (shift SSM as its explicit N-tap sum, the per-head outer products,
the diagonal SSM as its ZOH recurrence, the contraction with Q); its FFT form equals its recurrent form in values and
gradients of x, both states and every parameter, for head_dim 1 and 2."""
import pytest
import torch

import rnnlab
from rnnlab.testing import assert_close
from tests.layers.test_diag_reference_forms import check_against_reference


@pytest.mark.parametrize("head_dim", [1, 2])
def test_matches_algorithm_1(head_dim):
    torch.manual_seed(0)
    Dm, N, T, d = 4, 6, 13, head_dim
    m = rnnlab.create_mixer("h3", Dm, d_state=N, head_dim=d)
    x = torch.randn(2, T, Dm)
    y, _ = m(x)
    with torch.no_grad():
        q, k, v = m.q_proj(x), m.k_proj(x), m.v_proj(x)
        kbar = m.shift_D * k + sum(m.shift_C[:, i] * torch.nn.functional.pad(k, (0, 0, i, 0))[:, :T] for i in range(N))
        H = Dm // d
        A = torch.complex(-torch.exp(m.log_A_real), m.A_imag)  # (H, N/2)
        dt = torch.exp(m.log_dt)[:, None]
        Abar, Bbar = torch.exp(dt * A), (torch.exp(dt * A) - 1) / A
        C = torch.view_as_complex(m.C.contiguous())
        out = torch.zeros(2, T, Dm)
        for h in range(H):
            for i in range(d):
                for j in range(d):
                    kv = kbar[..., h * d + i] * v[..., h * d + j]  # (2, T)
                    s, ys = torch.zeros(2, N // 2, dtype=torch.cfloat), []
                    for t in range(T):
                        s = Abar[h] * s + Bbar[h] * kv[:, t, None]
                        ys.append(2 * (C[h] * s).sum(-1).real + m.D[h] * kv[:, t])
                    out[..., h * d + j] += q[..., h * d + i] * torch.stack(ys, 1)
        ref = m.out_proj(out)
    assert_close(y, ref)


@pytest.mark.parametrize("T", [1, 17, 64, 257])
@pytest.mark.parametrize("head_dim", [1, 2])
def test_fft_equals_recurrence(T, head_dim):
    """backend="fft" == backend="reference" from a state left by an 11-token prefix: outputs, both states, gradients
    of x, the states and every parameter (float32)."""
    check_against_reference("h3", T=T, head_dim=head_dim)


def test_options_rejected():
    with pytest.raises(ValueError, match="head_dim"):
        rnnlab.create_mixer("h3", 6, head_dim=4)
    with pytest.raises(ValueError, match="even"):
        rnnlab.create_mixer("h3", 6, d_state=5)
    C = rnnlab.create_mixer("h3", 4, d_state=16).shift_C  # Conv1d's init: U(±1/√N)
    assert C.abs().max() <= 0.25 and C.abs().max() > 0.2
