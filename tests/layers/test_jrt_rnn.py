"""jrt_rnn (prefix linear attention, Arora et al. 2024 §5): the layer == the paper's equation written plainly with the
whole prompt in one call; the encoder is non-causal over the prefix and only over it; prefill then step == parallel;
a packed batch of prompts at different positions == the separate runs (the conformance suite checks the rest)."""
from __future__ import annotations

import torch

from rnnlab import create_mixer
from rnnlab.layers.based import taylor_feature_map
from rnnlab.ops.varlen import cu_seqlens_from_lengths
from rnnlab.testing import assert_close

D, H, M = 16, 2, 6


def make():
    torch.manual_seed(0)
    return create_mixer("jrt_rnn", d_model=D, num_heads=H, feature_dim=4, prefix_len=M, chunk_size=4)  # float32: the layer computes in float32 (as based)


def test_equals_the_paper_equation():
    mix = make()
    x = torch.randn(2, 13, D)
    y, _ = mix(x)
    heads = lambda t: t.unflatten(-1, (H, -1))  # noqa: E731
    q, k, ke = (taylor_feature_map(heads(p(x))) for p in (mix.q_proj, mix.k_proj, mix.k_enc_proj))
    v, ve = heads(mix.v_proj(x)), heads(mix.v_enc_proj(x))
    outs = []
    for i in range(x.shape[1]):
        S = torch.einsum("bjhf,bjhv->bhfv", ke[:, :M], ve[:, :M]) + torch.einsum("bjhf,bjhv->bhfv", k[:, : i + 1], v[:, : i + 1])
        z = ke[:, :M].sum(1) + k[:, : i + 1].sum(1)
        outs.append(torch.einsum("bhf,bhfv->bhv", q[:, i], S) / (torch.einsum("bhf,bhf->bh", q[:, i], z)[..., None] + mix.eps))
    expected = mix.o_proj(torch.stack(outs, 1).flatten(-2))
    assert_close(y, expected)


def test_encoder_is_non_causal_over_the_prefix_only():
    mix = make()
    x = torch.randn(1, 12, D)
    y, _ = mix(x)
    x2 = x.clone()
    x2[0, M - 1] += 1.0  # the last prefix token: every output moves, position 0 included
    y2, _ = mix(x2)
    assert (y2[0, 0] - y[0, 0]).abs().max() > 1e-6
    x3 = x.clone()
    x3[0, M + 2] += 1.0  # a token after the prefix: outputs before it are unchanged
    y3, _ = mix(x3)
    assert_close(y3[0, : M + 2], y[0, : M + 2])
    assert (y3[0, M + 2] - y[0, M + 2]).abs().max() > 1e-6


def test_prefill_then_step_equals_parallel():
    mix = make()
    x = torch.randn(2, 15, D)
    y, s_full = mix(x)
    ys, s = [], None
    y0, s = mix(x[:, :M])  # the prompt in one call
    ys.append(y0)
    for t in range(M, 15):
        yt, s = mix(x[:, t : t + 1], s)
        ys.append(yt)
    assert_close(torch.cat(ys, 1), y)
    for key in ("S", "z"):
        assert_close(s[key], s_full[key])
    assert torch.equal(s["pos"], s_full["pos"])


def test_packed_prompts_equal_separate():
    mix = make()
    lengths = (9, 3, 14)
    xs = [torch.randn(1, n, D) for n in lengths]
    sep = [mix(x) for x in xs]
    y, s = mix(torch.cat(xs, 1), cu_seqlens=cu_seqlens_from_lengths(lengths))
    for i, (a, (b, sb)) in enumerate(zip(y.split(list(lengths), 1), sep)):
        assert_close(a, b, name=f"sequence {i}")
        assert_close(s["S"][i : i + 1], sb["S"], name=f"state {i}")
