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
step) and ``chunk_rwkv7``, the chunkwise WY-like form for training (see its docstring).
"""
from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.ops.chunk import ChunkPass, UnitLowerSolve, chunk_major, decay_gram, unchunk
from rnnlab.ops.varlen import varlen

__all__ = ["chunk_rwkv7", "fused_recurrent_rwkv7", "naive_recurrent_rwkv7"]

_TIME = ("q", "k", "v", "w", "a", "b")  # the time-major arguments (rnnlab.ops.varlen)
_FLA_RECURRENT = ("head_first", "reverse")


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


@varlen(_TIME, fla=_FLA_RECURRENT)
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


@varlen(_TIME, fla=_FLA_RECURRENT)
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


@varlen(_TIME, fla=("head_first", "cu_seqlens_cpu", "chunk_indices", "cp_context", "safe_gate", "lower_bound", "disable_recompute"))
def chunk_rwkv7(q, k, v, w, a, b, scale=None, initial_state=None, output_final_state=False, chunk_size=16):
    """Same signature and shapes as :func:`naive_recurrent_rwkv7`, plus ``chunk_size``.

    Chunkwise WY-like form of the diagonal-plus-rank-one recurrence, in the stored layout
    Sᵀ_i = D_i Sᵀ_{i-1} + b_i u_iᵀ + k_i v_iᵀ with u_i = S_{i-1} a_i. With Γ_i = Σ_{j≤i} log w_j
    (per key channel, inside a chunk, Γ_0 = 0) and entry state S₀ᵀ:
        Sᵀ_i = e^{Γ_i} ⊙ S₀ᵀ + Σ_{j≤i} (e^{Γ_i−Γ_j} ⊙ b_j) u_jᵀ + (e^{Γ_i−Γ_j} ⊙ k_j) v_jᵀ
        (I − M_ab) U = M_ak V + Ã S₀ᵀ,   Ã_i = a_i ⊙ e^{Γ_{i-1}},  M_xy[i, j] = Σ_c x_ic y_jc e^{Γ_{i-1,c}−Γ_{j,c}} (j < i)
    so with T = (I − M_ab)⁻¹ (one blocked unit-lower-triangular inverse per chunk): U = T M_ak V + T Ã S₀ᵀ;
        O = (r ⊙ e^{Γ}) S₀ᵀ + N_rb U + N_rk V,    N_xy[i, j] = Σ_c x_ic y_jc e^{Γ_{i,c}−Γ_{j,c}} (j ≤ i)
        S_Cᵀ = e^{Γ_C} ⊙ S₀ᵀ + (b ⊙ e^{Γ_C−Γ})ᵀ U + (k ⊙ e^{Γ_C−Γ})ᵀ V.
    The pass over chunks is the delta rule's (rnnlab.ops.chunk.ChunkPass, per-key decay); the four
    decay-weighted Gram matrices use the midpoint factorization (rnnlab.ops.chunk.decay_gram). Gradients:
    autograd plus the delta rule's hand-written backward of the solve and the chunk pass. Computed
    in float32 whatever the input dtype (as the delta rule: bfloat16 matmuls were slower here).
    """
    _check(q, k, v, w, a, b, initial_state)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    scale = 1.0 if scale is None else scale
    N = -(-T // C)
    # chunk-major float32 (N, B, H, C, K or V); padded steps: zero inputs and log w = 0, so the state passes through
    r, kc, vc, lw, ac, bc = (chunk_major(t, C).view(N, B, H, C, -1) for t in (q, k, v, w, a, b))
    G = lw.cumsum(-2)  # Γ_i, inclusive
    Gex = G - lw  # Γ_{i-1}, exclusive
    GC = G[..., -1:, :]  # (N, B, H, 1, K)
    r = r * scale
    M_ab = decay_gram(ac, bc, Gex, G, False)
    M_ak = decay_gram(ac, kc, Gex, G, False)
    N_rb = decay_gram(r, bc, G, G, True)
    N_rk = decay_gram(r, kc, G, G, True)
    to_end = torch.exp(GC - G)  # (N, B, H, C, K), ≤ 1
    X = UnitLowerSolve.apply(-M_ab, torch.cat([M_ak @ vc, ac * torch.exp(Gex)], -1))  # (N, B, H, C, V + K)
    E = (kc * to_end).mT @ vc  # (N, B, H, K, V)
    S0 = q.new_zeros(B, H, K, V, dtype=torch.float32) if initial_state is None else initial_state.float()
    U, S = ChunkPass.apply(X[..., :V].contiguous(), -X[..., V:], (bc * to_end).contiguous(), torch.exp(GC).mT, E, S0)
    o = (r * torch.exp(G)) @ S[:-1] + N_rb @ U + N_rk @ vc  # (N, B, H, C, V)
    o = unchunk(o.flatten(0, 2), B, H, T).to(v.dtype)
    return o, (S[-1] if output_final_state else None)
