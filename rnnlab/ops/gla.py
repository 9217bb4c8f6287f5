"""Gated linear attention: a matrix state with a per-key-dimension, per-head-scalar or no decay.

    q, k (B, T, H, K), v (B, T, H, V), g log-decay (<= 0): (B, T, H, K) | (B, T, H) | absent
    -> o (B, T, H, V), final_state (B, H, K, V) float32 or None

Per head, S_0 = initial_state (zeros when None):

    S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T,        o_t = S_t^T (scale * q_t)

* ``*_gla``: g (B, T, H, K), a decay per key dimension (GLA, Yang et al. 2024, "Gated Linear
  Attention Transformers with Hardware-Efficient Training", eq. 3 with G_t = α_t 1^T; HGRN2).
* ``*_simple_gla``: g (B, T, H), one decay per head and step (RetNet with a constant g,
  Mamba-2/SSD with a data-dependent one, Lightning attention).
* ``*_linear_attn``: no decay (Katharopoulos et al. 2020, eq. 4-6 without the normalizer).

``*_simple_gla`` and ``*_linear_attn`` also accept q, k with Hq heads shared by groups of H / Hq heads
of v (head h reads group h // (H / Hq); Mamba-2's ngroups): the chunk form then computes one q k^T
per group (:func:`_chunk_by_group`).

``scale=None`` means K^-1/2 (flash-linear-attention's default); the signatures follow
flash-linear-attention's functional ops, so ``from rnnlab.ops.gla import chunk_gla`` is a
drop-in for ``from fla.ops.gla import chunk_gla`` (head-first layout not supported).

Forms (same signature): ``naive_recurrent_*`` (the specification: a loop over t, as written
above), ``fused_recurrent_*`` (the same loop with the step fused into two ops; the decode
path), ``chunk_*`` (chunkwise parallel, one core :func:`_chunk` for the three decay kinds).

Chunkwise form (chunk length L, default 64; G the inclusive cumulative sum of g inside a chunk,
G_L its last value, S_in the state entering the chunk):

    o_t   = (scale q_t e^{G_t}) S_in + sum_{s <= t} A_ts v_s,   A_ts = scale sum_k q_tk k_sk e^{G_tk - G_sk}
    S_out = e^{G_L} S_in + sum_s (k_s e^{G_L - G_s}) v_s^T

The chunk-local parts run for all chunks at once as batched matmuls (in bfloat16 when the
inputs are bfloat16; decays, cumulative sums and the state in float32); a short loop over the
chunks passes the state. The matmuls and the state pass form one autograd.Function with a
hand-written backward (:class:`_ChunkCore`: fused baddbmm's and one reverse loop over the chunks,
measured 11-20% faster than autograd through the same computation); autograd differentiates the
decay factors around it. Memory O(T * L).

Numerics of A (every exponent bounded, never a product of many small numbers). In the common
case ("chunk" tier: no chunk whose half accumulates more than ``MAX_EXP`` = 40 (rnnlab.ops.chunk) of log-decay)
one midpoint M per chunk factors every decay, e^{G_t - G_s} = e^{G_t - M} e^{M - G_s}, with both
factors within e^{±40} (so their products, times the data, stay out of float32's denormal range,
on which matmuls run several times slower). Otherwise:
* scalar decay: A = (q k^T) * exp(G_t - G_s) with the (L, L) mask applied after the exp; every
  kept exponent is <= 0, floored at rnnlab.ops._exp.EXP_FLOOR = -30; exact for any decay.
* per-key decay: sub-chunks of 16 tokens. A block below the diagonal (query sub-chunk i,
  key sub-chunk j < i) factors through R_i, the cumulative decay at the end of sub-chunk i-1:
  (q_t e^{G_t - R_i}) . (k_s e^{R_i - G_s}), both exponents <= 0 (exact, safe for any decay).
  A diagonal 16x16 block factors through its midpoint M: (q_t e^{G_t - M}) . (k_s e^{M - G_s});
  those exponents are bounded by the decay accumulated over half a sub-chunk (<= 40 for
  g >= -5 per step). When that bound exceeds ``MAX_EXP`` = 40 (rnnlab.ops.chunk) anywhere (decays stronger than
  about -5 per step), the diagonal blocks are computed from the exact pairwise factors
  exp(G_t - G_s) <= 1 instead: same result, slower, memory 16x that of q. The choice depends
  only on the values of g and is the same on every device.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnlab.ops._exp import decay_exp
from rnnlab.ops.chunk import MAX_EXP, acc_dtype, cast, decay_gram, decay_ratios, mac, midpoint, midpoint_bound, mm_dtype, to_chunks
from rnnlab.ops.varlen import varlen

__all__ = [
    "chunk_gla", "fused_recurrent_gla", "naive_recurrent_gla",
    "chunk_simple_gla", "fused_recurrent_simple_gla", "naive_recurrent_simple_gla",
    "chunk_linear_attn", "fused_recurrent_linear_attn", "naive_recurrent_linear_attn",
]

SUB_CHUNK = 16

# the fla keyword arguments each form recognises (rnnlab.ops.varlen.FLA_ARGS): accepted at their defaults only
_FLA_CHUNK = ("head_first", "state_v_first", "cu_seqlens_cpu", "chunk_indices")
_FLA_RECURRENT = ("head_first", "reverse", "state_v_first")
_NORMALIZE = ("normalize", lambda a, o: _normalize(a["q"], a["k"], o, a["scale"]))  # per sequence with cu_seqlens


# --------------------------------------------------------------------------- validation
def _check(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, kind: str, initial_state: Tensor | None, chunk_size: int | None = None) -> None:
    """q, k (B, T, Hq, K); v (B, T, H, V); g (B, T, H, K) if kind == "vector", (B, T, H) if "scalar".
    Hq == H, or (kinds "scalar" and "none") Hq divides H: q, k shared by groups of H / Hq heads."""
    for name, t in (("q", q), ("k", k), ("v", v)) + ((("g", g),) if g is not None else ()):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if q.dim() != 4:
        raise ValueError(f"q must be (B, T, H, K), got shape {tuple(q.shape)}")
    B, T, Hq, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q (B, T, H, K) = {tuple(q.shape)}, got {tuple(k.shape)}")
    grouped_ok = kind != "vector" and v.dim() == 4 and v.shape[2] % Hq == 0
    if v.dim() != 4 or v.shape[:2] != q.shape[:2] or (v.shape[2] != Hq and not grouped_ok):
        shared = "" if kind == "vector" else " or a multiple of it (q, k shared by groups of heads)"
        raise ValueError(f"v must be (B, T, H, V) with (B, T) = {tuple(q.shape[:2])} and H = q's {Hq} heads{shared}, got {tuple(v.shape)}")
    H = v.shape[2]
    if kind == "vector" and (g is None or g.shape != q.shape):
        raise ValueError(f"g must be (B, T, H, K) = {tuple(q.shape)} (log-decay per key dim), got {None if g is None else tuple(g.shape)}")
    if kind == "scalar" and (g is None or tuple(g.shape) != (B, T, H)):
        raise ValueError(f"g must be (B, T, H) = {(B, T, H)} (log-decay per head), got {None if g is None else tuple(g.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (B, H, K, v.shape[-1]):
        raise ValueError(f"initial_state must be (B, H, K, V) = {(B, H, K, v.shape[-1])}, got {tuple(initial_state.shape)}")
    if chunk_size is not None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if kind == "vector" and chunk_size > SUB_CHUNK and chunk_size % SUB_CHUNK:
            raise ValueError(f"chunk_size must be <= {SUB_CHUNK} or a multiple of {SUB_CHUNK} for per-key decay, got {chunk_size}")


def _expand_heads(q: Tensor, k: Tensor, H: int) -> tuple[Tensor, Tensor]:
    """q, k (B, T, Hq, K) shared by groups of H / Hq heads -> (B, T, H, K) (head h reads group h // (H / Hq))."""
    rep = H // q.shape[2]
    return (q, k) if rep == 1 else (q.repeat_interleave(rep, 2), k.repeat_interleave(rep, 2))


def _decay_shape(g: Tensor | None, kind: str) -> Tensor | None:
    """g -> (B, T, H, K or 1) in float32/64, or None."""
    if g is None:
        return None
    g = cast(g, acc_dtype(g) if g.dtype == torch.float64 else torch.float32)
    return g if kind == "vector" else g[..., None]


# --------------------------------------------------------------------------- reference loop
def _naive(q, k, v, g, kind, scale, initial_state, output_final_state):
    q, k = _expand_heads(q, k, v.shape[2])
    B, T, H, K = q.shape
    V = v.shape[-1]
    acc = acc_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    S = q.new_zeros(B, H, K, V, dtype=acc) if initial_state is None else initial_state.to(acc)
    gs = (g.to(acc) if kind == "vector" else g.to(acc)[..., None]) if g is not None else q.new_zeros(B, T, H, 1, dtype=acc)
    os = []
    for qt, kt, vt, gt in zip(q.to(acc).unbind(1), k.to(acc).unbind(1), v.to(acc).unbind(1), gs.unbind(1)):
        S = S * torch.exp(gt)[..., None] + kt[..., :, None] * vt[..., None, :]  # (B, H, K, V)
        os.append((scale * qt[..., :, None] * S).sum(-2))  # (B, H, V)
    return torch.stack(os, 1).to(v.dtype), (S if output_final_state else None)


@varlen(("q", "k", "v", "g"), fla=_FLA_RECURRENT + ("gv",))
def naive_recurrent_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    """q, k, g (B, T, H, K), v (B, T, H, V) -> (o (B, T, H, V), S (B, H, K, V) or None).

    Reference loop (the specification): S_t = Diag(e^{g_t}) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t)."""
    _check(q, k, v, g, "vector", initial_state)
    return _naive(q, k, v, g, "vector", scale, initial_state, output_final_state)


@varlen(("q", "k", "v", "g"), fla=_FLA_RECURRENT + ("g_gamma",))
def naive_recurrent_simple_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    """q, k (B, T, H, K), v (B, T, H, V), g (B, T, H) -> (o (B, T, H, V), S (B, H, K, V) or None).

    Reference loop: S_t = e^{g_t} S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t)."""
    _check(q, k, v, g, "scalar", initial_state)
    return _naive(q, k, v, g, "scalar", scale, initial_state, output_final_state)


@varlen(("q", "k", "v"), fla=_FLA_RECURRENT, post=_NORMALIZE)
def naive_recurrent_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=False):
    """q, k (B, T, H, K), v (B, T, H, V) -> (o (B, T, H, V), S (B, H, K, V) or None).

    Reference loop: S_t = S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t); ``normalize`` divides by
    scale q_t . sum_{s<=t} k_s (this call's keys only, as flash-linear-attention does)."""
    _check(q, k, v, None, "none", initial_state)
    o, S = _naive(q, k, v, None, "none", scale, initial_state, output_final_state)
    return (_normalize(q, k, o, scale) if normalize else o), S


