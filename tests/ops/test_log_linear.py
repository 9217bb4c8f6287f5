"""Log-linear attention's ops (rnnlab/ops/log_linear.py): the decode loop and the chunked form == the per-token
reference that materializes the levels, values and gradients (q, k, v, g, β, λ and the initial state) in float64,
at lengths 1, a prime, not multiples of the chunk, from initial states whose rows sit at different positions (so
different level counts and chunk phases); packed sequences; and the reference itself against the paper's
definition written as one (T, T) matrix: o = (Q Kᵀ ⊙ decay ⊙ Λ) V with Λ_ts = λ_t^(bit_length(t XOR s))."""
from __future__ import annotations

import pytest
import torch

from rnnlab.ops import log_linear as LL
from rnnlab.ops.varlen import cat_rows, cu_seqlens_from_lengths
from rnnlab.testing import assert_close

H, K, V, NL = 2, 3, 4, 12
KINDS = ("simple_gla", "gated_delta_rule")


def ops(kind):
    return tuple(getattr(LL, f"{form}_log_linear_{kind}") for form in ("naive_recurrent", "fused_recurrent", "chunk"))


def inputs(B, T, kind, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    if kind == "gated_delta_rule":
        k = torch.nn.functional.normalize(k, dim=-1)
    ins = dict(q=q, k=k, v=v, g=-0.5 * torch.rand(B, T, H, generator=g, dtype=dtype))
    if kind == "gated_delta_rule":
        ins["beta"] = torch.rand(B, T, H, generator=g, dtype=dtype)
    ins["level_scales"] = torch.rand(B, T, H, NL, generator=g, dtype=dtype) + 0.2
    return ins


def states(prefixes, kind, dtype=torch.float64):
    """One state per row, left by a prefix of its own length, merged as packed runs merge them (levels right-aligned)."""
    ref = ops(kind)[0]
    rows = [ref(**inputs(1, n, kind, seed=50 + n, dtype=dtype), output_final_state=True)[1] if n
            else LL.log_linear_state(1, H, K, V, dtype=dtype) for n in prefixes]
    merged = rows[0]
    for s in rows[1:]:
        merged = {key: cat_rows(merged[key], s[key]) for key in merged}
    return merged


def run(fn, ins, s0, **kw):
    return fn(**ins, initial_state=s0, output_final_state=True, **kw)


def grads(fn, ins, s0, cot, **kw):
    leaves = {n: t.clone().requires_grad_() for n, t in ins.items()}
    S0 = s0["S"].clone().requires_grad_()
    o, s = run(fn, leaves, {"S": S0, "pos": s0["pos"]}, **kw)
    loss = (o * cot["o"]).sum() + (s["S"] * cot["S"]).sum()
    gs = torch.autograd.grad(loss, [*leaves.values(), S0])
    return o, s, dict(zip([*leaves, "S0"], gs))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [1, 5, 17, 37])
@pytest.mark.parametrize("form", ["fused_recurrent", "chunk4", "chunk8", "chunk1"])
def test_forms_equal_reference(kind, T, form):
    """Values and gradients of every input and the initial state, rows at positions 0, 3, 8, 13."""
    ref, fused, chunk = ops(kind)
    fn, kw = (fused, {}) if form == "fused_recurrent" else (chunk, {"chunk_size": int(form[5:])})
    s0 = states((0, 3, 8, 13), kind)
    ins = inputs(4, T, kind, seed=T)
    o_ref, s_ref = run(ref, ins, s0)
    g = torch.Generator().manual_seed(1)
    cot = {"o": torch.randn(o_ref.shape, generator=g, dtype=torch.float64),
           "S": torch.randn(s_ref["S"].shape, generator=g, dtype=torch.float64)}
    o1, s1, g1 = grads(fn, ins, s0, cot, **kw)
    o0, s0_, g0 = grads(ref, ins, s0, cot)
    assert_close(o1, o0, name=f"{form} output")
    assert s1["S"].shape == s0_["S"].shape and torch.equal(s1["pos"], s0_["pos"])
    assert_close(s1["S"], s0_["S"], name=f"{form} final state")
    for n in g0:
        assert_close(g1[n], g0[n], name=f"{form} gradient of {n}")


