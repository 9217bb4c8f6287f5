"""RAT's op (rnnlab/ops/rat.py): the decode loop and the chunked form == the row-by-row reference, values and
gradients (q, k, v, g and every initial-state tensor) in float64, at lengths 1, a prime, not multiples of the
chunk, from initial states whose rows sit at different positions and chunk phases; packed sequences; and the
two ends the paper names: L = 1 is causal softmax attention, one chunk is the gated recurrence alone."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnlab.ops.rat import chunk_rat, fused_recurrent_rat, naive_recurrent_rat, rat_state
from rnnlab.ops.varlen import cat_rows, cu_seqlens_from_lengths
from rnnlab.testing import assert_close

H, K = 2, 4
FORMS = [fused_recurrent_rat, chunk_rat]


def rope(x, index):
    """Rotary by the chunk index, in x's dtype (the layer passes rnnlab.layers.parts.rotary)."""
    inv = 10000.0 ** (-torch.arange(0, x.shape[-1], 2, dtype=x.dtype) / x.shape[-1])
    ang = index.to(x.dtype)[..., None] * inv
    c, s = ang.cos()[..., None, :], ang.sin()[..., None, :]
    x1, x2 = x.chunk(2, -1)
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], -1)


def inputs(B, T, dtype=torch.float64):
    q, k, v = (torch.randn(B, T, H, K, dtype=dtype) for _ in range(3))
    return q, k, v, torch.rand(B, T, H, K, dtype=dtype) * 0.98 + 0.01


def states(prefixes, L, dtype=torch.float64):
    """One state per row, left by a prefix of its own length (rows at different positions and chunk phases),
    merged as packed runs merge them (summaries right-aligned, zeros in front)."""
    rows = [naive_recurrent_rat(*inputs(1, n, dtype), L, initial_state=None, output_final_state=True, rope=rope)[1]
            if n else rat_state(1, H, K, dtype=dtype) for n in prefixes]
    merged = rows[0]
    for r in rows[1:]:
        merged = {key: cat_rows(merged[key], r[key]) for key in merged}
    return merged


def run(fn, args, s0, L, with_rope=True):
    o, s = fn(*args, L, initial_state=s0, output_final_state=True, rope=rope if with_rope else None)
    return o, s


def real(s, L):
    """(B, 1, C, 1): the real summaries of each row (its last pos // L); the rest is padding, whose values are
    zeros and whose gradients no form promises (a cotangent on padding is not one on the function)."""
    C = s["sk"].shape[2]
    return (torch.arange(C) >= C - s["pos"][:, None] // L)[:, None, :, None]


def loss_of(o, s, cot):
    return (o * cot["o"]).sum() + sum((s[key] * cot[key]).sum() for key in ("k", "v", "sk", "sv"))


@pytest.mark.parametrize("fn", FORMS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("T,L,prefixes", [(1, 4, (0, 3)), (7, 4, (0, 5)), (13, 4, (6, 10)), (13, 1, (2, 3)),
                                          (5, 16, (0, 3)), (23, 5, (4, 17))])
def test_equals_reference_values_and_gradients(fn, T, L, prefixes):
    torch.manual_seed(T * 100 + L)
    args = inputs(len(prefixes), T)
    s0 = states(prefixes, L)
    leaves = [*args, *(s0[key] for key in ("k", "v", "sk", "sv"))]
    for t in leaves:
        t.requires_grad_(True)
    o_ref, s_ref = run(naive_recurrent_rat, args, s0, L)
    o, s = run(fn, args, s0, L)
    assert_close(o, o_ref, name="o")
    for key in s_ref:
        assert s[key].shape == s_ref[key].shape, key
        assert torch.equal(s[key], s_ref[key]) if key == "pos" else assert_close(s[key], s_ref[key], name=key) is None
    cot = {"o": torch.randn_like(o), **{key: torch.randn_like(s_ref[key]) for key in ("k", "v", "sk", "sv")}}
    cot["sk"], cot["sv"] = cot["sk"] * real(s_ref, L), cot["sv"] * real(s_ref, L)
    g_ref = torch.autograd.grad(loss_of(o_ref, s_ref, cot), leaves, allow_unused=True, materialize_grads=True)
    g = torch.autograd.grad(loss_of(o, s, cot), leaves, allow_unused=True, materialize_grads=True)
    for name, leaf, a, b in zip(("q", "k", "v", "g", "s.k", "s.v", "s.sk", "s.sv"), leaves, g, g_ref):
        if name in ("s.sk", "s.sv"):  # the real summaries only; an empty cache has no gradient
            if not leaf.numel():
                continue
            a, b = a * real(s0, L), b * real(s0, L)
        assert_close(a, b, name=f"d{name}")


@pytest.mark.parametrize("fn", FORMS, ids=lambda f: f.__name__)
def test_float32_equals_reference(fn):
    args = inputs(2, 19, torch.float32)
    s0 = states((3, 8), 4, torch.float32)
    o_ref, s_ref = run(naive_recurrent_rat, args, s0, 4)
    o, s = run(fn, args, s0, 4)
    assert o.dtype == torch.float32 and s["sk"].dtype == torch.float32
    assert_close(o, o_ref, name="o")
    assert_close(s["sk"], s_ref["sk"], name="sk")


@pytest.mark.parametrize("fn", [naive_recurrent_rat, *FORMS], ids=lambda f: f.__name__)
def test_chunk_of_one_is_causal_softmax_attention(fn):
    """L = 1: every token is a chunk, k̃ = (1 − g) k, and a query attends over all tokens so far."""
    q, k, v, g = inputs(2, 11)
    o, _ = fn(q, k, v, g, 1)
    kk, vv = (1 - g) * k, (1 - g) * v
    ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, kk, vv)), is_causal=True).transpose(1, 2)
    assert_close(o, ref)