def _normalize(q: Tensor, k: Tensor, o: Tensor, scale: float | None) -> Tensor:
    """o_t / (scale q_t . sum_{s<=t} k_s + 1e-10): fla's normalize_output, over this call's keys."""
    acc = acc_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k = _expand_heads(q, k, o.shape[2])
    z = (scale * q.to(acc) * k.to(acc).cumsum(1)).sum(-1, keepdim=True)  # (B, T, H, 1)
    return (o.to(acc) / (z + 1e-10)).to(o.dtype)


# --------------------------------------------------------------------------- fused recurrent
def _fused(q, k, v, g, kind, scale, initial_state, output_final_state):
    q, k = _expand_heads(q, k, v.shape[2])
    B, T, H, K = q.shape
    V = v.shape[-1]
    acc = acc_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    S = q.new_zeros(B, H, K, V, dtype=acc) if initial_state is None else cast(initial_state, acc)
    qs = (cast(q, acc) * scale)[..., None, :]  # (B, T, H, 1, K)
    ks, vs = cast(k, acc)[..., :, None], cast(v, acc)[..., None, :]
    steps = [qs.unbind(1), ks.unbind(1), vs.unbind(1)]
    if g is not None:
        decay = torch.exp(cast(_decay_shape(g, kind), acc))[..., None]  # (B, T, H, K or 1, 1)
        steps.append(decay.unbind(1))
    os = []
    for qt, kt, vt, *dt in zip(*steps):
        S = torch.addcmul(S * dt[0] if dt else S, kt, vt)  # (B, H, K, V)
        os.append(qt @ S)  # (B, H, 1, V)
    o = (torch.cat(os, 2) if T > 1 else os[0]).transpose(1, 2)  # (B, T, H, V); one token (decode): no copy
    return cast(o, v.dtype), (S if output_final_state else None)


