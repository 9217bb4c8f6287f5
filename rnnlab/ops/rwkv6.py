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
at once; the decoding path), ``chunk_rwkv6`` (chunkwise parallel, via
:func:`chunk_decay_attn` below).

Numerics of the chunkwise form. Inside a chunk the decay between query t and key s < t is
exp(Ge_t - G_s) (G the inclusive, Ge the exclusive cumulative log-decay from the chunk
start). When no channel decays by more than FACTORED_MAX = 40 (log space) within any chunk
(the common case: RWKV-6's initial decays reach ~24 over 64 tokens), the chunk's scores are
one matmul of r e^{Ge} and k e^{-G}, factors bounded by e^40. The other chunks (selected
per chunk by one reduction) keep every exponent <= 0 with sub-chunks of 16 tokens: blocks below the diagonal factor it through the
cumulative decay R at the end of the previous sub-chunk, q_t e^{Ge_t - R} and k_s e^{R - G_s},
both <= 1; diagonal blocks use the exact pairwise exp(Ge_t - G_s) (a custom autograd
function that recomputes it in the backward, so nothing of size L*16*K is stored).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

__all__ = ["chunk_rwkv6", "fused_recurrent_rwkv6", "naive_recurrent_rwkv6", "chunk_decay_attn", "FACTORED_MAX"]

SUB_CHUNK = 16
FACTORED_MAX = 40.0  # largest in-chunk log-decay for the one-matmul intra-chunk form (e^40 ~ 2e17)


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


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


def naive_recurrent_rwkv6(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    **_: object,
) -> tuple[Tensor, Tensor | None]:
    """r, k, w (B, T, H, K), v (B, T, H, V), u (H, K) -> (o (B, T, H, V), S (B, H, K, V) or None).

    Reference loop: the recurrence of the module docstring as written, in float32."""
    _check(r, k, v, w, u, initial_state)
    B, T, H, K = r.shape
    V = v.shape[-1]
    acc = _acc_dtype(r)
    scale = K ** -0.5 if scale is None else scale
    S = r.new_zeros(B, H, K, V, dtype=acc) if initial_state is None else initial_state.to(acc)
    uf = u.to(acc)
    os = []
    for rt, kt, vt, wt in zip(r.to(acc).unbind(1), k.to(acc).unbind(1), v.to(acc).unbind(1), w.to(acc).unbind(1)):
        kv = kt[..., :, None] * vt[..., None, :]  # (B, H, K, V)
        os.append(torch.einsum("bhkv,bhk->bhv", S + uf[..., None] * kv, scale * rt))
        S = torch.exp(wt)[..., None] * S + kv
    return torch.stack(os, 1).to(v.dtype), (S if output_final_state else None)


def fused_recurrent_rwkv6(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    **_: object,
) -> tuple[Tensor, Tensor | None]:
    """r, k, w (B, T, H, K), v (B, T, H, V), u (H, K) -> (o (B, T, H, V), S (B, H, K, V) or None).

    The recurrence with the bonus term (r_t . (u * k_t)) v_t computed for all t at once
    and a two-op state update per step; the decoding path (T == 1) of the layer."""
    _check(r, k, v, w, u, initial_state)
    B, T, H, K = r.shape
    V = v.shape[-1]
    acc = _acc_dtype(r)
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


class _DiagDecayAttn(torch.autograd.Function):
    """A[..., t, s] = sum_k q_tk k_sk exp(gq_tk - gk_sk) over the mask, exact pairwise
    decays; q, k, gq, gk (..., Ls, K) -> A (..., Ls, Ls). The (Ls, Ls, K) decay tensor is
    recomputed in the backward instead of stored."""

    @staticmethod
    def _decay(gq: Tensor, gk: Tensor, mask: Tensor) -> Tensor:
        diff = gq[..., :, None, :] - gk[..., None, :, :]  # (..., Ls, Ls, K)
        return torch.exp(diff.masked_fill_(~mask[:, :, None], float("-inf")))

    @staticmethod
    def forward(ctx, q, k, gq, gk, mask):
        E = _DiagDecayAttn._decay(gq, gk, mask)
        E.mul_(q[..., :, None, :])
        A = torch.einsum("...tsk,...sk->...ts", E, k)
        ctx.save_for_backward(q, k, gq, gk, mask)
        return A

    @staticmethod
    def backward(ctx, dA):
        q, k, gq, gk, mask = ctx.saved_tensors
        P = _DiagDecayAttn._decay(gq, gk, mask)
        P.mul_(dA[..., None])  # (..., Ls, Ls, K)
        dq = torch.einsum("...tsk,...sk->...tk", P, k)
        dk = torch.einsum("...tsk,...tk->...sk", P, q)
        P.mul_(q[..., :, None, :]).mul_(k[..., None, :, :])
        return dq, dk, P.sum(-2), -P.sum(-3), None


def chunk_decay_attn(q: Tensor, k: Tensor, gq: Tensor, gk: Tensor, strict: bool, sub_chunk: int = SUB_CHUNK, max_factored: float = FACTORED_MAX) -> Tensor:
    """q, k, gq, gk (..., L, K) float -> A (..., L, L), the decayed intra-chunk scores

        A[t, s] = sum_k q_tk k_sk exp(gq_tk - gk_sk)   for s < t (strict) or s <= t, else 0,

    gq, gk cumulative log-decays within each chunk starting from 0, non-increasing along
    L, with gq_t <= gk_s whenever s < t (RWKV-6: gq exclusive, gk inclusive cumsum,
    strict; GLA: both inclusive, not strict).

    Chunks in which no channel decays by more than ``max_factored`` (log space) take one
    masked matmul of q e^{gq} and k e^{-gk}, factors below e^{max_factored}; the other
    chunks (selected by one reduction) take the sub-chunked form whose exponents are all
    <= 0 (see the module docstring)."""
    L, K = q.shape[-2:]
    mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril(-1 if strict else 0)
    A = (q * torch.exp(gq)) @ (k * torch.exp(torch.clamp(-gk, max=max_factored))).transpose(-1, -2)
    A = A.masked_fill(~mask, 0.0)
    strong = (-gk[..., -1, :].detach()).amax(-1).flatten() > max_factored  # (N,) one flag per chunk
    if L <= 1 or not bool(strong.any()):
        return A
    idx = strong.nonzero()[:, 0]
    flat = lambda t: t.flatten(0, -3).index_select(0, idx)
    A_safe = _safe_decay_attn(flat(q), flat(k), flat(gq), flat(gk), strict, sub_chunk)  # (n_strong, L, L)
    return A.flatten(0, -3).index_copy(0, idx, A_safe).view(A.shape)


def _safe_decay_attn(q: Tensor, k: Tensor, gq: Tensor, gk: Tensor, strict: bool, sub_chunk: int) -> Tensor:
    """:func:`chunk_decay_attn` with every exponent <= 0: exact pairwise decays on the
    diagonal sub-chunk blocks, a reference point between the two sub-chunks below it."""
    L, K = q.shape[-2:]
    Ls = sub_chunk if (L % sub_chunk == 0 and L > sub_chunk) else L
    ns = L // Ls
    mask = torch.ones(Ls, Ls, dtype=torch.bool, device=q.device).tril(-1 if strict else 0)
    split = lambda t: t.unflatten(-2, (ns, Ls))  # (..., ns, Ls, K)
    A_diag = _DiagDecayAttn.apply(split(q), split(k), split(gq), split(gk), mask)  # (..., ns, Ls, Ls)
    if ns == 1:
        return A_diag[..., 0, :, :]
    eye = torch.eye(ns, dtype=A_diag.dtype, device=q.device)
    blocks = A_diag[..., :, :, None, :] * eye[:, None, :, None]  # (..., ns, Ls, ns, Ls)
    # blocks below the diagonal: reference R_i = gk at the last token before sub-chunk i
    R = gk[..., Ls - 1 : L - 1 : Ls, :]  # (..., ns-1, K) for sub-chunks i = 1..ns-1
    qr = split(q)[..., 1:, :, :] * torch.exp(split(gq)[..., 1:, :, :] - R[..., None, :])  # (..., ns-1, Ls, K)
    before = torch.arange(L, device=q.device)[None, :] < torch.arange(1, ns, device=q.device)[:, None] * Ls  # (ns-1, L)
    ex = (R[..., :, None, :] - gk[..., None, :, :]).masked_fill(~before[:, :, None], float("-inf"))  # (..., ns-1, L, K)
    kr = k[..., None, :, :] * torch.exp(ex)
    A_off = qr @ kr.transpose(-1, -2)  # (..., ns-1, Ls, L)
    A_off = torch.cat([A_off.new_zeros(*A_off.shape[:-3], 1, Ls, L), A_off], -3)  # (..., ns, Ls, L)
    return (blocks + A_off.unflatten(-1, (ns, Ls))).flatten(-4, -3).flatten(-2, -1)


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
    **_: object,
) -> tuple[Tensor, Tensor | None]:
    """r, k, w (B, T, H, K), v (B, T, H, V), u (H, K) -> (o (B, T, H, V), S (B, H, K, V) or None).

    Chunkwise-parallel RWKV-6: per chunk (G inclusive, Ge exclusive cumsum of w)

        o_t = (scale r_t e^{Ge_t}) S_in + sum_{s<t} A_ts v_s + (scale r_t . (u k_t)) v_t
        S_out = e^{G_L} S_in + sum_s (k_s e^{G_L - G_s}) v_s^T

    with A from :func:`chunk_decay_attn`; chunk-local states in parallel, a short loop
    over chunks passes the state. Gradients by autograd (memory O(T * chunk_size))."""
    _check(r, k, v, w, u, initial_state, chunk_size)
    B, T, H, K = r.shape
    V = v.shape[-1]
    acc = _acc_dtype(r)
    dt = r.dtype  # matmul dtype; decays and state in acc
    scale = K ** -0.5 if scale is None else scale
    L = min(chunk_size, -(-T // SUB_CHUNK) * SUB_CHUNK)
    NC = -(-T // L)
    pad = NC * L - T
    rf, kf, vf, wf = r.to(acc) * scale, k.to(acc), v, w.to(acc)
    if pad:  # padded steps: zero inputs, no decay
        rf, kf, vf, wf = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (rf, kf, vf, wf))
    rc, kc, wc = (rearrange(t, "b (n l) h k -> b h n l k", l=L) for t in (rf, kf, wf))
    vc = rearrange(vf, "b (n l) h v -> b h n l v", l=L).to(dt)
    G = wc.cumsum(-2)  # (B, H, NC, L, K) inclusive
    Ge = G - wc  # exclusive
    GL = G[..., -1:, :]  # (B, H, NC, 1, K)

    # chunk-local states and the pass across chunks
    S_loc = ((kc * torch.exp(GL - G)).to(dt).transpose(-1, -2) @ vc).to(acc)  # (B, H, NC, K, V)
    S = r.new_zeros(B, H, K, V, dtype=acc) if initial_state is None else initial_state.to(acc)
    decay = torch.exp(GL[..., 0, :])  # (B, H, NC, K)
    states = []
    for c in range(NC):
        states.append(S)
        if c < NC - 1 or output_final_state:
            S = decay[:, :, c, :, None] * S + S_loc[:, :, c]
    S_in = torch.stack(states, 2)  # (B, H, NC, K, V)

    A = chunk_decay_attn(rc, kc, Ge, G, strict=True)  # (B, H, NC, L, L)
    o = (A.to(dt) @ vc).to(acc) + ((rc * torch.exp(Ge)).to(dt) @ S_in.to(dt)).to(acc)
    o = o + (rc * u.to(acc)[:, None, None, :] * kc).sum(-1, keepdim=True) * vc.to(acc)
    o = rearrange(o, "b h n l v -> b (n l) h v")[:, :T].to(v.dtype)
    return o, (S if output_final_state else None)
