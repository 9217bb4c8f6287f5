"""elman / lstm / gru mixers: torch.nn.RNN/LSTM/GRU interchange with copied weights (both directions,
both backends, outputs, states and weight gradients at 1e-5), clear errors for what torch has and the
mixer cannot take (bidirectional, several layers, proj_size) and vice versa (heads, out_proj), the
head-wise recurrence's kernel against its reference."""
import pytest
import torch
from torch import nn

import rnnlab
from rnnlab.layers.elman import Elman
from rnnlab.layers.gru import GRU
from rnnlab.layers.lstm import LSTM
from rnnlab.testing import TOLERANCE, assert_close

# name -> (torch class, mixer class, torch kwargs)
CASES = {
    "lstm": (nn.LSTM, LSTM, {}),
    "gru": (nn.GRU, GRU, {}),
    "elman_tanh": (nn.RNN, Elman, {}),
    "elman_relu": (nn.RNN, Elman, {"nonlinearity": "relu"}),
}
D, H = 6, 10


def _state_in(name, gen, B):
    h0 = torch.randn(B, H, generator=gen)
    if name == "lstm":
        c0 = torch.randn(B, H, generator=gen)
        return {"h": h0, "c": c0}, (h0[None], c0[None])
    return {"h": h0}, h0[None]


def _torch_state(name, hidden):
    if name == "lstm":
        return {"h": hidden[0][0], "c": hidden[1][0]}
    return {"h": hidden[0]}