@varlen(("q", "k", "v", "g"), fla=_FLA_RECURRENT + ("gv",))
def fused_recurrent_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    """q, k, g (B, T, H, K), v (B, T, H, V) -> (o (B, T, H, V), S (B, H, K, V) or None); two ops per step."""
    _check(q, k, v, g, "vector", initial_state)
    return _fused(q, k, v, g, "vector", scale, initial_state, output_final_state)


@varlen(("q", "k", "v", "g"), fla=_FLA_RECURRENT + ("g_gamma",))
def fused_recurrent_simple_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    """q, k (B, T, H, K), v (B, T, H, V), g (B, T, H) -> (o (B, T, H, V), S (B, H, K, V) or None); two ops per step."""
    _check(q, k, v, g, "scalar", initial_state)
    return _fused(q, k, v, g, "scalar", scale, initial_state, output_final_state)


@varlen(("q", "k", "v"), fla=_FLA_RECURRENT, post=_NORMALIZE)
def fused_recurrent_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=False):
    """q, k (B, T, H, K), v (B, T, H, V) -> (o (B, T, H, V), S (B, H, K, V) or None); two ops per step."""
    _check(q, k, v, None, "none", initial_state)
    o, S = _fused(q, k, v, None, "none", scale, initial_state, output_final_state)
    return (_normalize(q, k, o, scale) if normalize else o), S


