"""LaCT ops (rnnlab/ops/lact.py): chunk and fused recurrent forms against the reference token loop (autograd
gradients), values and every gradient; a split anywhere; packed sequences; chunk size 1 = per-token updates."""
from __future__ import annotations

import pytest
import torch

from rnnlab.ops import lact as LA
from rnnlab.ops.varlen import cu_seqlens_from_lengths
from rnnlab.testing import TOLERANCE, assert_close
from tests.ops.test_ttt import compare
from tests.ops.test_ttt import run as run_ttt

H, K, Fh = 2, 6, 8


def _case(B, T, pos=None, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    unit = lambda *s: torch.nn.functional.normalize(r(*s), dim=-1)  # noqa: E731
    ins = dict(q=unit(B, T, H, K), k=unit(B, T, H, K), v=r(B, T, H, K), lr=0.3 * torch.rand(B, T, H, generator=g, dtype=dtype))
    shapes = {"w1": (B, H, K, Fh), "w3": (B, H, K, Fh), "w2": (B, H, Fh, K)}
    state = {}
    for n, sh in shapes.items():
        state[n] = r(*sh) / K ** 0.5
        state["g_" + n] = 0.1 * r(*sh)
        state["m_" + n] = 0.1 * r(*sh)
    state["pos"] = torch.zeros(B, dtype=torch.int64) if pos is None else torch.as_tensor(pos, dtype=torch.int64)
    return ins, state


def run(fn, ins, state, **kw):
    """Values and every gradient under random cotangents (tests/ops/test_ttt.py's harness)."""
    return run_ttt(fn, ins, {}, state, kw)


@pytest.mark.parametrize("ns", ["muon", "cubic", "none"])
@pytest.mark.parametrize("beta", [0.0, 0.7])
@pytest.mark.parametrize("T,pos", [(1, [0, 2]), (4, [0, 0]), (13, [0, 0]), (13, [3, 1])])
def test_forms_equal_reference_float64(T, pos, beta, ns):
    """chunk (b = 4) and fused recurrent == the reference in float64: outputs, final states, gradients of q, k, v, lr
    and every initial-state tensor; lengths 1, b, a prime; rows starting mid-chunk; momentum; each Newton–Schulz."""
    ins, state = _case(2, T, pos)
    kw = dict(chunk_size=4, beta=beta, newton_schulz=ns)
    ref = run(LA.naive_recurrent_lact, ins, state, **kw)
    for fn in (LA.fused_recurrent_lact, LA.chunk_lact):
        compare(run(fn, ins, state, **kw), ref, TOLERANCE[torch.float64])


@pytest.mark.parametrize("ns", ["cubic", "none"])
def test_chunk_equals_reference_float32(ns):
    """float32 at the table's tolerance. Not with Muon's quintic: its slope at 0 is a = 3.4445 per step, so 5 steps
    amplify a small singular direction of g up to 3.4445⁵ ≈ 480x, and the rounding of g's sum (per token in the loop,
    in one matmul in the chunk form) reaches the results at 7e-5 relative (measured here: none 3e-7, cubic 1e-6,
    muon 7e-5); muon's exactness is the float64 test."""
    ins, state = _case(2, 37, [2, 0], dtype=torch.float32)
    kw = dict(chunk_size=8, beta=0.5, newton_schulz=ns)
    compare(run(LA.chunk_lact, ins, state, **kw), run(LA.naive_recurrent_lact, ins, state, **kw), TOLERANCE[torch.float32])


def test_chunk_size_one_updates_every_token():
    """b = 1: each token reads the weights all earlier tokens updated (plain online steps, written out here)."""
    ins, state = _case(1, 7)
    state = {n: (torch.zeros_like(t) if n[:2] in ("g_", "m_") else t) for n, t in state.items()}
    o, _ = LA.chunk_lact(**ins, initial_state=state, chunk_size=1, newton_schulz="none")
    W = {n: state[n].reshape(H, *state[n].shape[2:]) for n in LA.LACT_KEYS}
    want = []
    for t in range(7):
        x = lambda name: ins[name][0, t].reshape(H, 1, K)  # noqa: E731
        want.append(LA._swiglu(W, x("q"))[:, 0])
        g = torch.func.grad(lambda w: -(LA._swiglu(w, x("k")) * x("v")).sum(-1).mul(ins["lr"][0, t][:, None]).sum())(W)
        new = {n: W[n] - g[n] for n in W}
        W = {n: new[n] * W[n].norm(dim=1, keepdim=True) / new[n].norm(dim=1, keepdim=True) for n in W}
    assert_close(o[0], torch.stack(want, 0), TOLERANCE[torch.float64], "b = 1")


@pytest.mark.parametrize("split", [1, 3, 6, 10])
def test_split_anywhere_equals_whole(split):
    ins, state = _case(2, 14, [1, 3])
    kw = dict(chunk_size=4, beta=0.5)
    o, fin = LA.chunk_lact(**ins, initial_state=state, output_final_state=True, **kw)
    o1, s1 = LA.chunk_lact(**{n: t[:, :split] for n, t in ins.items()}, initial_state=state, output_final_state=True, **kw)
    o2, s2 = LA.chunk_lact(**{n: t[:, split:] for n, t in ins.items()}, initial_state=s1, output_final_state=True, **kw)
    assert_close(torch.cat([o1, o2], 1), o, TOLERANCE[torch.float64], "output")
    for n in fin:
        if fin[n].is_floating_point():
            assert_close(s2[n], fin[n], TOLERANCE[torch.float64], n)
        else:
            assert torch.equal(s2[n], fin[n])


def test_packed_equals_separate():
    lengths = (5, 1, 12, 7)
    ins, _ = _case(1, sum(lengths))
    _, state = _case(len(lengths), 1, [0, 2, 3, 1], seed=5)
    cu = cu_seqlens_from_lengths(lengths)
    kw = dict(chunk_size=4, beta=0.5)
    packed = run(LA.chunk_lact, ins, state, cu_seqlens=cu, **kw)
    for i, (s, L) in enumerate(zip(cu[:-1].tolist(), lengths)):
        one = run(LA.naive_recurrent_lact, {n: t[:, s:s + L] for n, t in ins.items()}, {n: t[i:i + 1] for n, t in state.items()}, **kw)
        assert_close(packed["o"][:, s:s + L], one["o"], TOLERANCE[torch.float64], f"output of sequence {i}")
        for n in state:
            if state[n].is_floating_point():
                assert_close(packed[f"final[{n}]"][i:i + 1], one[f"final[{n}]"], TOLERANCE[torch.float64], f"final {n} of {i}")


def test_newton_schulz_orthogonalizes():
    g = torch.randn(3, 8, 20, dtype=torch.float64)
    X = LA.newton_schulz(g, LA.NEWTON_SCHULZ["muon"])
    sv = torch.linalg.svdvals(X)
    assert (sv > 0.6).all() and (sv < 1.25).all(), sv  # Muon's quintic maps singular values into ~[0.7, 1.2]


def test_bad_inputs_raise():
    ins, state = _case(2, 5)
    with pytest.raises(ValueError, match="lr must be"):
        LA.chunk_lact(**dict(ins, lr=ins["lr"][:, :2]), initial_state=state)
    with pytest.raises(ValueError, match="newton_schulz must be"):
        LA.chunk_lact(**ins, initial_state=state, newton_schulz="quintic")
    with pytest.raises(ValueError, match="beta must be"):
        LA.chunk_lact(**ins, initial_state=state, beta=1.0)
    with pytest.raises(ValueError, match="initial_state must hold"):
        LA.chunk_lact(**ins, initial_state={n: t for n, t in state.items() if n != "m_w2"})
