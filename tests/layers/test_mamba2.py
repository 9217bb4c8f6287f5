"""Mamba-2 mixer: parity with HF transformers' Mamba2Mixer (pure-PyTorch path) with the weights copied
across, including groups (n_groups > 1, gated RMSNorm per group); the authors' initialization."""
import pytest
import torch

from rnnlab.layers.registry import create_mixer
from rnnlab.testing import assert_close



@pytest.mark.parametrize("ngroups", [1, 2])
def test_matches_hf_mamba2(ngroups):
    pytest.importorskip("transformers")
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    torch.manual_seed(0)
    D, P, N = 32, 16, 8
    ours = create_mixer("mamba2", D, d_state=N, headdim=P, ngroups=ngroups, chunk_size=16)
    cfg = Mamba2Config(hidden_size=D, expand=2, head_dim=P, num_heads=2 * D // P, n_groups=ngroups, state_size=N,
                       chunk_size=16, conv_kernel=4, num_hidden_layers=1, layer_norm_epsilon=ours.norm_eps)
    hf = Mamba2Mixer(cfg, layer_idx=0).eval()
    with torch.no_grad():
        hf.in_proj.weight.copy_(ours.in_proj.weight)
        hf.conv1d.weight.copy_(ours.conv.weight[:, None])
        hf.conv1d.bias.copy_(ours.conv.bias)
        for name in ("dt_bias", "A_log", "D"):
            getattr(hf, name).copy_(getattr(ours, name))
        hf.norm.weight.copy_(ours.norm_weight.normal_())
        hf.out_proj.weight.copy_(ours.out_proj.weight)
        x = torch.randn(2, 40, D)
        assert_close(ours(x)[0], hf(x), 1e-4)


def test_init_as_authors():
    m = create_mixer("mamba2", 64, headdim=16)
    A = torch.exp(m.A_log)
    assert ((A >= 1) & (A <= 16)).all()
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert ((dt >= 1e-3 - 1e-7) & (dt <= 0.1 + 1e-7)).all()
    assert torch.equal(m.D, torch.ones_like(m.D)) and all(getattr(p, "_no_weight_decay", False) for p in (m.A_log, m.dt_bias, m.D))