# --------------------------------------------------------------------------- chunkwise
def _intra_scalar(q: Tensor, k: Tensor, G: Tensor | None, dt: torch.dtype) -> Tensor:
    """q, k (..., L, K) acc; G (..., L, 1) inclusive cumsum or None -> A (..., L, L) acc, lower triangle incl. diagonal."""
    A = (q.to(dt) @ k.to(dt).transpose(-1, -2)).to(q.dtype)  # (..., L, L)
    if G is None:
        return A.tril()
    return (A * decay_ratios(G, G)).tril_()  # e^{G_t - G_s} on s <= t, every exponent <= 0


def _intra_vector(q: Tensor, k: Tensor, G: Tensor, dt: torch.dtype) -> Tensor:
    """q, k, G (..., L, K) acc, G the inclusive cumsum of the per-key log-decay -> A (..., L, L) acc.

    Sub-chunks of Ls = min(16, L) tokens; see the module docstring for the factorization."""
    L, K = q.shape[-2:]
    Ls = min(SUB_CHUNK, L)
    ns = L // Ls
    split = lambda t: t.unflatten(-2, (ns, Ls))  # (..., ns, Ls, K)
    qs, ks, Gs = split(q), split(k), split(G)
    A_diag = decay_gram(qs, ks, Gs, Gs, True, dt)  # (..., ns, Ls, Ls): midpoint of each sub-chunk, or the exact factors
    if ns == 1:
        return A_diag[..., 0, :, :]
    # rows of sub-chunks 1..ns-1 against all earlier keys, through R_i = G at the end of sub-chunk i-1
    R = G[..., Ls - 1 : L - 1 : Ls, :]  # (..., ns-1, K)
    qr = (qs[..., 1:, :, :] * torch.exp(Gs[..., 1:, :, :] - R[..., None, :])).to(dt)  # (..., ns-1, Ls, K)
    before = torch.arange(L, device=q.device)[None, :] < torch.arange(1, ns, device=q.device)[:, None] * Ls  # (ns-1, L)
    kr = (k[..., None, :, :] * decay_exp(R[..., :, None, :] - G[..., None, :, :], max=0.0)).masked_fill(~before[:, :, None], 0.0).to(dt)  # (..., ns-1, L, K)
    A_off = (qr @ kr.transpose(-1, -2)).to(q.dtype)  # (..., ns-1, Ls, L), zero at keys >= i*Ls
    A = torch.cat([A_off.new_zeros(*A_off.shape[:-3], 1, Ls, L), A_off], -3)  # (..., ns, Ls, L)
    A = A.unflatten(-1, (ns, Ls))  # (..., ns, Ls, ns, Ls)
    A.diagonal(0, -4, -2).copy_(A_diag.movedim(-3, -1))  # diagonal blocks (..., Ls, Ls, ns)
    return A.flatten(-4, -3).flatten(-2, -1)


