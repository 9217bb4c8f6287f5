"""RWKV-7 "Goose" time mixing: the generalized delta rule with a diagonal-plus-rank-one transition
(Peng et al. 2025, "RWKV-7 "Goose" with Expressive Dynamic State Evolution", eq. 16-19).

In the paper's orientation (state S of size V×K, acting on keys from the right):

    S_t = S_{t-1} (Diag(w_t) + a_t b_tᵀ) + v_t k_tᵀ,      o_t = S_t (scale · r_t)

with w_t = exp(log_w_t) ∈ (0, 1] per key channel. The RWKV-7 layer uses a = −κ̂ (normalized
removal key) and b = κ̂ ⊙ a_ICLR; the op takes any a, b.

Shapes (sequence-first, flash-linear-attention argument order with q = r):
q (receptance r), k, w (log-decay, ≤ 0), a, b: (B, T, H, K); v: (B, T, H, V).
The state tensor is stored as (B, H, K, V), i.e. Sᵀ, like every other matrix-state op in rnnlab
(and like fla's rwkv7 kernels): in that layout the update reads
Sᵀ_t = Diag(w_t) Sᵀ_{t-1} + b_t (a_tᵀ Sᵀ_{t-1}) + k_t v_tᵀ and o_t = S_tᵀᵀ r_t.
``scale`` defaults to 1 (RWKV-7 does not scale r).

Forms: ``naive_recurrent_rwkv7`` (the specification: the V×K state and the K×K transition built
explicitly), ``fused_recurrent_rwkv7`` (rank-one updates, O(KV) per token, one fused matmul per
step) and ``chunk_rwkv7`` (see its docstring).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["chunk_rwkv7", "fused_recurrent_rwkv7", "naive_recurrent_rwkv7"]


def _check(q: Tensor, k: Tensor, v: Tensor, w: Tensor, a: Tensor, b: Tensor, initial_state: Tensor | None) -> None:
    """q, k, w, a, b (B, T, H, K); v (B, T, H, V); initial_state (B, H, K, V)."""
    for name, t in (("q", q), ("k", k), ("v", v), ("w", w), ("a", a), ("b", b)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor")
    if q.dim() != 4:
        raise ValueError(f"q must be (B, T, H, K), got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("w", w), ("a", a), ("b", b)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must be (B, T, H, K) = {tuple(q.shape)} like q, got {tuple(t.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be (B, T, H, V) with (B, T, H) = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    B, T, H, K = q.shape
    if initial_state is not None and tuple(initial_state.shape) != (B, H, K, v.shape[-1]):
        raise ValueError(f"initial_state must be (B, H, K, V) = {(B, H, K, v.shape[-1])}, got {tuple(initial_state.shape)}")


def naive_recurrent_rwkv7(q, k, v, w, a, b, scale=None, initial_state=None, output_final_state=False):
    """q, k, w, a, b (B, T, H, K), v (B, T, H, V), initial_state (B, H, K, V) or None
    -> (o (B, T, H, V) in v's dtype, final_state (B, H, K, V) float32 or None).

    The specification, in the paper's orientation: S (V×K) ← S (Diag(e^{w_t}) + a_t b_tᵀ) + v_t k_tᵀ,
    o_t = S (scale r_t), with the K×K transition built explicitly."""
    _check(q, k, v, w, a, b, initial_state)
    B, T, H, K = q.shape
    scale = 1.0 if scale is None else scale
    S = q.new_zeros(B, H, v.shape[-1], K, dtype=torch.float32) if initial_state is None else initial_state.float().transpose(-1, -2)
    os = []
    for rt, kt, vt, wt, at, bt in zip(*(t.float().unbind(1) for t in (q, k, v, w, a, b))):
        transition = torch.diag_embed(wt.exp()) + at[..., :, None] * bt[..., None, :]  # (B, H, K, K)
        S = S @ transition + vt[..., :, None] * kt[..., None, :]  # (B, H, V, K)
        os.append((S @ (scale * rt)[..., None]).squeeze(-1))
    o = torch.stack(os, 1).to(v.dtype)
    return o, (S.transpose(-1, -2).contiguous() if output_final_state else None)


def fused_recurrent_rwkv7(q, k, v, w, a, b, scale=None, initial_state=None, output_final_state=False):
    """Same signature and shapes as :func:`naive_recurrent_rwkv7`. Rank-one form in the stored
    (K×V) layout, element-wise work hoisted out of the loop; per step one multiply and one
    (K×2)·(2×V) matmul: Sᵀ ← e^{w}⊙Sᵀ + [b k]·[aᵀSᵀ; vᵀ], then o = (Sᵀ)ᵀ r."""
    _check(q, k, v, w, a, b, initial_state)
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = 1.0 if scale is None else scale
    S = q.new_zeros(B * H, K, V, dtype=torch.float32) if initial_state is None else initial_state.float().reshape(B * H, K, V)

    def steps(t):  # (B, T, H, X) -> T tensors (B·H, X)
        return t.float().transpose(1, 2).reshape(B * H, T, -1).unbind(1)

    bk = torch.stack([b.float(), k.float()], -1)  # (B, T, H, K, 2)
    bk = bk.transpose(1, 2).reshape(B * H, T, K, 2).unbind(1)
    decay = w.float().exp()[..., None]  # (B, T, H, K, 1)
    decay = decay.transpose(1, 2).reshape(B * H, T, K, 1).unbind(1)
    os = []
    for rt, vt, at, bkt, dt in zip(steps(q * scale), steps(v), steps(a), bk, decay):
        aS = (at[:, None, :] @ S)  # (BH, 1, V)
        S = torch.baddbmm(S * dt, bkt, torch.cat([aS, vt[:, None, :]], 1))
        os.append(rt[:, None, :] @ S)  # (BH, 1, V)
    o = torch.cat(os, 1).reshape(B, H, T, V).transpose(1, 2).to(v.dtype)
    return o, (S.reshape(B, H, K, V) if output_final_state else None)


def chunk_rwkv7(q, k, v, w, a, b, scale=None, initial_state=None, output_final_state=False):
    """Same signature and shapes as :func:`naive_recurrent_rwkv7`.

    Fast form for training. A chunkwise WY-like form for the diagonal-plus-rank-one transition
    is not implemented yet: this is the fused recurrent form (documented simplification).
    """
    return fused_recurrent_rwkv7(q, k, v, w, a, b, scale, initial_state, output_final_state)
