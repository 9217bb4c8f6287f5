"""RWKV-6 time-mix and channel-mix: the layer against a token-by-token float64 transcription of the
Finch paper's equations (ddlerp token shift, LoRA decay, bonus u, GroupNorm, SiLU gate) from the
layer's weights; the authors' initialization; the channel-mix as the model's MLP."""
import pytest
import torch
import torch.nn.functional as F

from rnnlab.layers.registry import create_mixer
from rnnlab.models import ModelConfig, SequenceModel
from rnnlab.testing import assert_close



def _finch_reference(m, x):
    """Eqs. 10-20 of the paper, one token at a time, float64."""
    w = {n: p.detach().double() for n, p in m.named_parameters()}
    B, T, C = x.shape
    H, N = m.num_heads, m.head_size
    x = x.double()
    S = torch.zeros(B, H, N, N, dtype=torch.float64)
    prev, ys = torch.zeros(B, C, dtype=torch.float64), []
    for t in range(T):
        xt = x[:, t]
        dx = prev - xt
        base = xt + dx * w["maa_x"]  # a + (b - a) ⊙ μ_x
        lora = torch.tanh(base @ w["maa_w1"]).view(B, 5, -1)
        lam = {name: w["maa"][j] + lora[:, j] @ w["maa_w2"][j] for j, name in enumerate("wkvrg")}  # λ + tanh(.A)B
        xs = {name: xt + dx * lam[name] for name in lam}  # ddlerp
        r, k, v = (xs[n] @ w[f"{full}.weight"].T for n, full in (("r", "receptance"), ("k", "key"), ("v", "value")))
        g = F.silu(xs["g"] @ w["gate.weight"].T)
        d = w["time_decay"] + torch.tanh(xs["w"] @ w["decay_w1"]) @ w["decay_w2"]
        decay = torch.exp(-torch.exp(d)).view(B, H, N)
        r, k, v = (u.view(B, H, N) for u in (r, k, v))
        kv = k[..., :, None] * v[..., None, :]  # (B, H, N, N)
        o = ((S + w["time_first"][..., None] * kv) * r[..., None]).sum(-2)  # r · (S + diag(u) kᵀv)
        S = decay[..., None] * S + kv
        o = (o - o.mean(-1, keepdim=True)) / torch.sqrt(o.var(-1, unbiased=False, keepdim=True) + m.ln_x.eps)
        o = o.reshape(B, C) * w["ln_x.weight"] + w["ln_x.bias"]
        ys.append((o * g) @ w["output.weight"].T)
        prev = xt
    return torch.stack(ys, 1)


@pytest.mark.parametrize("T", [1, 40])
def test_time_mix_matches_paper(T):
    torch.manual_seed(0)
    m = create_mixer("rwkv6", 32, head_size=16, mix_rank=4, decay_rank=4, zero_init=False, layer_idx=1, num_layers=3, chunk_size=16)
    with torch.no_grad():  # informative LoRAs
        for p in (m.maa_w1, m.decay_w1):
            p.normal_(std=0.3)
    x = torch.randn(2, T, 32)
    assert_close(m(x)[0], _finch_reference(m, x).float(), 1e-4)


def test_init_as_authors():
    m = create_mixer("rwkv6", 64, head_size=16, layer_idx=0, num_layers=4)
    n = torch.arange(64) / 63
    assert_close(m.time_decay, -6 + 5 * n ** 0.7)
    assert torch.equal(m.output.weight, torch.zeros_like(m.output.weight))
    assert m.ln_x.eps == pytest.approx(64e-5)
    assert m.time_first.shape == (4, 16) and m.state_size(7) == 64 + 4 * 16 * 16


def test_channel_mix_is_the_models_mlp():
    cm = create_mixer("rwkv6_channel_mix", 64)
    assert cm.d_hidden == 224 and cm.key.weight.shape == (224, 64)  # int(3.5 · 64) rounded down to 32s
    model = SequenceModel(ModelConfig(vocab_size=11, d_model=32, n_layers=2, mixer="rwkv6", mlp="rwkv6_channel_mix",
                                      mixer_kwargs={"head_size": 16, "chunk_size": 16}))
    logits, state = model(torch.randint(0, 11, (2, 9)))
    assert logits.shape == (2, 9, 11) and any(key.endswith("mlp.shift") for key in state)


def test_bad_options():
    with pytest.raises(ValueError, match="head_size"):
        create_mixer("rwkv6", 32, head_size=12)
    with pytest.raises(ValueError, match="layer_idx"):
        create_mixer("rwkv6", 32, head_size=16, layer_idx=3, num_layers=3)