def _tier(G: Tensor, kind: str) -> str:
    """Which factorization of A the decays allow; G (..., L, K or 1) the in-chunk inclusive cumsum.

    "chunk": one midpoint per chunk, |exponents| <= MAX_EXP (the common case; cheapest);
    "exact_mask": scalar decay, the exact (L, L) decay mask; "sub_chunk": per-key decay through
    sub-chunks of 16 (see :func:`_intra_vector`, which may fall back to exact pairwise factors)."""
    if float(midpoint_bound(G, midpoint(G))) <= MAX_EXP:
        return "chunk"
    return "exact_mask" if kind == "scalar" else "sub_chunk"


class _ChunkCore(torch.autograd.Function):
    """The matmuls and the state pass of the chunkwise form, with a hand-written backward.

    Per chunk (batch dims (B, H, NC); q, k (L, K), v (L, V) in the matmul dtype; c, d, s broadcast to the
    state (K, V): (K or 1, 1), or (1, V) for the column blocks of heads that share q and k; h0 (K, V) in
    float32; each of c, d, s may be None = 1):

        A     = tril(q kᵀ)  (or the given A)
        S_out = d ⊙ S_in + c ⊙ (kᵀ v)                 (a loop over the chunks, S_in of chunk 0 = h0)
        o     = alpha (A v + q (s ⊙ S_in))

    Returns (o (B, H, NC, L, V), final state (B, H, K, V) float32 or None). The backward computes every
    gradient with fused baddbmm's and one reverse loop over the chunks; the decays' own derivatives
    (cumulative sums, exponentials) are left to autograd outside."""

    @staticmethod
    def forward(ctx, q, k, v, A, c, d, s, h0, alpha, output_final_state):
        acc = h0.dtype
        computed = A is None
        if computed:
            A = torch.tril(mac(q, k.transpose(-1, -2)))  # (B, H, NC, L, L)
        Q = mac(k.transpose(-1, -2), v).to(acc)  # (B, H, NC, K, V): kᵀv of every chunk
        S_loc = Q * c if c is not None else Q
        S, states = h0, []
        NC = q.shape[2]
        for i, Sc in enumerate(S_loc.unbind(2)):
            states.append(S)
            if i < NC - 1 or output_final_state:
                S = torch.addcmul(Sc, d[:, :, i], S) if d is not None else S + Sc
        S_in = torch.stack(states, 2)  # (B, H, NC, K, V)
        S_hat = S_in * s if s is not None else S_in
        o = mac(A, v, acc=mac(q, S_hat.to(q.dtype)), beta=alpha, alpha=alpha)
        ctx.save_for_backward(q, k, v, A, Q, S_in, c, d, s)
        ctx.computed, ctx.alpha = computed, alpha
        return o, (S if output_final_state else None)

    @staticmethod
    @once_differentiable
    def backward(ctx, do, dS):
        q, k, v, A, Q, S_in, c, d, s = ctx.saved_tensors
        dt, acc, alpha = q.dtype, S_in.dtype, ctx.alpha
        reduce = lambda x, like: x.sum_to_size(like.shape)  # noqa: E731  the gradient of a broadcast factor
        do_s = (do * alpha).to(dt).contiguous()  # (B, H, NC, L, V); do is a permuted view
        dA = mac(do_s, v.transpose(-1, -2))  # (B, H, NC, L, L)
        if ctx.computed:
            dA = torch.tril(dA)
        P = mac(q.transpose(-1, -2), do_s).to(acc)  # (B, H, NC, K, V): gradient of s ⊙ S_in
        ds = reduce(P * S_in, s) if s is not None else None
        dS_dir = P * s if s is not None else P
        # reverse pass over the chunks: U = gradient of the state leaving chunk i
        U = dS if dS is not None else torch.zeros_like(S_in[:, :, 0])
        Us = [None] * q.shape[2]
        for i in range(q.shape[2] - 1, -1, -1):
            Us[i] = U
            U = torch.addcmul(dS_dir[:, :, i], d[:, :, i], U) if d is not None else dS_dir[:, :, i] + U
        dh0, U = U, torch.stack(Us, 2)  # (B, H, K, V), (B, H, NC, K, V)
        dd = reduce(U * S_in, d) if d is not None else None
        dc = reduce(U * Q, c) if c is not None else None
        dQ = (U * c if c is not None else U).to(dt)
        S_hat = (S_in * s if s is not None else S_in).to(dt)
        tr = lambda t: t.transpose(-1, -2)  # noqa: E731
        dv = mac(tr(A), do_s, acc=mac(k, dQ))
        if ctx.computed:  # A = tril(q kᵀ): its gradient joins those of the other uses of q and k
            dq = mac(dA, k, acc=mac(do_s, tr(S_hat)))
            dk = mac(tr(dA), q, acc=mac(v, tr(dQ)))
            dA = None
        else:
            dq, dk = mac(do_s, tr(S_hat)), mac(v, tr(dQ))
        return dq, dk, dv, dA, dc, dd, ds, dh0, None, None


