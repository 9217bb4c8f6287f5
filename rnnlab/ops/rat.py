"""RAT: a gated recurrence inside chunks, softmax attention across chunk summaries (Wei et al. 2025).

    q, k, v, g (B, T, H, K) (g in (0, 1)), chunk_size L -> o (B, T, H, K), final state (dict below)

Wei, Yadav, Pascanu, Gulcehre 2025, "RAT: Bridging RNN Efficiency and Attention Accuracy in Language
Modeling" (arXiv 2507.04416; the equations as the authors' post and code write them: the PDF's section and
equation numbers were not available to check). Token t is (c, l): chunk
c = t // L, slot l in it. Per head,

    k̃_{c,l} = g_{c,l} ⊙ k̃_{c,l-1} + (1 − g_{c,l}) ⊙ k_{c,l},   k̃_{c,-1} = 0     (intra-chunk RNN)
    ṽ_{c,l} = g_{c,l} ⊙ ṽ_{c,l-1} + (1 − g_{c,l}) ⊙ v_{c,l},   ṽ_{c,-1} = 0     (the same gate)
    o_{c,l} = softmax([q K̃ᵀ_{<c, L-1}, q k̃ᵀ_{c,l}] · scale) [Ṽ_{<c, L-1}; ṽ_{c,l}]   (inter-chunk attention)

so a query attends over the final states of all earlier chunks and its own running state. Positions are
chunk indices: ``rope(x, index)`` (the caller's rotary, or None for NoPE) rotates q and k̃ by c (the authors'
"inter-chunk RoPE"); it acts after the recurrence, since a rotation does not commute with a per-channel gate.

State (batch in dim 0, float32, float64 for float64 inputs): ``k``, ``v`` (B, H, K) the running k̃, ṽ of the
current chunk; ``sk``, ``sv`` (B, H, C, K) the summaries (final states, keys already rotated) of the completed
chunks, right-aligned: a row's real ones are its last pos // L (rows merged from different lengths pad at the
front, as attention's cache and rnnlab.ops.varlen.cat_rows do); ``pos`` (B,) int64 tokens seen. C grows as T / L.

Forms, one signature (tested against each other, values and gradients):

- ``naive_recurrent_rat``: the specification, row by row and token by token with Python lists of summaries.
- ``fused_recurrent_rat``: the batched decode step (rows at their own positions and chunk phases), looped.
- ``chunk_rat``: the gated recurrence for all tokens at once by ``linear_scan`` (its decay set to 0 at every
  chunk start, which is the reset), the summaries gathered at the chunk ends, and one masked softmax of every
  query over [state summaries, this call's summaries, its own running state]. Not SDPA: the running state is a
  key of its own per query, and merging it needs the log-sum-exp that SDPA does not return; the scores are
  (T, C + T/L), L times fewer than full attention's.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnlab.ops.scan import linear_scan
from rnnlab.ops.varlen import varlen

__all__ = ["naive_recurrent_rat", "fused_recurrent_rat", "chunk_rat", "rat_state"]

Rope = Callable[[Tensor, Tensor], Tensor]  # rope(x (B, T, H, K), index (B, T) int64) -> x rotated by index


def rat_state(batch_size: int, num_heads: int, head_dim: int, device=None, dtype=None) -> dict[str, Tensor]:
    """The state before any token: zero running states, no summaries, pos 0 (float32 unless ``dtype``)."""
    z = torch.zeros(batch_size, num_heads, head_dim, device=device, dtype=dtype or torch.float32)
    s = z.new_zeros(batch_size, num_heads, 0, head_dim)
    return {"k": z, "v": z.clone(), "sk": s, "sv": s.clone(), "pos": torch.zeros(batch_size, dtype=torch.int64, device=device)}


def _prepare(q, k, v, g, chunk_size, scale, initial_state):
    """Checks; the compute dtype (float32, float64 for float64 inputs), the scale and the initial state in it."""
    if q.dim() != 4 or any(t.shape != q.shape for t in (k, v, g)):
        raise ValueError(f"rat expects q, k, v, g of one shape (B, T, H, K), got {[tuple(t.shape) for t in (q, k, v, g)]}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"rat expects chunk_size a positive int, got {chunk_size!r}")
    B, T, H, K = q.shape
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = rat_state(B, H, K, q.device, dt) if initial_state is None else initial_state
    if set(s) != {"k", "v", "sk", "sv", "pos"} or s["k"].shape != (B, H, K) or s["sk"].shape[:2] != (B, H):
        raise ValueError(f"rat expects initial_state {{k, v: (B, H, K) = {(B, H, K)}, sk, sv: (B, H, C, K), pos: (B,)}}, "
                         f"got {({n: tuple(t.shape) for n, t in s.items()})}")
    s = {n: t if n == "pos" else t.to(dt) for n, t in s.items()}
    return dt, K ** -0.5 if scale is None else scale, s


def _rotate(rope: Rope | None, x: Tensor, index: Tensor) -> Tensor:
    return x if rope is None else rope(x, index).to(x.dtype)


# --------------------------------------------------------------------------- reference
@varlen(("q", "k", "v", "g"))
def naive_recurrent_rat(q: Tensor, k: Tensor, v: Tensor, g: Tensor, chunk_size: int, scale: float | None = None,
                        initial_state: dict | None = None, output_final_state: bool = False, rope: Rope | None = None):
    """The specification: each row alone, token by token, the summaries a Python list (module docstring)."""
    dt, scale, s0 = _prepare(q, k, v, g, chunk_size, scale, initial_state)
    L, (B, T, H, K) = chunk_size, q.shape
    outs, finals = [], []
    for b in range(B):
        pos = int(s0["pos"][b])
        C0, n0 = s0["sk"].shape[2], pos // L
        sk = list(s0["sk"][b].unbind(1))[C0 - n0:]  # (H, K) each, oldest first
        sv = list(s0["sv"][b].unbind(1))[C0 - n0:]
        hk, hv = s0["k"][b], s0["v"][b]
        ys = []
        for t, (qt, kt, vt, gt) in enumerate(zip(*(x[b].to(dt).unbind(0) for x in (q, k, v, g)))):
            p = pos + t
            if p % L == 0:  # a new chunk: the recurrence restarts
                hk, hv = torch.zeros_like(hk), torch.zeros_like(hv)
            hk = gt * hk + (1 - gt) * kt
            hv = gt * hv + (1 - gt) * vt
            c = torch.full((1, 1), p // L, dtype=torch.int64, device=q.device)
            qr, kr = (_rotate(rope, x[None, None], c)[0, 0] for x in (qt, hk))
            keys, vals = torch.stack(sk + [kr], 1), torch.stack(sv + [hv], 1)  # (H, n + 1, K)
            w = torch.softmax(torch.einsum("hk,hnk->hn", qr, keys) * scale, -1)
            ys.append(torch.einsum("hn,hnk->hk", w, vals))
            if (p + 1) % L == 0:  # the chunk is complete: its final state becomes a summary
                sk, sv = sk + [kr], sv + [hv]
        outs.append(torch.stack(ys, 0))
        finals.append((hk, hv, sk, sv, pos + T))
    o = torch.stack(outs, 0).to(q.dtype)
    if not output_final_state:
        return o, None
    C = max(len(f[2]) for f in finals)

    def right_aligned(items: list[Tensor]) -> Tensor:  # (H, K) each -> (H, C, K), zeros in front
        pad = [torch.zeros(H, K, dtype=dt, device=q.device)] * (C - len(items))
        return torch.stack(pad + items, 1) if C else torch.zeros(H, 0, K, dtype=dt, device=q.device)

    state = {"k": torch.stack([f[0] for f in finals]), "v": torch.stack([f[1] for f in finals]),
             "sk": torch.stack([right_aligned(f[2]) for f in finals]), "sv": torch.stack([right_aligned(f[3]) for f in finals]),
             "pos": torch.tensor([f[4] for f in finals], dtype=torch.int64, device=q.device)}
    return o, state


# --------------------------------------------------------------------------- decode step
def _step(q: Tensor, k: Tensor, v: Tensor, g: Tensor, s: dict, L: int, scale: float, rope: Rope | None):
    """One token, q, k, v, g (B, H, K), for rows at their own positions -> (o (B, H, K), new state).
    At a chunk end it reads two flags on the host (whether the cache grows: a shape), no read otherwise."""
    pos = s["pos"]
    keep = (pos % L != 0)[:, None, None]  # a row at a chunk start restarts its recurrence
    hk = torch.where(keep, g * s["k"], 0) + (1 - g) * k
    hv = torch.where(keep, g * s["v"], 0) + (1 - g) * v
    c = (pos // L)[:, None]
    qr, kr = (_rotate(rope, x[:, None], c)[:, 0] for x in (q, hk))
    sk, sv = s["sk"], s["sv"]
    C = sk.shape[2]
    real = torch.arange(C, device=q.device) >= C - (pos // L)[:, None]  # (B, C): a row's last pos // L are real
    inter = torch.einsum("bhk,bhck->bhc", qr, sk).masked_fill(~real[:, None], float("-inf"))
    w = torch.softmax(torch.cat([inter, (qr * kr).sum(-1, keepdim=True)], -1) * scale, -1)  # (B, H, C + 1)
    o = torch.einsum("bhc,bhck->bhk", w[..., :C], sv) + w[..., C:] * hv
    done = (pos + 1) % L == 0
    if bool(done.any()):  # rows that complete a chunk append its summary at the end, dropping a front pad entry
        if int(torch.where(done, pos // L + 1, 0).max()) > C:  # a row has no pad entry to spare: one more for all, in front
            sk, sv = F.pad(sk, (0, 0, 1, 0)), F.pad(sv, (0, 0, 1, 0))
        d = done[:, None, None, None]
        sk = torch.where(d, torch.cat([sk[:, :, 1:], kr[:, :, None]], 2), sk)
        sv = torch.where(d, torch.cat([sv[:, :, 1:], hv[:, :, None]], 2), sv)
    return o, {"k": hk, "v": hv, "sk": sk, "sv": sv, "pos": pos + 1}


@varlen(("q", "k", "v", "g"))
def fused_recurrent_rat(q: Tensor, k: Tensor, v: Tensor, g: Tensor, chunk_size: int, scale: float | None = None,
                        initial_state: dict | None = None, output_final_state: bool = False, rope: Rope | None = None):
    """The decode form: the batched step, token by token (unbind once, stack once)."""
    dt, scale, s = _prepare(q, k, v, g, chunk_size, scale, initial_state)
    ys = []
    for qt, kt, vt, gt in zip(*(x.to(dt).unbind(1) for x in (q, k, v, g))):
        o, s = _step(qt, kt, vt, gt, s, chunk_size, scale, rope)
        ys.append(o)
    return torch.stack(ys, 1).to(q.dtype), (s if output_final_state else None)


# --------------------------------------------------------------------------- chunked parallel form
@varlen(("q", "k", "v", "g"))
def chunk_rat(q: Tensor, k: Tensor, v: Tensor, g: Tensor, chunk_size: int, scale: float | None = None,
              initial_state: dict | None = None, output_final_state: bool = False, rope: Rope | None = None):
    """The training form: every token at once (module docstring); rows may start at any position and chunk phase."""
    dt, scale, s = _prepare(q, k, v, g, chunk_size, scale, initial_state)
    L, (B, T, H, K) = chunk_size, q.shape
    q, k, v, g = (x.to(dt) for x in (q, k, v, g))
    pos = s["pos"]
    p = pos[:, None] + torch.arange(T, device=q.device)  # (B, T) absolute positions
    a = torch.where((p % L == 0)[..., None, None], 0, g)  # decay 0 at a chunk start: the reset
    h, h_last = linear_scan(torch.cat([a, a], -1), torch.cat([(1 - g) * k, (1 - g) * v], -1), torch.cat([s["k"], s["v"]], -1))
    hk, hv = h.split(K, -1)  # (B, T, H, K)
    c = p // L
    qr, kr = _rotate(rope, q, c), _rotate(rope, hk, c)
    # this call's summaries: row b's m-th chunk end is token m L + L - 1 - r_b (r = pos mod L), real below T
    r, n0 = pos % L, pos // L
    M = (int(r.max()) + T) // L
    ends = torch.arange(M, device=q.device) * L + L - 1 - r[:, None]  # (B, M)
    idx = ends.clamp(0, T - 1)[..., None, None].expand(B, M, H, K)
    new_k, new_v = kr.gather(1, idx).transpose(1, 2), hv.gather(1, idx).transpose(1, 2)  # (B, H, M, K)
    keys, vals = torch.cat([s["sk"], new_k], 2), torch.cat([s["sv"], new_v], 2)  # (B, H, C0 + M, K)
    C0 = s["sk"].shape[2]
    t = torch.arange(T, device=q.device)
    seen = torch.cat([(torch.arange(C0, device=q.device) >= C0 - n0[:, None])[:, None].expand(B, T, C0),  # a row's real ones
                      ends[:, None, :] < t[None, :, None]], -1)  # a chunk that ended before the query  (B, T, C0 + M)
    inter = torch.einsum("bthk,bhck->bhtc", qr, keys).masked_fill(~seen[:, None], float("-inf"))
    own = torch.einsum("bthk,bthk->bht", qr, kr)[..., None]
    w = torch.softmax(torch.cat([inter, own], -1) * scale, -1)  # (B, H, T, C0 + M + 1)
    o = torch.einsum("bhtc,bhck->bthk", w[..., :-1], vals) + w[..., -1].transpose(1, 2)[..., None] * hv
    if not output_final_state:
        return o.to(q.dtype), None
    # the real summaries of row b are entries [C0 - n0_b, C0 + n_new_b) of keys: right-align them in C entries
    n_new = (r + T) // L
    C = int((n0 + n_new).max())
    src = C0 + n_new[:, None] - C + torch.arange(C, device=q.device)  # (B, C)
    real = (src >= C0 - n0[:, None])[:, None, :, None]
    pick = src.clamp(min=0)[:, None, :, None].expand(B, H, C, K)
    state = {"k": h_last[..., :K], "v": h_last[..., K:], "sk": torch.where(real, keys.gather(2, pick), 0),
             "sv": torch.where(real, vals.gather(2, pick), 0), "pos": pos + T}
    return o.to(q.dtype), state
