"""ATLAS's memory (rnnlab/ops/atlas.py): the chunk form and the fused recurrent form against the reference token loop
(autograd of the window loss), values and the gradients of every input, the feature coefficients and the initial
state; chunk size 1 against the paper's equations written plainly; a state split anywhere; packed sequences."""
from __future__ import annotations

import pytest
import torch

from rnnlab.ops import atlas as A
from rnnlab.ops.lact import NEWTON_SCHULZ, newton_schulz
from rnnlab.ops.varlen import cu_seqlens_from_lengths
from rnnlab.testing import TOLERANCE, assert_close
from tests.ops.test_ttt import compare, run

H, K = 2, 3
F64 = TOLERANCE[torch.float64]


def _case(B, T, depth=2, degree=2, window=3, pos=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g, dtype=dtype)  # noqa: E731
    unit = lambda *s: torch.nn.functional.normalize(r(*s), dim=-1)  # noqa: E731
    ins = dict(q=unit(B, T, H, K), k=unit(B, T, H, K), v=r(B, T, H, K), lr=0.1 * u(B, T, H), log_momentum=-0.2 - u(B, T, H),
               log_decay=-0.2 * u(B, T, H), gamma=u(B, T, H))
    params = {} if degree is None else dict(feature_coef=1 + 0.2 * r(degree + 1))
    Kf, Fh = A.feature_dim(K, degree), 2 * K
    shapes = {"w1": (B, H, Kf, Fh if depth == 2 else K), "w2": (B, H, Fh, K)}
    state = {c + n: 0.3 * r(*shapes[n]) for n in list(shapes)[:depth] for c in ("", "m_", "s_")}
    state.update(buf_k=unit(B, H, window - 1, K), buf_v=r(B, H, window - 1, K), buf_gamma=u(B, H, window - 1))
    state["pos"] = torch.zeros(B, dtype=torch.int64) if pos is None else torch.tensor(pos)
    return ins, params, state


CASES = [(depth, degree, ns) for depth in (1, 2) for degree in (None, 2) for ns in NEWTON_SCHULZ]


@pytest.mark.parametrize("depth,degree,ns", CASES)
@pytest.mark.parametrize("T,pos,window", [(1, [0, 3], 3), (5, [0, 0], 1), (13, [3, 1], 3), (24, [4, 0], 8)])
def test_forms_equal_reference_float64(depth, degree, ns, T, pos, window):
    """chunk and fused recurrent == the reference loop in float64: outputs, final states and the gradients of q, k, v,
    the gates, the feature coefficients and every initial-state tensor. Lengths 1, the chunk b = 5, a prime, not a
    multiple of b; rows starting mid-chunk at different positions; windows 1, 3 and 8 (longer than a chunk)."""
    ins, params, state = _case(2, T, depth, degree, window, pos)
    kw = dict(window=window, chunk_size=5, newton_schulz=ns)
    ref = run(A.naive_recurrent_atlas, ins, params, state, kw)
    for form in (A.fused_recurrent_atlas, A.chunk_atlas):
        compare(run(form, ins, params, state, kw), ref, F64)