def _chunk(q, k, v, g, kind, scale, initial_state, output_final_state, chunk_size):
    """The chunkwise form for kind in {"vector", "scalar", "none"}; see the module docstring.

    q, k, v are copied once into contiguous (B, H, NC, L, .) chunks (transpose and padding in one
    copy), so every matmul runs on views. The decays become the factors of :class:`_ChunkCore`
    (autograd differentiates them), applied where they cost the fewest passes over large tensors:
    none: q, k, v as they are, the scale folded into the final matmul;
    scalar "chunk" (:func:`_chunk_by_group`, which also serves q, k shared by groups of heads):
    A = tril(q kᵀ) undecayed; the key side's e^{M - G_s} on v, the query side's scale e^{G_t - M}
    on the output rows, s = e^{M}, c = e^{G_L - M}, d = e^{G_L};
    vector "chunk": q e^{G - M}, k e^{M - G}; s, c, d the same per key dimension;
    strong decays: A from :func:`_intra_scalar` / :func:`_intra_vector`, q e^{G}, k e^{G_L - G}, d."""
    B, T, Hq, K = q.shape
    H = v.shape[2]
    acc, dt = acc_dtype(q), mm_dtype(q)
    scale = K ** -0.5 if scale is None else scale
    if kind == "vector" and chunk_size > SUB_CHUNK:
        L = min(chunk_size, -(-T // SUB_CHUNK) * SUB_CHUNK)  # short inputs: a shorter chunk, still whole sub-chunks
    else:
        L = min(chunk_size, T)
    gf = _decay_shape(g, kind)
    G = None if gf is None else to_chunks(gf, L).cumsum(-2)  # (B, H, NC, L, K or 1) inclusive, acc
    tier = "chunk" if G is None else _tier(G, kind)
    if kind != "vector" and tier == "chunk":
        return _chunk_by_group(q, k, v, G, scale, initial_state, output_final_state, L)
    q, k = _expand_heads(q, k, H)  # the remaining forms decay q and k per head
    qc, kc, vc = to_chunks(q.to(dt), L), to_chunks(k.to(dt), L), to_chunks(v.to(dt), L)
    h0 = q.new_zeros(B, H, K, v.shape[-1], dtype=acc) if initial_state is None else initial_state.to(acc)
    GL = G[..., -1:, :]  # (B, H, NC, 1, K or 1)
    col = lambda t: t.transpose(-1, -2)  # noqa: E731  (..., 1, K) -> (..., K, 1): a factor on the rows of a state
    if tier == "chunk":  # per-key decay
        M = midpoint(G)  # (..., 1, K or 1)
        q_t, k_t = (qc.to(acc) * torch.exp(G - M)).to(dt), (kc.to(acc) * torch.exp(M - G)).to(dt)
        o, S = _ChunkCore.apply(q_t, k_t, vc, None, col(torch.exp(GL - M)), col(torch.exp(GL)), col(torch.exp(M)), h0,
                                scale, output_final_state)
    else:  # strong decays: every exponent <= 0
        qs = qc.to(acc) * scale
        A = (_intra_scalar if tier == "exact_mask" else _intra_vector)(qs, kc.to(acc), G, dt).to(dt)
        q_s, k_s = (qs * decay_exp(G)).to(dt), (kc.to(acc) * decay_exp(GL - G)).to(dt)
        o, S = _ChunkCore.apply(q_s, k_s, vc, A, None, col(decay_exp(GL)), None, h0, 1.0, output_final_state)
    o = rearrange(o, "b h n l v -> b (n l) h v")[:, :T]
    return o.to(v.dtype), S


def _chunk_by_group(q, k, v, G, scale, initial_state, output_final_state, L):
    """:func:`_chunk` for no decay (G None) or a scalar decay in the "chunk" tier; q, k (B, T, Hq, K) serve
    groups of rep = H / Hq heads of v (B, T, H, V) (rep = 1: a group per head).

    Each group's rep heads are laid side by side along the value axis, v (L, rep·V) and the state
    (K, rep·V), so one q kᵀ and one set of matmuls serve the whole group (Mamba-2 with ngroups = 1
    computed the same (L, L) q kᵀ, and its gradients, once per head before). The per-head decays become
    factors on v's rows and the output rows (per head and token) and on the state's column blocks."""
    B, T, Hq, K = q.shape
    H, V = v.shape[2], v.shape[3]
    rep = H // Hq
    acc, dt = acc_dtype(q), mm_dtype(q)
    NC = -(-T // L)
    qc, kc = to_chunks(q.to(dt), L), to_chunks(k.to(dt), L)  # (B, Hq, NC, L, K)
    vc = to_chunks(v.to(dt).reshape(B, T, Hq, rep * V), L)  # (B, Hq, NC, L, rep·V), head j of a group at columns j·V
    h0 = q.new_zeros(B, H, K, V, dtype=acc) if initial_state is None else initial_state.to(acc)
    h0 = h0.unflatten(1, (Hq, rep)).permute(0, 1, 3, 2, 4).reshape(B, Hq, K, rep * V)
    if G is None:
        o, S = _ChunkCore.apply(qc, kc, vc, None, None, None, None, h0, scale, output_final_state)
    else:
        grp = lambda t: t.unflatten(1, (Hq, rep)).movedim(2, -2)  # noqa: E731  (B, H, NC, X, 1) -> (B, Hq, NC, X, rep, 1)
        cols = lambda t: grp(t).expand(*t.shape[:1], Hq, NC, 1, rep, V).reshape(B, Hq, NC, 1, rep * V)  # noqa: E731
        GL = G[..., -1:, :]
        M = midpoint(G)  # (..., 1, K or 1)
        v_t = (vc.to(acc).unflatten(-1, (rep, V)) * grp(torch.exp(M - G))).flatten(-2).to(dt)
        o, S = _ChunkCore.apply(qc, kc, v_t, None, cols(torch.exp(GL - M)), cols(torch.exp(GL)), cols(torch.exp(M)), h0,
                                1.0, output_final_state)
        o = (o.to(acc).unflatten(-1, (rep, V)) * grp(torch.exp(G - M) * scale)).flatten(-2)
    o = rearrange(o, "b g n l (r v) -> b (n l) (g r) v", r=rep)[:, :T]
    if S is not None:
        S = S.unflatten(-1, (rep, V)).permute(0, 1, 3, 2, 4).reshape(B, H, K, V)
    return o.to(v.dtype), S


@varlen(("q", "k", "v", "g"), fla=_FLA_CHUNK)
def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, chunk_size=64):
    """q, k, g (B, T, H, K), v (B, T, H, V) -> (o (B, T, H, V), S (B, H, K, V) float32 or None).

    Chunkwise-parallel GLA (per-key log-decay g <= 0); chunk_size <= 16 or a multiple of 16."""
    _check(q, k, v, g, "vector", initial_state, chunk_size)
    return _chunk(q, k, v, g, "vector", scale, initial_state, output_final_state, chunk_size)


@varlen(("q", "k", "v", "g"), fla=_FLA_CHUNK + ("g_gamma",))
def chunk_simple_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, chunk_size=64):
    """q, k (B, T, H, K), v (B, T, H, V), g (B, T, H) -> (o (B, T, H, V), S (B, H, K, V) float32 or None).

    Chunkwise-parallel form with one log-decay g <= 0 per head and step (RetNet, Mamba-2/SSD)."""
    _check(q, k, v, g, "scalar", initial_state, chunk_size)
    return _chunk(q, k, v, g, "scalar", scale, initial_state, output_final_state, chunk_size)


@varlen(("q", "k", "v"), fla=_FLA_CHUNK, post=_NORMALIZE)
def chunk_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=False, chunk_size=64):
    """q, k (B, T, H, K), v (B, T, H, V) -> (o (B, T, H, V), S (B, H, K, V) float32 or None).

    Chunkwise-parallel linear attention (no decay). ``normalize`` divides o_t by
    scale q_t . sum_{s<=t} k_s over this call's keys (flash-linear-attention's semantics; the
    ``linear_attention`` layer carries its normalizer in the state instead)."""
    _check(q, k, v, None, "none", initial_state, chunk_size)
    o, S = _chunk(q, k, v, None, "none", scale, initial_state, output_final_state, chunk_size)
    return (_normalize(q, k, o, scale) if normalize else o), S
