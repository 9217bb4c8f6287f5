"""RWKV-4 WKV: parallel form vs the reference loop (values and gradients under random
cotangents, incl. the final state), split sequences, stability, bad input."""
import pytest
import torch

from rnnlab.ops.wkv4 import EMPTY_MAX, wkv4, wkv4_ref
from rnnlab.testing import assert_close

B, C = 2, 6


def _inputs(T, with_state, seed=0, dtype=torch.float32, k_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, T, C, generator=g) * k_scale
    v = torch.randn(B, T, C, generator=g)
    w = -torch.exp(torch.linspace(-5, 3, C))  # RWKV-4's decay range: slow to very fast
    u = torch.randn(C, generator=g)
    s0 = None
    if with_state:  # a state as left by a previous call: num any sign, den > 0, max finite
        s0 = torch.stack([torch.randn(B, C, generator=g), torch.rand(B, C, generator=g) + 0.1, torch.randn(B, C, generator=g)], 1)
    return [t.to(dtype) for t in (k, v, w, u)], s0


def _run(fn, inputs, s0, seed=1):
    leaves = [t.detach().clone().requires_grad_() for t in inputs + ([s0] if s0 is not None else [])]
    o, s = fn(*leaves[:4], leaves[4] if s0 is not None else None, output_final_state=True)
    g = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=g)).sum() + (s * torch.randn(s.shape, generator=g)).sum()
    return (o, s), torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("backend", ["kernel", "parallel"])
@pytest.mark.parametrize("T", [1, 17, 64, 1000])
@pytest.mark.parametrize("with_state", [False, True])
def test_wkv4_matches_reference(backend, T, with_state):
    inputs, s0 = _inputs(T, with_state)
    (o, s), grads = _run(lambda *a, **kw: wkv4(*a, **kw, backend=backend), inputs, s0)
    (o_r, s_r), grads_r = _run(wkv4_ref, inputs, s0)
    assert_close(o, o_r, name="o")
    assert_close(s, s_r, name="final state")
    for name, x, y in zip(["dk", "dv", "dw", "du", "ds0"], grads, grads_r):
        assert_close(x, y, name=name)


def test_wkv4_matches_paper_formula():
    """eq. (14) evaluated directly in float64 (no stabiliser), against the op in float32."""
    (k, v, w, u), _ = _inputs(23, False)
    o, _ = wkv4(k, v, w, u)
    kd, vd, wd, ud = (t.double() for t in (k, v, w, u))
    T = k.shape[1]
    ref = []
    for t in range(T):
        i = torch.arange(t, dtype=torch.float64)
        e = torch.exp((t - 1 - i)[None, :, None] * wd + kd[:, :t])  # (B, t, C)
        bonus = torch.exp(ud + kd[:, t])
        ref.append(((e * vd[:, :t]).sum(1) + bonus * vd[:, t]) / (e.sum(1) + bonus))
    assert_close(o, torch.stack(ref, 1).float())


def test_wkv4_split_equals_full():
    (k, v, w, u), _ = _inputs(67, False)
    o, s = wkv4(k, v, w, u, output_final_state=True)
    o1, s1 = wkv4(k[:, :30], v[:, :30], w, u, output_final_state=True)
    o2, s2 = wkv4(k[:, 30:], v[:, 30:], w, u, s1, output_final_state=True)
    assert_close(torch.cat([o1, o2], 1), o)
    assert_close(s2, s)
    assert s[:, 2].abs().max() < 100 and s[:, 1].min() > 0  # max exponent is a real running max


def test_wkv4_stable_with_large_keys():
    """k up to ~±80 would overflow e^{k} in float32 without the running maximum."""
    (k, v, w, u), _ = _inputs(200, False, k_scale=40.0)
    o, s = wkv4(k, v, w, u, output_final_state=True)
    o_r, s_r = wkv4_ref(k, v, w, u, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert_close(o, o_r)
    assert_close(s, s_r)


def test_wkv4_empty_state_equals_none():
    (k, v, w, u), _ = _inputs(9, False)
    empty = torch.zeros(B, 3, C)
    empty[:, 2] = EMPTY_MAX
    assert_close(wkv4(k, v, w, u, empty)[0], wkv4(k, v, w, u)[0], tol=0.0)


def test_wkv4_bfloat16_runs_with_float32_state():
    inputs, _ = _inputs(33, False)
    o, s = wkv4(*[t.bfloat16() for t in inputs], output_final_state=True)
    o_r, _ = wkv4_ref(*inputs)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert_close(o.float(), o_r, tol=5e-2)


def test_wkv4_bad_input():
    (k, v, w, u), _ = _inputs(5, False)
    with pytest.raises(ValueError, match=r"\(B, T, C\)"):
        wkv4(k[0], v[0], w, u)
    with pytest.raises(ValueError, match=r"\(C,\)"):
        wkv4(k, v, w[:-1], u)
    with pytest.raises(ValueError, match=r"\(B, 3, C\)"):
        wkv4(k, v, w, u, torch.zeros(B, 2, C))
    with pytest.raises(ValueError, match="backend"):
        wkv4(k, v, w, u, backend="cuda")