@pytest.mark.parametrize("fn", [naive_recurrent_rat, *FORMS], ids=lambda f: f.__name__)
def test_one_chunk_is_the_gated_recurrence(fn):
    """T <= L from position 0: no summaries, the softmax has one entry, o_t = ṽ_t (the RNN alone)."""
    q, k, v, g = inputs(2, 9)
    o, s = fn(q, k, v, g, 16, output_final_state=True, rope=rope)
    h, ref = torch.zeros(2, H, K, dtype=torch.float64), []
    for t in range(9):
        h = g[:, t] * h + (1 - g[:, t]) * v[:, t]
        ref.append(h)
    assert_close(o, torch.stack(ref, 1))
    assert s["sk"].shape == (2, H, 0, K) and s["pos"].tolist() == [9, 9]


@pytest.mark.parametrize("fn", [naive_recurrent_rat, *FORMS], ids=lambda f: f.__name__)
def test_packed_equals_separate(fn):
    lengths, L = (5, 1, 13, 2, 9), 4
    cu = cu_seqlens_from_lengths(lengths)
    args = inputs(1, sum(lengths))
    s0 = states((0, 3, 6, 4, 9), L)
    leaves = [*args, s0["sk"], s0["k"]]
    for t in leaves:
        t.requires_grad_(True)
    o, s = fn(*args, L, initial_state=s0, output_final_state=True, rope=rope, cu_seqlens=cu)
    outs, finals = [], []
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        row = {key: t[i:i + 1] for key, t in s0.items()}
        oi, si = naive_recurrent_rat(*(x[:, a:b] for x in args), L, initial_state=row, output_final_state=True, rope=rope)
        outs.append(oi)
        finals.append(si)
    assert_close(o, torch.cat(outs, 1), name="o")
    for i, si in enumerate(finals):
        n = si["sk"].shape[2]
        assert not s["sk"][i, :, : s["sk"].shape[2] - n].any()  # zeros in front of a row's real summaries
        for key in si:
            got = s[key][i:i + 1, :, s[key].shape[2] - n:] if key in ("sk", "sv") else s[key][i:i + 1]
            assert torch.equal(got, si[key]) if key == "pos" else assert_close(got, si[key], name=key) is None
    cot = torch.randn_like(o)
    g = torch.autograd.grad((o * cot).sum(), leaves)
    g_ref = torch.autograd.grad((torch.cat(outs, 1) * cot).sum(), leaves)
    for a, b in zip(g, g_ref):
        assert_close(a, b)


def test_bad_input():
    q, k, v, g = inputs(1, 5)
    with pytest.raises(ValueError, match="one shape"):
        chunk_rat(q, k[..., :2], v, g, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        fused_recurrent_rat(q, k, v, g, 0)
