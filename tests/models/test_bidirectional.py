"""Birdie's bidirectional prefix (rnnlab.models.bidirectional): the reverse branch equals its reference (the prefix
reversed in its own call, each later token alone), the suffix stays causal, the prefix sees its own later tokens,
a prompt call then steps equals one call, and a causal model ignores prefix_len."""
import pytest
import torch

from rnnlab.models import ModelConfig, SequenceModel
from rnnlab.models.bidirectional import reverse_prefix
from rnnlab.layers.registry import create_mixer, mixer_info
from rnnlab.testing import assert_close

V, T = 13, 10
MIXERS = ["mamba", "attention", "gla", "lstm", "rwkv6"]


@pytest.mark.parametrize("name", MIXERS)
def test_reverse_branch_equals_its_reference(name):
    torch.manual_seed(0)
    rev = create_mixer(name, 16, **mixer_info(name).small)
    h = torch.randn(3, T, 16, requires_grad=True)
    P = torch.tensor([4, 0, T])
    got = reverse_prefix(rev, h, P)
    want = torch.zeros_like(got)
    for b, p in enumerate(P.tolist()):
        if p:
            y, _ = rev(h[b:b + 1, :p].flip(1))
            want[b, :p] = y[0].flip(0)
        for t in range(p, T):
            want[b, t] = rev(h[b:b + 1, t:t + 1])[0][0, 0]
    assert_close(got, want)
    g = torch.randn_like(got)
    (gh,) = torch.autograd.grad(got, h, g)
    (wh,) = torch.autograd.grad(want, h, g)
    assert_close(gh, wh)
    assert_close(reverse_prefix(rev, h, None), reverse_prefix(rev, h, torch.zeros(3, dtype=torch.int64)))


def _model(mixer, kw, every=2, n_layers=2):
    return SequenceModel(ModelConfig(mixer=mixer, vocab_size=V, d_model=16, n_layers=n_layers, mixer_kwargs=kw,
                                     bidirectional_every=every)).eval()


@pytest.mark.parametrize("mixer,kw", [("mamba", {"d_state": 4}), ("attention", {"num_heads": 2})])
def test_prefix_bidirectional_suffix_causal_and_streaming(mixer, kw):
    torch.manual_seed(0)
    m = _model(mixer, kw)
    assert m.blocks[0].rev is not None and m.blocks[1].rev is None  # layers i % 2 == 0
    x, P = torch.randint(0, V, (3, T)), torch.tensor([4, 0, 7])
    with torch.no_grad():
        y, _ = m(x, prefix_len=P)
        x2 = x.clone()
        x2[:, 8] = (x2[:, 8] + 1) % V
        assert_close(m(x2, prefix_len=P)[0][:, :8], y[:, :8])  # the suffix is causal
        x3 = x.clone()
        x3[:, 3] = (x3[:, 3] + 1) % V
        moved = (m(x3, prefix_len=P)[0][:, 0] - y[:, 0]).abs().amax(-1)
        assert moved[0] > 1e-4 and moved[2] > 1e-4 and moved[1] == 0  # position 0 sees token 3 only inside a prefix
        head, state = m(x[:, :8], prefix_len=P)  # the prompt in one call, then steps
        outs = [head]
        for t in range(8, T):
            o, state = m.step(x[:, t], state)
            outs.append(o[:, None])
        assert_close(torch.cat(outs, 1), y)
        assert_close(m(x)[0], m(x, prefix_len=0)[0])  # no prefix: every token of the reverse branch alone
        causal = SequenceModel(ModelConfig(mixer=mixer, vocab_size=V, d_model=16, n_layers=2, mixer_kwargs=kw)).eval()
        assert torch.equal(causal(x, prefix_len=P)[0], causal(x)[0])
    with pytest.raises(ValueError, match="prefix_len"):
        m(x, prefix_len=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="prefix_len"):
        m(x.reshape(1, -1), prefix_len=3, cu_seqlens=torch.tensor([0, T, 2 * T, 3 * T]))
    with pytest.raises(ValueError, match="bidirectional_every"):
        ModelConfig(mixer=mixer, vocab_size=V, mixer_kwargs=kw, bidirectional_every=0)


def test_gradients_reach_the_reverse_mixer():
    m = _model("gla", {"num_heads": 2}, every=1).train()
    x = torch.randint(0, V, (2, T))
    m(x, prefix_len=torch.tensor([5, 3]))[0].square().mean().backward()
    for b in m.blocks:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in b.rev.parameters())