@pytest.mark.parametrize("ns", sorted(NEWTON_SCHULZ))
def test_chunk_size_one_is_the_papers_rule(ns):
    """b = 1: S_t = θ_t S_{t−1} + Σ_{i=t−c+1}^{t} γ_i ∇‖M_{t−1} φ(k_i) − v_i‖², M_t = α_t M_{t−1} − η_t NS(S_t), o_t =
    φ(q_t) M_t, written plainly for a linear memory (∇_M ‖φ M − v‖² = 2 φᵀ(φ M − v)), from an empty window."""
    T, c = 9, 3
    ins, params, state = _case(1, T, depth=1, degree=2, window=c)
    state = dict(state, w1=state["m_w1"], buf_k=torch.zeros_like(state["buf_k"]), buf_v=torch.zeros_like(state["buf_v"]),
                 buf_gamma=torch.zeros_like(state["buf_gamma"]))
    o, _ = A.chunk_atlas(**ins, **params, initial_state=state, window=c, chunk_size=1, newton_schulz=ns, output_final_state=True)
    phi = lambda x: A.polynomial_features(x, params["feature_coef"])  # noqa: E731
    for h in range(H):
        M, S = state["m_w1"][0, h], state["s_w1"][0, h]
        for t in range(T):
            at = lambda name: ins[name][0, t, h]  # noqa: E731
            grad = sum(ins["gamma"][0, i, h] * 2 * torch.outer(phi(ins["k"][0, i, h]), phi(ins["k"][0, i, h]) @ M - ins["v"][0, i, h])
                       for i in range(max(0, t - c + 1), t + 1))
            S = at("log_momentum").exp() * S + grad
            step = S if NEWTON_SCHULZ[ns] is None else newton_schulz(S[None], NEWTON_SCHULZ[ns])[0]
            M = at("log_decay").exp() * M - at("lr") * step
            assert_close(o[0, t, h], phi(at("q")) @ M, F64, f"o[{t}, head {h}]")


@pytest.mark.parametrize("split", [1, 6, 8, 16])
def test_split_anywhere_equals_whole(split):
    """The chunk form on [0:t) and then on [t:T) from the returned state (window buffer included) == on [0:T)."""
    ins, params, state = _case(2, 17, window=4, pos=[1, 3])
    kw = dict(window=4, chunk_size=5, feature_coef=params["feature_coef"], output_final_state=True)
    o, fin = A.chunk_atlas(**ins, initial_state=state, **kw)
    o1, s1 = A.chunk_atlas(**{n: t[:, :split] for n, t in ins.items()}, initial_state=state, **kw)
    o2, s2 = A.chunk_atlas(**{n: t[:, split:] for n, t in ins.items()}, initial_state=s1, **kw)
    assert_close(torch.cat([o1, o2], 1), o, F64, "output")
    for n in fin:
        if fin[n].is_floating_point():
            assert_close(s2[n], fin[n], F64, f"state[{n}]")
        else:
            assert torch.equal(s2[n], fin[n]), n


def test_packed_equals_separate():
    """cu_seqlens: sequences back to back, each from its own state (positions, window buffers) == one by one with the
    reference, values and gradients."""
    lengths = (5, 1, 12, 7)
    ins, params, _ = _case(1, sum(lengths), window=3)
    _, _, state = _case(len(lengths), 1, window=3, pos=[0, 2, 4, 1], seed=1)
    kw = dict(window=3, chunk_size=5)
    cu = cu_seqlens_from_lengths(lengths)
    packed = run(A.chunk_atlas, ins, params, state, kw, cu_seqlens=cu)
    for i, (s, L) in enumerate(zip(cu[:-1].tolist(), lengths)):
        one = run(A.naive_recurrent_atlas, {n: t[:, s:s + L] for n, t in ins.items()}, params, {n: t[i:i + 1] for n, t in state.items()}, kw)
        assert_close(packed["o"][:, s:s + L], one["o"], F64, f"output of sequence {i}")
        for n in state:
            got, want = packed[f"final[{n}]"][i:i + 1], one[f"final[{n}]"]
            if want.is_floating_point():
                assert_close(got, want, F64, f"final state[{n}] of sequence {i}")
            else:
                assert torch.equal(got, want)


def test_bad_inputs_raise():
    ins, params, state = _case(1, 4)
    with pytest.raises(ValueError, match="buf_"):
        A.chunk_atlas(**ins, **params, initial_state=state, window=5)
    with pytest.raises(ValueError, match="newton_schulz"):
        A.chunk_atlas(**ins, **params, initial_state=state, window=3, newton_schulz="quintic")
    with pytest.raises(ValueError, match="feature_coef"):
        A.chunk_atlas(**ins, feature_coef=torch.ones(1, dtype=torch.float64), initial_state=state, window=3)
    with pytest.raises(ValueError, match="gamma"):
        A.chunk_atlas(**dict(ins, gamma=ins["gamma"][:, :2]), **params, initial_state=state, window=3)


