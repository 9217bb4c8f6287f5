"""RWKV-6 ("Finch") time-mix recurrence (Peng et al. 2024, "Eagle and Finch: RWKV with
Matrix-Valued States and Dynamic Recurrence", Section 4, the wkv_t of eqs. 16-19).

    r, k (B, T, H, K), v (B, T, H, V), w (B, T, H, K) log-decay (<= 0), u (H, K)
    -> o (B, T, H, V), final_state (B, H, K, V) float32 or None

Per head, S_0 = initial_state (zeros when None):

    o_t = (S_{t-1} + Diag(u) k_t v_t^T)^T (scale * r_t)      (read the state before the update,
    S_t = Diag(exp(w_t)) S_{t-1} + k_t v_t^T                    the current token through the bonus u)

``scale=None`` means K^-1/2, as flash-linear-attention's ``chunk_rwkv6`` /
``fused_recurrent_rwkv6`` default; the RWKV-6 layer passes ``scale=1.0`` (the paper has
no scaling). ``w`` is the log of the per-channel decay, i.e. the paper's -exp(w_raw).

Forms (same signature): ``naive_recurrent_rwkv6`` (the specification, a loop),
``fused_recurrent_rwkv6`` (the same loop with the bonus split off and computed for all t
at once; the decoding path), ``chunk_rwkv6`` (chunkwise parallel: GLA's chunkwise form on the
sequence shifted by one step, see :func:`chunk_rwkv6`; its numerics, safe for any decay, are
those of :func:`rnnlab.ops.gla.chunk_gla`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnlab.ops.chunk import acc_dtype
from rnnlab.ops.gla import chunk_gla
from rnnlab.ops.varlen import varlen

__all__ = ["chunk_rwkv6", "fused_recurrent_rwkv6", "naive_recurrent_rwkv6"]


def _check(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, initial_state: Tensor | None, chunk_size: int | None = None) -> None:
    if r.dim() != 4:
        raise ValueError(f"r must be (B, T, H, K), got shape {tuple(r.shape)}")
    B, T, H, K = r.shape
    for name, t in (("k", k), ("w", w)):
        if t.shape != r.shape:
            raise ValueError(f"{name} must have the shape of r (B, T, H, K) = {tuple(r.shape)}, got {tuple(t.shape)}")
    if v.dim() != 4 or v.shape[:3] != r.shape[:3]:
        raise ValueError(f"v must be (B, T, H, V) with (B, T, H) = {tuple(r.shape[:3])}, got {tuple(v.shape)}")
    if u.shape != (H, K):
        raise ValueError(f"u must be (H, K) = {(H, K)}, got {tuple(u.shape)}")
    for name, t in (("r", r), ("k", k), ("v", v), ("w", w), ("u", u)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if initial_state is not None and tuple(initial_state.shape) != (B, H, K, v.shape[-1]):
        raise ValueError(f"initial_state must be (B, H, K, V) = {(B, H, K, v.shape[-1])}, got {tuple(initial_state.shape)}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


@varlen(("r", "k", "v", "w"), fla=("head_first", "reverse"))
def naive_recurrent_rwkv6(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """r, k, w (B, T, H, K), v (B, T, H, V), u (H, K) -> (o (B, T, H, V), S (B, H, K, V) or None).

    Reference loop: the recurrence of the module docstring as written, in float32."""
    _check(r, k, v, w, u, initial_state)
    B, T, H, K = r.shape
    V = v.shape[-1]
    acc = acc_dtype(r)
    scale = K ** -0.5 if scale is None else scale
    S = r.new_zeros(B, H, K, V, dtype=acc) if initial_state is None else initial_state.to(acc)
    uf = u.to(acc)
    os = []
    for rt, kt, vt, wt in zip(r.to(acc).unbind(1), k.to(acc).unbind(1), v.to(acc).unbind(1), w.to(acc).unbind(1)):
        kv = kt[..., :, None] * vt[..., None, :]  # (B, H, K, V)
        os.append(torch.einsum("bhkv,bhk->bhv", S + uf[..., None] * kv, scale * rt))
        S = torch.exp(wt)[..., None] * S + kv
    return torch.stack(os, 1).to(v.dtype), (S if output_final_state else None)


@varlen(("r", "k", "v", "w"), fla=("head_first", "reverse"))
def fused_recurrent_rwkv6(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """r, k, w (B, T, H, K), v (B, T, H, V), u (H, K) -> (o (B, T, H, V), S (B, H, K, V) or None).

    The recurrence with the bonus term (r_t . (u * k_t)) v_t computed for all t at once
    and a two-op state update per step; the decoding path (T == 1) of the layer."""
    _check(r, k, v, w, u, initial_state)
    B, T, H, K = r.shape
    V = v.shape[-1]
    acc = acc_dtype(r)
    scale = K ** -0.5 if scale is None else scale
    S = r.new_zeros(B, H, K, V, dtype=acc) if initial_state is None else initial_state.to(acc)
    rf, kf, vf = r.to(acc) * scale, k.to(acc), v.to(acc)
    bonus = (rf * u.to(acc) * kf).sum(-1, keepdim=True) * vf  # (B, T, H, V)
    decay = torch.exp(w.to(acc))
    os = []
    for rt, kt, vt, dt in zip(rf.unbind(1), kf.unbind(1), vf.unbind(1), decay.unbind(1)):
        os.append(torch.einsum("bhkv,bhk->bhv", S, rt))
        S = torch.addcmul(dt[..., None] * S, kt[..., :, None], vt[..., None, :])
    o = torch.stack(os, 1) + bonus
    return o.to(v.dtype), (S if output_final_state else None)


@varlen(("r", "k", "v", "w"), fla=("head_first", "cu_seqlens_cpu", "chunk_indices"))
def chunk_rwkv6(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """r, k, w (B, T, H, K), v (B, T, H, V), u (H, K) -> (o (B, T, H, V), S (B, H, K, V) or None).

    Chunkwise-parallel RWKV-6 through :func:`rnnlab.ops.gla.chunk_gla`. Reading the state before
    the update is GLA's read-out one step earlier with the query one step ahead: on the sequence
    of T + 1 steps with queries (r_1, ..., r_T, 0), keys (0, k_1, ..., k_T), values (0, v_1, ...,
    v_T) and log-decays (0, w_1, ..., w_T), GLA's output at step j is r_{j+1}^T S_j = o_{j+1} and
    its final state is S_T. The bonus (scale r_t . (u * k_t)) v_t is added for all t at once.
    chunk_size: as chunk_gla (<= 16 or a multiple of 16)."""
    _check(r, k, v, w, u, initial_state, chunk_size)
    T, K = r.shape[1], r.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    ahead, behind = (0, 0, 0, 0, 0, 1), (0, 0, 0, 0, 1, 0)  # pad one step after / before along T
    o, S = chunk_gla(F.pad(r, ahead), F.pad(k, behind), F.pad(v, behind), F.pad(w, behind), scale=scale,
                     initial_state=initial_state, output_final_state=output_final_state, chunk_size=chunk_size)
    acc = acc_dtype(r)
    bonus = (r.to(acc) * (scale * u.to(acc)) * k.to(acc)).sum(-1, keepdim=True) * v.to(acc)  # (B, T, H, V)
    return (o[:, :T].to(acc) + bonus).to(v.dtype), S
