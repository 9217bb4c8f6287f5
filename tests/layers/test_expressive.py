"""The expressive-transition mixers against independent per-token transcriptions of their equations (weights
shared), every bilinear factorization through the whole conformance suite (the registry runs only the default),
the transition structures and constraints, and bad options."""
import pytest
import torch
import torch.nn.functional as F

from rnnlab import create_mixer
from rnnlab.testing import assert_close
from tests.conformance.checks import CHECKS, factory


def _fan_loop(m, x):
    """Fan et al.'s LRNN per token, as their released code's sequential form: MLP blocks, columns centred, divided
    by the largest column 1.2-norm; x_t = A_t x_{t-1} + v_t from the learned x_0; the output is x_t."""
    B, T, D = x.shape
    b = m.block_size
    state = m.x0.expand(B, -1, -1)
    ys = []
    for t in range(T):
        u = x[:, t]
        M = m.gen_block[2](F.relu(m.gen_block[0](u))).view(B, D // b, b, b)
        M = M - M.mean(dim=-2, keepdim=True)
        M = M / M.abs().pow(1.2).sum(-2, keepdim=True).pow(1 / 1.2).max(dim=-1, keepdim=True)[0]
        v = m.gen_value[2](F.relu(m.gen_value[0](u))).view(B, D // b, b)
        state = torch.einsum("bhij,bhj->bhi", M, state) + v
        ys.append(state.reshape(B, D))
    return torch.stack(ys, 1), state


def _bilinear_loop(m, x):
    """h_t = A(x_t) h_{t-1} / |A(x_t) h_{t-1}| with A(x) built from the weights by hand; y_t = W_o h_t."""
    B, T, _ = x.shape
    n, H, mdim = m.d_state, m.heads, m.head_dim
    h = m.h0.expand(B, -1, -1).reshape(B, n)
    ys = []
    for t in range(T):
        w = x[:, t] @ m.W.weight.T
        if m.factorization == "diag":
            A = torch.diag_embed(w + 1 if m.identity else w)
        else:
            if m.factorization == "cp":
                blocks = [m.U @ torch.diag_embed(w) @ m.V]
            else:
                blocks = list(w.view(B, H, mdim, mdim).unbind(1))
            A = torch.stack([torch.block_diag(*[blk[i] for blk in blocks]) for i in range(B)])
            if m.identity:
                A = A + torch.eye(n)
        h = (A @ h.unsqueeze(-1)).squeeze(-1)
        h = h / h.norm(dim=-1, keepdim=True)
        ys.append(h @ m.out_proj.weight.T)
    return torch.stack(ys, 1), h


@pytest.mark.parametrize("backend", ["chunk", "scan", "recurrent"])
def test_block_diag_lrnn_matches_the_equations(backend):
    torch.manual_seed(0)
    m = create_mixer("block_diag_lrnn", 16, block_size=4, backend=backend)
    x = torch.randn(2, 29, 16)
    y, s = m(x)
    y_ref, s_ref = _fan_loop(m, x)
    assert_close(y, y_ref)
    assert_close(s["h"], s_ref)


def test_block_diag_lrnn_transition_constraint():
    """Every column of every block sums to 0 (centred) and the largest column 1.2-norm of each block is 1."""
    torch.manual_seed(1)
    m = create_mixer("block_diag_lrnn", 16, block_size=4)
    A = m.transitions(torch.randn(3, 7, 16))
    assert A.shape == (3, 7, 4, 4, 4)
    assert A.sum(-2).abs().max() < 1e-6
    colnorm = A.abs().pow(1.2).sum(-2).pow(1 / 1.2)
    assert_close(colnorm.amax(-1), torch.ones(3, 7, 4))


@pytest.mark.parametrize("factorization", ["full", "cp", "block", "diag"])
@pytest.mark.parametrize("identity", [True, False])
def test_bilinear_matches_the_equations(factorization, identity):
    torch.manual_seed(2)
    m = create_mixer("bilinear", 12, factorization=factorization, d_state=8, block_size=4, rank=6, identity=identity)
    x = torch.randn(2, 23, 12)
    y, s = m(x)
    y_ref, h_ref = _bilinear_loop(m, x)
    assert_close(y, y_ref)
    assert_close(s["h"].reshape(2, 8), h_ref)


def test_bilinear_transition_shapes():
    x = torch.randn(2, 5, 12)
    shapes = {"full": (2, 5, 1, 8, 8), "cp": (2, 5, 1, 8, 8), "block": (2, 5, 2, 4, 4), "diag": (2, 5, 1, 8)}
    for fac, shape in shapes.items():
        m = create_mixer("bilinear", 12, factorization=fac, d_state=8, block_size=4, rank=6)
        assert m.transitions(x).shape == shape
        assert m.state_size(10) == 8


@pytest.mark.parametrize("factorization", ["cp", "block", "diag"])
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_bilinear_factorizations_conform(factorization, check):
    CHECKS[check](factory("bilinear", factorization=factorization))


def test_bad_options():
    with pytest.raises(ValueError, match="factorization must be one of"):
        create_mixer("bilinear", 16, factorization="tucker")
    with pytest.raises(ValueError, match="divisible by block_size"):
        create_mixer("bilinear", 16, factorization="block", d_state=10, block_size=4)
    with pytest.raises(ValueError, match="divisible by block_size"):
        create_mixer("block_diag_lrnn", 18, block_size=4)
    with pytest.raises(ValueError, match="p must be >= 1"):
        create_mixer("block_diag_lrnn", 16, p=0.5)
    with pytest.raises(ValueError, match="backend must be one of"):
        create_mixer("bilinear", 16, backend="kernel")