@pytest.mark.parametrize("ns", ["cubic", "none"])
@pytest.mark.parametrize("depth,degree", [(1, None), (2, 2)])
def test_chunk_equals_reference_float32(depth, degree, ns):
    """The chunk form == the reference loop in float32 (values and gradients), at the table's float32 tolerance; 37
    tokens (a prime), rows starting mid-chunk, a window of 4. (Muon's quintic is left out: its slope 3.4445 per step
    amplifies the rounding of the momentum's small singular values, see the `atlas` layer's docstring; it is exact in
    float64 above.)"""
    ins, params, state = _case(2, 37, depth, degree, window=4, pos=[2, 0], dtype=torch.float32)
    kw = dict(window=4, chunk_size=5, newton_schulz=ns)
    compare(run(A.chunk_atlas, ins, params, state, kw), run(A.naive_recurrent_atlas, ins, params, state, kw), TOLERANCE[torch.float32])


def _recall(n_pairs, reps, alpha, ns, lr=0.25, seed=0):
    """A linear memory (no feature map, window 1, no momentum, chunks of 1) from zero, fed n_pairs orthonormal keys
    with random values, the whole list ``reps`` times -> the retrieval error ‖k M − v‖ / ‖v‖ of every pair (oldest
    first) after the stream."""
    Kd = 8
    g = torch.Generator().manual_seed(seed)
    keys = torch.linalg.qr(torch.randn(Kd, Kd, generator=g, dtype=torch.float64))[0][:n_pairs]
    vals = torch.randn(n_pairs, Kd, generator=g, dtype=torch.float64)
    k, v = keys.repeat(reps, 1)[None, :, None], vals.repeat(reps, 1)[None, :, None]  # (1, T, 1, K)
    T = k.shape[1]
    full = lambda x: torch.full((1, T, 1), x, dtype=torch.float64)  # noqa: E731
    zero = torch.zeros(1, 1, Kd, Kd, dtype=torch.float64)
    state = {"w1": zero, "m_w1": zero, "s_w1": zero, "buf_k": zero[:, :, :0], "buf_v": zero[:, :, :0],
             "buf_gamma": zero[:, :, :0, 0], "pos": torch.zeros(1, dtype=torch.int64)}
    _, fin = A.chunk_atlas(k, k, v, full(lr), full(-50.0), full(float(torch.log1p(torch.tensor(-alpha)))), full(1.0), state,
                           window=1, newton_schulz=ns, chunk_size=1, output_final_state=True)
    return ((keys @ fin["m_w1"][0, 0] - vals).norm(dim=-1) / vals.norm(dim=-1))


@pytest.mark.parametrize("ns", ["none", "cubic"])
def test_memory_learns_with_more_inner_steps(ns):
    """ATLAS's memory learns at test time: the retrieval error of the seen keys falls as the stream repeats them (more
    inner steps). Without Newton–Schulz each step halves a key's error (η = 0.25, ∇ = 2 k (k M − v)); with it the
    orthogonalized step has a fixed size, so the error falls to about η and no further."""
    errs = [float(_recall(4, reps, 0.0, ns).mean()) for reps in (1, 2, 4, 8)]
    if ns == "none":
        assert all(a > b for a, b in zip(errs, errs[1:])) and errs[-1] < 0.01 * errs[0], errs
    else:
        assert errs[-1] < 0.5 * errs[0], errs


def test_forgetting_trades_old_keys_for_new():
    """The retention α_t (log_decay): with α < 1 the oldest pairs fade (α per token since they were written) while the
    newest stay; with α = 1 (no forgetting) the old pairs stay as well as the new ones."""
    keep, forget = _recall(6, 8, 0.0, "none"), _recall(6, 8, 0.1, "none")
    assert keep.max() < 0.01, keep                                   # α = 1: every pair still retrieved
    assert forget[0] > 0.5 and forget[-1] < 0.4, forget             # α = 0.9: the oldest pair fading (0.61), the newest less (0.35)
    assert (forget[1:] <= forget[:-1] + 1e-9).all(), forget         # older pairs are forgotten more