@pytest.mark.parametrize("backend", ["kernel", "reference"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("T", [1, 13])
def test_from_torch_matches_torch(name, backend, T):
    """Weights copied from torch.nn: same outputs, final states and weight gradients (T == 1 is the step)."""
    tcls, mcls, kw = CASES[name]
    torch.manual_seed(0)
    tmod = tcls(D, H, batch_first=True, **kw)
    mixer = mcls.from_torch(tmod, backend=backend)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, T, D, generator=gen)
    state, hidden = _state_in(name, gen, 3)
    y_t, hid_t = tmod(x, hidden)
    if H != D:
        y_t = y_t @ mixer.out_proj.weight.T  # the mixer maps H -> D with its own out_proj
    y_m, st_m = mixer(x, state)
    assert_close(y_m, y_t, 1e-5, name="output")
    for k, v in _torch_state(name, hid_t).items():
        assert_close(st_m[k], v, 1e-5, name=f"state {k}")
    ct = torch.randn(y_t.shape, generator=gen)
    (y_t * ct).sum().backward()
    (y_m * ct).sum().backward()
    for p in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        assert_close(getattr(mixer, p).grad, getattr(tmod, p).grad, 1e-5, name=f"grad {p}")


@pytest.mark.parametrize("backend", ["kernel", "reference"])
@pytest.mark.parametrize("name", list(CASES))
def test_to_torch_matches_mixer(name, backend):
    """The other direction: a mixer's weights exported to torch.nn give the mixer's outputs (H == D)."""
    _, mcls, kw = CASES[name]
    torch.manual_seed(2)
    mixer = mcls(D, backend=backend, **kw)
    tmod = mixer.to_torch()
    assert type(tmod) is CASES[name][0] and tmod.batch_first
    x = torch.randn(2, 17, D)
    with torch.no_grad():
        assert_close(mixer(x)[0], tmod(x)[0], 1e-5, name="output")
    # round trip: from_torch(to_torch(m)) has the same state dict
    back = mcls.from_torch(tmod, backend=backend)
    for k, v in mixer.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_from_torch_without_bias_and_batch_second():
    tmod = nn.LSTM(D, D, bias=False)  # batch_first=False: weights are the same, the mixer is batch-first
    mixer = LSTM.from_torch(tmod)
    assert torch.count_nonzero(mixer.bias_ih_l0) == 0 and torch.count_nonzero(mixer.bias_hh_l0) == 0
    x = torch.randn(4, 2, D)  # (T, B, D) for torch
    with torch.no_grad():
        assert_close(mixer(x.transpose(0, 1))[0].transpose(0, 1), tmod(x)[0], 1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_interchange_errors(name):
    tcls, mcls, kw = CASES[name]
    with pytest.raises(ValueError, match="bidirectional"):
        mcls.from_torch(tcls(D, H, bidirectional=True, **kw))
    with pytest.raises(ValueError, match="num_layers must be 1"):
        mcls.from_torch(tcls(D, H, num_layers=2, **kw))
    with pytest.raises(ValueError, match=f"expects a torch.nn.{tcls.__name__}"):
        mcls.from_torch(nn.Linear(D, H))
    with pytest.raises(ValueError, match="num_heads=2"):
        mcls(D, hidden_size=8, num_heads=2).to_torch()
    with pytest.raises(ValueError, match="out_proj"):
        mcls(D, hidden_size=H).to_torch()
    if name == "lstm":
        with pytest.raises(ValueError, match="proj_size"):
            LSTM.from_torch(nn.LSTM(D, H, proj_size=3))


@pytest.mark.parametrize("name", ["lstm", "gru", "elman_tanh"])
def test_headwise_kernel_matches_reference(name):
    """num_heads > 1 (block-diagonal recurrence): both backends, outputs and all parameter gradients."""
    _, mcls, kw = CASES[name]
    torch.manual_seed(3)
    mk = mcls(8, hidden_size=12, num_heads=3, backend="kernel", **kw)
    mr = mcls(8, hidden_size=12, num_heads=3, backend="reference", **kw)
    mr.load_state_dict(mk.state_dict())
    assert mk.weight_hh_l0.shape == (3, mk.weight_hh_l0.shape[1], 4)
    x = torch.randn(2, 29, 8)
    ys = [m(x)[0] for m in (mk, mr)]
    assert_close(ys[0], ys[1], name="output")
    for y in ys:
        y.square().sum().backward()
    for (n, p), q in zip(mk.named_parameters(), mr.parameters()):
        assert_close(p.grad, q.grad, name=f"grad {n}")


def test_headwise_blocks_are_independent():
    """With num_heads=2 the first head's outputs do not depend on the second head's weights."""
    torch.manual_seed(4)
    m = LSTM(8, num_heads=2)
    x = torch.randn(1, 9, 8)
    with torch.no_grad():
        h_before = m(x)[1]["h"][:, :4].clone()
        m.weight_hh_l0[1].add_(1.0)
        assert torch.equal(m(x)[1]["h"][:, :4], h_before)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_heads must be a positive int dividing"):
        rnnlab.create_mixer("lstm", 8, num_heads=3)
    with pytest.raises(ValueError, match="backend must be one of"):
        rnnlab.create_mixer("gru", 8, backend="cuda")
    with pytest.raises(ValueError, match="nonlinearity"):
        rnnlab.create_mixer("elman", 8, nonlinearity="gelu")
    with pytest.raises(ValueError, match="hidden_size must be an int >= 1"):
        rnnlab.create_mixer("lstm", 8, hidden_size=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_only_prefill_on_torch_fused_kernel(name, dtype):
    """Without gradients (prefill, evaluation) backend "auto" runs torch.nn's fused layer: exactly torch.nn's
    outputs, and the numba kernel's (which computes in float32, so at float32 tolerance) from a given state, at
    awkward lengths, packed."""
    tcls, mcls, kw = CASES[name]
    gen = torch.Generator().manual_seed(3)
    m = mcls(D, hidden_size=D, **kw).to(dtype)
    kernel = mcls(D, hidden_size=D, backend="kernel", **kw).to(dtype)
    kernel.load_state_dict(m.state_dict())
    x = torch.randn(3, 13, D, generator=gen, dtype=dtype)
    s, hidden = _state_in(name, gen, 3)
    s = {k: v[:, :D].to(dtype) for k, v in s.items()}
    with torch.no_grad():
        assert m._torch_prefill(x, s) and not kernel._torch_prefill(x, s)
        y, f = m(x, s)
        ref, ref_hidden = m.to_torch()(x, tuple(h[:, :, :D].to(dtype) for h in hidden) if name == "lstm" else hidden[:, :, :D].to(dtype))
        assert torch.equal(y, ref) and all(torch.equal(f[k], v) for k, v in _torch_state(name, ref_hidden).items())
        cu = torch.tensor([0, 1, 18, 39])
        for args in ((x, s, None), (x.reshape(1, -1, D), s, cu)):
            (y, f), (yk, fk) = m(*args[:2], cu_seqlens=args[2]), kernel(*args[:2], cu_seqlens=args[2])
            assert_close(y, yk, TOLERANCE[torch.float32])
            for k in f:
                assert_close(f[k], fk[k], TOLERANCE[torch.float32])
    assert not m._torch_prefill(x.requires_grad_(), s)  # training keeps the kernel and its backward