@pytest.mark.parametrize("kind", KINDS)
def test_float32_chunk_matches_reference(kind):
    """float32 inputs, chunk 16, T = 67 from zero state: within the float32 tolerance."""
    ref, _, chunk = ops(kind)
    ins = inputs(2, 67, kind, seed=3, dtype=torch.float32)
    o0, s0 = run(ref, ins, None)
    o1, s1 = run(chunk, ins, None, chunk_size=16)
    assert_close(o1, o0)
    assert_close(s1["S"], s0["S"])


def test_reference_is_the_hierarchical_matrix():
    """From zero state, simple_gla: o_t = Σ_s λ_t^(bit_length(t XOR s)) e^{G_t − G_s} (scale q_t·k_s) v_s (s <= t)."""
    T = 23
    ins = inputs(1, T, "simple_gla", seed=9)
    o, s = run(ops("simple_gla")[0], ins, None)
    t = torch.arange(T)
    level = LL.bit_length(t[:, None] ^ t[None, :])
    Lam = ins["level_scales"][0].permute(1, 0, 2).gather(-1, level[None].expand(H, T, T))  # (H, T, T)
    G = ins["g"][0].T.cumsum(-1)  # (H, T)
    decay = torch.exp(G[:, :, None] - G[:, None, :]).tril()
    A = torch.einsum("thk,shk->hts", ins["q"][0], ins["k"][0]) * K ** -0.5 * decay * Lam
    expected = torch.einsum("hts,shv->thv", A, ins["v"][0])
    assert_close(o[0], expected)
    assert s["S"].shape[1] == LL.level_count(T) == 5  # levels 5..1: 23 = 10111b, level 4 empty
    assert s["S"][0, 1].abs().max() == 0 and s["S"][0, 0].abs().max() > 0


def test_levels_grow_with_log_t():
    """The final state holds bit_length(T) levels: 0, 1, 2, 2, 3, ..., 7 at T = 0, 1, 2, 3, 4, ..., 100."""
    ref = ops("simple_gla")[0]
    for T in (1, 2, 3, 4, 7, 8, 100):
        _, s = run(ref, inputs(1, T, "simple_gla"), None)
        assert s["S"].shape[1] == T.bit_length()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", ["fused_recurrent", "chunk"])
def test_packed_equals_separate(kind, form):
    """cu_seqlens: N sequences from their own initial states == each run alone through the reference."""
    ref, fused, chunk = ops(kind)
    fn = fused if form == "fused_recurrent" else chunk
    kw = {"chunk_size": 8} if form == "chunk" else {}
    lengths, prefixes = (5, 1, 19, 2), (3, 0, 8, 1)
    parts = [inputs(1, L, kind, seed=20 + i) for i, L in enumerate(lengths)]
    s0 = [states((p,), kind) for p in prefixes]
    sep = [run(ref, p, s) for p, s in zip(parts, s0)]
    merged = s0[0]
    for s in s0[1:]:
        merged = {key: cat_rows(merged[key], s[key]) for key in merged}
    packed = {n: torch.cat([p[n] for p in parts], 1) for n in parts[0]}
    o, s = fn(**packed, initial_state=merged, output_final_state=True, cu_seqlens=cu_seqlens_from_lengths(lengths), **kw)
    for i, (a, (b, sb)) in enumerate(zip(o.split(list(lengths), 1), sep)):
        assert_close(a, b, name=f"sequence {i}")
        n = sb["S"].shape[1]
        assert_close(s["S"][i : i + 1, s["S"].shape[1] - n :], sb["S"], name=f"final state {i}")
        assert s["S"][i, : s["S"].shape[1] - n].abs().max() == 0 if s["S"].shape[1] > n else True


def test_bad_input():
    ins = inputs(1, 9, "simple_gla")
    with pytest.raises(ValueError, match="power of two"):
        LL.chunk_log_linear_simple_gla(**ins, chunk_size=6)
    with pytest.raises(ValueError, match="levels"):
        LL.chunk_log_linear_simple_gla(**{**ins, "level_scales": ins["level_scales"][..., :3]})
