"""RWKV-7 op: fast forms against the reference loop (paper orientation), values and gradients."""
import pytest
import torch
import torch.nn.functional as F

from rnnlab.ops import chunk
from rnnlab.ops import rwkv7 as R
from rnnlab.testing import assert_close

TOL = 1e-4


def make(B, T, H, K, V, seed=0, dtype=torch.float32):
    """Inputs as the RWKV-7 layer builds them: log w in (−e^{−1/2}, 0), a = −κ̂, b = κ̂ ⊙ a_iclr."""
    gen = torch.Generator().manual_seed(seed)
    r, k = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    w = -0.6065 * torch.rand(B, T, H, K, generator=gen)
    kk = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    iclr = torch.rand(B, T, H, K, generator=gen)
    ins = dict(q=r, k=k, v=v, w=w, a=-kk, b=kk * iclr)
    ins = {n: t.to(dtype).requires_grad_() for n, t in ins.items()}
    return ins, torch.randn(B, H, K, V, generator=gen).requires_grad_()


def run(fn, ins, h0, seed=1):
    o, s = fn(**ins, initial_state=h0, output_final_state=True)
    gen = torch.Generator().manual_seed(seed)
    loss = (o.float() * torch.randn(o.shape, generator=gen)).sum() + (s * torch.randn(s.shape, generator=gen)).sum()
    grads = torch.autograd.grad(loss, list(ins.values()) + [h0])
    return {"o": o, "final_state": s, **{f"d{n}": g for n, g in zip(list(ins) + ["initial_state"], grads)}}


@pytest.mark.parametrize("T", [1, 63, 64, 65])
@pytest.mark.parametrize("form", ["chunk_rwkv7", "fused_recurrent_rwkv7"])
def test_fast_vs_reference(form, T):
    ins, h0 = make(2, T, 2, 16, 8)
    ref = run(R.naive_recurrent_rwkv7, ins, h0)
    got = run(getattr(R, form), ins, h0)
    for name in ref:
        assert_close(got[name], ref[name], TOL, name)


def test_long_sequence():
    ins, h0 = make(1, 1000, 1, 8, 8, seed=2)
    ref = run(R.naive_recurrent_rwkv7, ins, h0)
    got = run(R.chunk_rwkv7, ins, h0)
    for name in ref:
        assert_close(got[name], ref[name], TOL, name)


@pytest.mark.parametrize("chunk_size", [8, 64])
def test_chunk_sizes(chunk_size):
    ins, h0 = make(2, 70, 2, 16, 8, seed=4)
    ref = run(R.naive_recurrent_rwkv7, ins, h0)
    got = run(lambda **kw: R.chunk_rwkv7(**kw, chunk_size=chunk_size), ins, h0)
    for name in ref:
        assert_close(got[name], ref[name], TOL, name)


def test_exact_pairwise_path(monkeypatch):
    """The exact (..., C, C, K) path that strong decays fall back to, forced on ordinary inputs."""
    monkeypatch.setattr(chunk, "MAX_EXP", -1.0)
    ins, h0 = make(2, 37, 2, 8, 8, seed=5)
    ref = run(R.naive_recurrent_rwkv7, ins, h0)
    got = run(R.chunk_rwkv7, ins, h0)
    for name in ref:
        assert_close(got[name], ref[name], TOL, name)


def test_strong_decay_values():
    """log w ≈ −10 per step (far outside RWKV-7's range |log w| < 0.61): the midpoint factorization
    would overflow, the exact path keeps values and the other gradients exact. (The gradient w.r.t.
    log w itself is then a tiny number formed by reverse cumulative sums of O(1) terms: measured
    relative error 3e-5 at log w ≈ −5 and 2e-3 at −10, against 4e-7 in the layer's range.)"""
    ins, h0 = make(1, 40, 2, 8, 8, seed=5)
    with torch.no_grad():
        ins["w"].sub_(10.0)
    ref = run(R.naive_recurrent_rwkv7, ins, h0)
    got = run(R.chunk_rwkv7, ins, h0)
    for name in ("o", "final_state", "dq", "dk", "dv", "da", "db", "dinitial_state"):
        assert_close(got[name], ref[name], TOL, name)


def test_orientation_matches_paper():
    """One step from S₀ = 0: S (V×K) = v kᵀ, so o = v (k·r), whatever a, b, w."""
    ins, _ = make(1, 1, 1, 4, 3)
    o, s = R.fused_recurrent_rwkv7(**ins, output_final_state=True)
    r, k, v = ins["q"][0, 0, 0], ins["k"][0, 0, 0], ins["v"][0, 0, 0]
    assert_close(o[0, 0, 0], v * (k @ r), 1e-6)
    assert_close(s[0, 0], torch.outer(k, v), 1e-6)  # stored transposed: (K, V)


def test_bf16_runs_with_fp32_state():
    ins, h0 = make(2, 40, 2, 16, 16, dtype=torch.bfloat16)
    o, s = R.chunk_rwkv7(**ins, initial_state=h0, output_final_state=True)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    ref, s_ref = R.naive_recurrent_rwkv7(**{n: t.float() for n, t in ins.items()}, initial_state=h0, output_final_state=True)
    assert_close(o.float(), ref, 2e-2)
    assert_close(s, s_ref, 2e-2)


def test_bad_shapes_raise():
    ins, h0 = make(1, 5, 2, 8, 8)
    with pytest.raises(ValueError, match="w must be"):
        R.chunk_rwkv7(**dict(ins, w=ins["w"][..., :4]))
    with pytest.raises(ValueError, match="initial_state"):
        R.fused_recurrent_rwkv7(**ins, initial_state=h0[..., :3])
