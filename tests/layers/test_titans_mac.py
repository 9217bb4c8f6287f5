"""Titans MAC (rnnlab/layers/titans_mac.py): the segment-at-a-time parallel form and the token step against the paper's
eqs. 21-25 written plainly, one token at a time (a list of the segment's keys and values, a softmax over them, the
retrieval from the memory as it was at the segment's start, kept here by the reference itself), in float64: outputs,
final states and the gradients of x, the initial state and every parameter; lengths 1, a prime, several segments;
rows starting mid-segment at different positions."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import rnnlab
from rnnlab.layers.parts import rotary, rotary_cos_sin
from rnnlab.ops.delta import l2norm
from rnnlab.testing import TOLERANCE, assert_close

D, H, C, NP = 16, 2, 5, 2
F64 = TOLERANCE[torch.float64]


def _mixer(**kw):
    torch.manual_seed(0)
    m = rnnlab.create_mixer("titans_mac", D, num_heads=H, segment_size=C, persistent_tokens=NP, **kw).double()
    with torch.no_grad():  # live gates and memory (the default θ ≈ 0.1 barely moves it)
        m.memory.gate_proj.bias[:H].fill_(1.0)
    return m


def _reference(m, x, state):
    """One row, token by token, from the equations: x (1, T, D), state (one row) -> (y (1, T, D), final memory state)."""
    hd = D // H
    mem = {n[4:]: t for n, t in state.items() if n.startswith("mem_")}
    anchor = {n: mem[n] for n in ("w1", "w2") if n in mem}  # M_{n−1}: the memory when the segment started
    pos = int(mem["pos"][0])
    keys = [(state["seg_k"][0, :, i], state["seg_v"][0, :, i]) for i in range(2 * pos)]  # (H, hd) each
    conv = state["ret_conv"]
    split = lambda t: t.reshape(H, hd)  # noqa: E731
    pers = [split(t) for t in m.qkv(m.persistent)[:, D:].chunk(2, -1)[0]], [split(t) for t in m.qkv(m.persistent)[:, 2 * D:]]
    ys = []
    for t in range(x.shape[1]):
        xt = x[:, t:t + 1]
        q, conv = m.retrieve_conv(m.retrieve_proj(xt), conv)
        q = l2norm(q.reshape(H, hd))  # fla's l2norm (eps 1e-6), as the layer and titans.py
        hid = F.gelu(torch.einsum("hk,hkf->hf", q, anchor["w1"][0]), approximate="tanh")  # eq. 21: h = M*_{n−1}(q)
        h = torch.einsum("hf,hfv->hv", hid, anchor["w2"][0]).reshape(1, 1, D)
        cos, sin = rotary_cos_sin(torch.tensor([pos]), hd)
        rot = lambda v: rotary(v.reshape(1, 1, H, hd), cos, sin).reshape(H, hd).double()  # noqa: E731
        xq, xk, xv = m.qkv(xt)[0, 0].chunk(3)
        _, hk, hv = m.qkv(h)[0, 0].chunk(3)
        keys += [(rot(hk), split(hv)), (rot(xk), split(xv))]                                # eq. 22: [p ‖ h ‖ S], causal
        K = torch.stack(pers[0] + [k for k, _ in keys], 1)
        V = torch.stack(pers[1] + [v for _, v in keys], 1)
        att = torch.softmax(torch.einsum("hd,hnd->hn", rot(xq), K) / math.sqrt(hd), -1)
        y = m.out(torch.einsum("hn,hnd->hd", att, V).reshape(1, 1, D))                      # eq. 23
        o, mem = m.memory.step(y, mem)                                                        # eqs. 24-25: update, read
        ys.append(m.attn_norm(y) * torch.sigmoid(m.memory_norm(o)))
        pos += 1
        if pos == C:  # the segment ends: the next one retrieves from the memory as it is now, its buffer empty
            pos, keys, anchor = 0, [], {n: mem["m_" + n] for n in anchor}
    return torch.cat(ys, 1), mem


@pytest.mark.parametrize("T", [1, 7, 13])
def test_forms_equal_the_equations_float64(T):
    """parallel (segments) and step (tokens) == the reference: outputs, the memory's final state and the gradients of
    x, the initial state (the memory, the convs, the segment buffers) and every parameter; row 0 starts mid-segment
    (after 3 tokens), row 1 at a segment start after 5."""
    m = _mixer()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, T, D, generator=g, dtype=torch.float64)
    with torch.no_grad():
        pre = [m(torch.randn(1, L, D, generator=g, dtype=torch.float64))[1] for L in (3, 5)]
    leaves = lambda s: {n: t.clone().requires_grad_(t.is_floating_point()) for n, t in s.items()}  # noqa: E731
    cot = torch.randn(2, T, D, generator=g, dtype=torch.float64)

    def grads(y, states, x):
        inputs = [x] + [t for s in states for t in s.values() if t.requires_grad] + list(m.parameters())
        return torch.autograd.grad((y * cot).sum(), inputs, allow_unused=True, materialize_grads=True)

    ref_states = [leaves(s) for s in pre]
    xr = x.clone().requires_grad_()
    outs = [_reference(m, xr[i:i + 1], ref_states[i]) for i in range(2)]
    y_ref = torch.cat([o for o, _ in outs])
    g_ref = grads(y_ref, ref_states, xr)
    for form in ("parallel", "step"):
        states = [leaves(s) for s in pre]
        xf = x.clone().requires_grad_()
        merged = {n: torch.cat([s[n] for s in states]) for n in states[0]}
        if form == "parallel":
            y, fin = m(xf, merged)
        else:
            ys, fin = [], merged
            for t in range(T):
                yt, fin = m(xf[:, t:t + 1], fin)
                ys.append(yt)
            y = torch.cat(ys, 1)
        assert_close(y, y_ref, F64, f"{form}: output")
        for n, t in outs[0][1].items():
            got, want = fin["mem_" + n], torch.cat([outs[0][1][n], outs[1][1][n]])
            if want.is_floating_point():
                assert_close(got, want, F64, f"{form}: final memory state[{n}]")
            else:
                assert torch.equal(got, want), n
        for i, (a, b) in enumerate(zip(grads(y, states, xf), g_ref)):
            assert_close(a, b, F64, f"{form}: gradient {i}")


def test_persistent_tokens_matter_and_can_be_off():
    """The persistent tokens change the output (their keys and values enter every query's softmax); without them the
    mixer still conforms (tests/conformance checks the registry's instance, which has them)."""
    from tests.conformance.checks import check_parallel_equals_step, check_split_equals_full, factory

    m = _mixer()
    x = torch.randn(1, 9, D, dtype=torch.float64)
    y, _ = m(x)
    with torch.no_grad():
        m.persistent.mul_(3.0)
    assert (m(x)[0] - y).abs().max() > 1e-3
    check_parallel_equals_step(factory("titans_mac", persistent_tokens=0))
    check_split_equals_full(factory("titans_mac", persistent_tokens=0, segment_size=1))
