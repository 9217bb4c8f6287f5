"""RWKV-4: time-mix vs the paper's eqs. (11)-(15) evaluated without stabiliser in float64,
the layer-dependent initialisation, channel-mix eqs. (17)-(19), and the model with the
channel-mix as its MLP (parallel == streaming)."""
import math

import pytest
import torch
import torch.nn.functional as F

import rnnlab
from rnnlab.testing import assert_close


def _shifted(x):
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)


def test_rwkv4_time_mix_matches_paper():
    torch.manual_seed(0)
    m = rnnlab.create_mixer("rwkv4", 8, zero_init=False, layer_id=1, num_layers=3)
    x = torch.randn(2, 15, 8)
    y, _ = m(x)
    xd, xx = x.double(), _shifted(x.double())
    mix = lambda mu: xd * mu.double() + xx * (1 - mu.double())  # noqa: E731
    r = mix(m.time_mix_r) @ m.receptance.weight.double().T  # (11)
    k = mix(m.time_mix_k) @ m.key.weight.double().T  # (12)
    v = mix(m.time_mix_v) @ m.value.weight.double().T  # (13)
    w, u = torch.exp(m.time_decay.double()), m.time_first.double()  # paper's w >= 0
    wkv = []
    for t in range(15):  # (14)
        i = torch.arange(t, dtype=torch.float64)
        e = torch.exp(-(t - 1 - i)[None, :, None] * w + k[:, :t])
        bonus = torch.exp(u + k[:, t])
        wkv.append(((e * v[:, :t]).sum(1) + bonus * v[:, t]) / (e.sum(1) + bonus))
    y_ref = (torch.sigmoid(r) * torch.stack(wkv, 1)) @ m.output.weight.double().T  # (15)
    assert_close(y, y_ref.float())


def test_rwkv4_channel_mix_matches_paper():
    torch.manual_seed(0)
    m = rnnlab.create_mixer("rwkv4_channel_mix", 8, zero_init=False)
    x = torch.randn(2, 11, 8)
    y, s = m(x)
    xx = _shifted(x)
    mix = lambda mu: x * mu + xx * (1 - mu)  # noqa: E731
    r = mix(m.time_mix_r) @ m.receptance.weight.T  # (17)
    k = mix(m.time_mix_k) @ m.key.weight.T  # (18)
    y_ref = torch.sigmoid(r) * (F.relu(k) ** 2 @ m.value.weight.T)  # (19)
    assert_close(y, y_ref)
    assert_close(s["shift"], x[:, -1])


def test_rwkv4_initialisation():
    m = rnnlab.create_mixer("rwkv4", 64, layer_id=0, num_layers=4)
    assert_close(m.time_decay[[0, -1]].detach(), torch.tensor([-5.0, 3.0]))  # decay speeds span e^-5 .. e^3
    assert_close(m.time_first[:3].detach(), torch.tensor([math.log(0.3), math.log(0.3) + 0.5, math.log(0.3) - 0.5]))  # zigzag
    assert m.output.weight.abs().max() == 0 and m.key.weight.abs().max() == 0  # zero init (RWKV_Init)
    cm = rnnlab.create_mixer("rwkv4_channel_mix", 64)
    assert cm.value.weight.abs().max() == 0 and cm.key.weight.shape == (256, 64)
    with pytest.raises(ValueError, match="layer_id"):
        rnnlab.create_mixer("rwkv4", 64, layer_id=4, num_layers=4)


def test_rwkv4_model_with_channel_mix_streams():
    from rnnlab.models.config import ModelConfig
    from rnnlab.models.model import SequenceModel

    torch.manual_seed(0)
    cfg = ModelConfig(mixer="rwkv4", mlp="rwkv4_channel_mix", d_model=16, n_layers=2, vocab_size=11,
                      mixer_kwargs=[{"layer_id": i, "num_layers": 2, "zero_init": False} for i in range(2)])
    model = SequenceModel(cfg).eval()
    tokens = torch.randint(0, 11, (2, 13))
    with torch.no_grad():
        full, s_full = model(tokens)
        a, s_a = model(tokens[:, :6])
        b, s_b = model(tokens[:, 6:], s_a)
        c, _ = model(tokens[:, 6:7], s_a)  # one streaming step
    assert any(k.endswith("mlp.shift") for k in s_full)  # the channel-mix state is carried
    assert_close(torch.cat([a, b], 1), full)
    assert_close(c[:, 0], full[:, 6])
