"""sLSTM mixer (Beck et al. 2024): kernel vs reference backend (values and every parameter gradient) for
both forget gates and head counts, the xLSTM code's initialisation, the head-wise block-diagonal
structure of the input projections and of R, GroupNorm per head, the post-up-projection block as an
rnnlab Block around the mixer."""
import pytest
import torch

import rnnlab
from rnnlab.layers.slstm import SLSTM, forget_bias
from rnnlab.ops.rnn import slstm as slstm_op
from rnnlab.testing import assert_close


def _pair(d, **kw):
    """The same weights behind both backends; R random (its init is 0, which would hide the recurrence)."""
    torch.manual_seed(0)
    mk = SLSTM(d, backend="kernel", **kw)
    with torch.no_grad():
        mk.weight_hh.normal_(0.0, mk.weight_hh.shape[-1] ** -0.5)
    mr = SLSTM(d, backend="reference", **kw)
    mr.load_state_dict(mk.state_dict())
    return mk, mr


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("num_heads", [1, 4])
def test_kernel_matches_reference(forget_gate, num_heads):
    mk, mr = _pair(16, num_heads=num_heads, forget_gate=forget_gate)
    x = torch.randn(3, 41, 16)
    state = mk.init_state(3)
    state.update(h=torch.randn(3, 16), c=torch.randn(3, 16), n=torch.rand(3, 16) + 0.5, m=torch.randn(3, 16))
    (yk, sk), (yr, sr) = mk(x, state), mr(x, state)
    assert_close(yk, yr, name="output")
    for k in sr:
        assert_close(sk[k], sr[k], name=f"state {k}")
    ct = torch.randn(yk.shape)
    (yk * ct).sum().backward()
    (yr * ct).sum().backward()
    for (n, p), q in zip(mk.named_parameters(), mr.parameters()):
        assert_close(p.grad, q.grad, name=f"grad {n}")


def test_initialisation_follows_xlstm_code():
    m = SLSTM(32, num_heads=4)
    H, Kh = 32, 8
    assert torch.count_nonzero(m.weight_hh) == 0  # recurrent_weight_init = "zeros"
    fb = m.bias[H : 2 * H].view(4, Kh)
    j = torch.arange(Kh, dtype=torch.float64) / (Kh - 1)
    expected = -(-5.0 + 12.0 * j**0.3)  # powerlaw_blockdependent, one block: exponent 0.3, same for every head
    for head in fb:
        assert_close(head.double(), expected, 1e-6)
    assert fb[0, 0] == 5.0 and fb[0, -1] == -7.0
    assert torch.count_nonzero(m.bias[:H]) == 0 and torch.count_nonzero(m.bias[2 * H :]) == 0
    assert_close(forget_bias(2, 4, depth_ratio=1.0)[:4].double(), -(-5.0 + 12.0 * (torch.arange(4) / 3.0) ** 1.6), 1e-6)
    std = (2 / (5 * 32)) ** 0.5  # small init of the gate projections
    w = torch.cat([m.weight_if.flatten(), m.weight_zo.flatten()])
    assert abs(w.std().item() - std) < 0.2 * std
    assert torch.all(m.norm_weight == 1)


def test_heads_are_block_diagonal():
    """Head j's h depends only on head j's inputs (x enters head-wise, R is block-diagonal) when there is no conv
    (the depthwise conv does not mix channels either; it is left out here to keep the check exact)."""
    mk, _ = _pair(16, num_heads=4, conv_kernel=0)
    x = torch.randn(1, 12, 16)
    with torch.no_grad():
        y0 = mk(x)[1]["h"]
        x2 = x.clone()
        x2[..., 4:8] += 1.0  # perturb head 1's input channels
        y1 = mk(x2)[1]["h"]
    changed = (y1 - y0).abs().view(1, 4, 4).amax(-1)[0]
    assert changed[1] > 0 and torch.all(changed[[0, 2, 3]] == 0), changed


def test_group_norm_per_head():
    """y = (h - mean_head(h)) / sqrt(var_head(h) + 1e-5) * weight: a LayerNorm over each head's Kh units."""
    m, _ = _pair(16, num_heads=4)
    with torch.no_grad():
        m.norm_weight.uniform_(0.5, 1.5)
        x = torch.randn(2, 9, 16)
        y = m(x)[0]
        gx, _ = m._gates(x, m.init_state(2))
        h, _ = slstm_op(gx, m.weight_hh, backend="reference")
    hh = h.view(2, 9, 4, 4)
    mu, var = hh.mean(-1, keepdim=True), hh.var(-1, unbiased=False, keepdim=True)
    assert_close(y, ((hh - mu) / torch.sqrt(var + 1e-5)).view(2, 9, 16) * m.norm_weight)


def test_post_up_projection_block():
    """ModelConfig(mixer="slstm", mlp_ratio=2) is the xLSTM sLSTM block: norm -> sLSTM layer -> residual ->
    norm -> gated MLP of width 4/3 D -> residual."""
    cfg = rnnlab.ModelConfig(vocab_size=11, d_model=48, n_layers=1, mixer="slstm", mlp_ratio=2.0)
    model = rnnlab.SequenceModel(cfg)
    block = model.blocks[0]
    assert isinstance(block.mixer, SLSTM)
    hidden = [p.shape for n, p in block.mlp.named_parameters() if p.dim() == 2]
    assert any(64 in s for s in hidden), hidden  # 4/3 * 48 = 64
    out, _ = model(torch.randint(0, 11, (2, 7)))
    assert torch.isfinite(out).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_heads must be a positive int dividing"):
        SLSTM(16, num_heads=3)
    with pytest.raises(ValueError, match="forget_gate must be one of"):
        SLSTM(16, forget_gate="tanh")
    with pytest.raises(ValueError, match="conv_kernel"):
        SLSTM(16, conv_kernel=1)
    with pytest.raises(ValueError, match="backend must be one of"):
        SLSTM(16, backend="triton")
