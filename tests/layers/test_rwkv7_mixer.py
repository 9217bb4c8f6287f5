"""RWKV-7 mixers: parameterization checks beyond the conformance suite."""
import math

import torch

import rnnlab
from rnnlab.ops.rwkv7 import naive_recurrent_rwkv7
from rnnlab.testing import assert_close


def test_authors_init_zero_output():
    m = rnnlab.create_mixer("rwkv7", 64, head_size=16)
    assert m.output.weight.abs().max() == 0
    y, _ = m(torch.randn(1, 5, 64))
    assert y.abs().max() == 0
    cm = rnnlab.create_mixer("rwkv7_channel_mix", 64)
    assert cm.value.weight.abs().max() == 0 and cm.key.out_features == 256


def test_decay_range():
    """log w = −e^{−1/2} σ(·): every per-channel decay lies in (e^{−e^{−1/2}}, 1)."""
    m = rnnlab.create_mixer("rwkv7", 32, head_size=16, zero_init_output=False)
    x = torch.randn(2, 7, 32) * 10
    log_w = -math.exp(-0.5) * torch.sigmoid(m.w_lora(x))
    assert (log_w < 0).all() and (log_w > -math.exp(-0.5)).all()


def test_time_mix_matches_reference_op():
    """The mixer's parallel form (fast op) equals its step-by-step form (rank-one op) and the paper-orientation loop."""
    torch.manual_seed(0)
    m = rnnlab.create_mixer("rwkv7", 32, head_size=16, zero_init_output=False)
    for p in m.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 11, 32)
    y, s = m(x)
    y_ref, s_ref = m._mix(x, m.init_state(2), naive_recurrent_rwkv7)
    assert_close(y, y_ref, 1e-5)
    assert_close(s["S"], s_ref["S"], 1e-5)
