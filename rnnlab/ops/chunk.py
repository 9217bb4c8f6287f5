"""The chunkwise machinery the matrix-state families share (GLA / RetNet / Mamba-2 / linear attention,
mLSTM, RWKV-6, the delta rule and DeltaProduct, RWKV-7): one place, imported by every family, so no
family reaches into another's private helpers (fla's ``fla/ops/common`` and ``fla/ops/utils``).

Layouts (a chunk of L tokens; zero-padded to NC = ceil(T / L) chunks, padded steps carry zero inputs and
zero log-decay, so a state passes through them unchanged):

    to_chunks(t, L)       (B, T, H, D)   -> (B, H, NC, L, D)   head-major: GLA's and mLSTM's pass over dim 2
    chunk_major(x, C)     (B, T, H, *F)  -> (NC·B·H, C, *F)    chunk-major float32: chunk n of every head is
    unchunk(x, B, H, T)   the inverse                           one slab (the delta rule's and RWKV-7's pass)

Arithmetic:

    acc_dtype, mm_dtype   float32 accumulation (float64 stays float64); bfloat16 matmuls for bfloat16 inputs
    mac(a, b, acc, alpha, beta)   acc·beta + alpha·(a @ b) as one bmm/baddbmm over the flattened batch dims
    decay_ratios(x, y)    e^{min(x_i − y_j, 0)}: the pairwise decay ratios of a chunk (exps clamped by
                          decay_exp, rnnlab/ops/_exp.py), causally masked by the caller after the exp
    midpoint, decay_gram  Σ_c x_ic y_jc e^{Gx_ic − Gy_jc} through one midpoint factor per chunk while every
                          exponent stays within MAX_EXP, else the exact pairwise ratios
    unit_lower_inverse, UnitLowerSolve   (I + tril₋₁(A))⁻¹ by blocked substitution: the UT transform
    pass_forward, pass_backward, ChunkPass   the WY pass over chunks, W_n = U_n − Wk_n S_n,
                          S_{n+1} = d_n ⊙ S_n + kd_nᵀ W_n (+ E_n), and its backward
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from rnnlab.ops._exp import decay_exp

__all__ = ["MAX_EXP", "acc_dtype", "cast", "mm_dtype", "to_chunks", "chunk_major", "unchunk", "mac", "decay_ratios", "midpoint",
           "midpoint_bound", "decay_gram", "exact_decay_gram", "unit_lower_inverse", "UnitLowerSolve", "pass_forward",
           "pass_backward", "ChunkPass"]

# largest |exponent| of a midpoint-factored block: its products pair factors down to e^-2·bound, which with the
# data fall into float32's denormal range (slow matmuls) past ~42: chunk_simple_gla fwd+bwd at bound 37 / 43 / 46
# measured 63 / 91 / 142 ms; past 40 the exact forms (65 ms at bound 80) take over
MAX_EXP = 40.0


# --------------------------------------------------------------------------- dtypes
def acc_dtype(x: Tensor) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """t in ``dtype``, with no call when it already is: ``Tensor.to`` returns t then too, but pays a dispatch, and a
    decode step's conversions are mostly such no-ops."""
    return t if t.dtype == dtype else t.to(dtype)


def mm_dtype(x: Tensor) -> torch.dtype:
    """Matmul dtype: bfloat16 inputs keep bfloat16 matmuls (fp32 accumulation inside), else the acc dtype."""
    return torch.bfloat16 if x.dtype == torch.bfloat16 else acc_dtype(x)


# --------------------------------------------------------------------------- layouts
def to_chunks(t: Tensor, L: int) -> Tensor:
    """t (B, T, H, D) -> contiguous (B, H, NC, L, D), zero-padded to NC = ceil(T / L) chunks, in one
    copy (F.pad keeps t's memory layout, so pad + contiguous would copy twice)."""
    B, T, H, D = t.shape
    NC = -(-T // L)
    if NC * L == T:
        out = torch.empty(B, H, T, D, dtype=t.dtype, device=t.device)
    else:
        out = t.new_zeros(B, H, NC * L, D)
    out[:, :, :T] = t.transpose(1, 2)
    return out.unflatten(2, (NC, L))


def chunk_major(x: Tensor, C: int) -> Tensor:
    """(B, T, H, *F) -> (N·B·H, C, *F) float32 contiguous, chunk-major (chunk n of every head is one
    slab), zero-padded to N = ⌈T / C⌉ chunks."""
    pad = (-x.shape[1]) % C
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad))
    view = rearrange(x, "b (n c) h ... -> n b h c ...", c=C)
    return torch.empty(view.shape, dtype=torch.float32, device=x.device).copy_(view).flatten(0, 2)


def unchunk(x: Tensor, B: int, H: int, T: int) -> Tensor:
    """(N·B·H, C, *F) -> (B, T, H, *F), the inverse of :func:`chunk_major` (a view, the padding dropped)."""
    return rearrange(x, "(n b h) c ... -> b (n c) h ...", b=B, h=H)[:, :T]


# --------------------------------------------------------------------------- batched multiply-accumulate
def mac(a: Tensor, b: Tensor, acc: Tensor | None = None, alpha: float = 1.0, beta: float = 1.0) -> Tensor:
    """a (..., n, m) @ b (..., m, p) -> alpha · a b, or beta · acc + alpha · a b with ``acc`` updated in place
    (it must be a temporary), as one torch.bmm / baddbmm over the flattened batch dims: a view for contiguous
    or last-two-transposed operands (torch.matmul on > 3-D tensors copies), and the scaling and the
    accumulation cost no extra pass over memory."""
    flat = lambda t: t.reshape(-1, *t.shape[-2:])  # noqa: E731
    if acc is not None:
        out = flat(acc).baddbmm_(flat(a), flat(b), beta=beta, alpha=alpha)
    elif alpha == 1.0:
        out = torch.bmm(flat(a), flat(b))
    else:
        fa = flat(a)
        unused = a.new_empty(()).expand(fa.shape[0], fa.shape[1], b.shape[-1])  # beta = 0: baddbmm never reads it
        out = torch.baddbmm(unused, fa, flat(b), beta=0, alpha=alpha)
    return out.view(*a.shape[:-1], b.shape[-1])


# --------------------------------------------------------------------------- decays
def decay_ratios(x: Tensor, y: Tensor) -> Tensor:
    """x (..., L, 1), y (..., S, 1) (columns) -> (..., L, S): e^{min(x_i − y_j, 0)}, the pairwise decay ratios,
    exact wherever x_i − y_j <= 0 (j <= i for cumulative log-decays x = y = G); elsewhere 1, for the caller's
    causal mask, applied after the exp (exp(-inf) takes a slow path). Exps clamped by ``decay_exp``
    (rnnlab/ops/_exp.py: torch's exp is 10-100x slower for results that underflow or overflow)."""
    return decay_exp(x - y.transpose(-1, -2), max=0.0)


def midpoint(G: Tensor) -> Tensor:
    """G (..., L, K) -> (..., 1, K): the value at the middle of each chunk, the common factor of its decays."""
    L = G.shape[-2]
    return G[..., L // 2 : L // 2 + 1, :]


def midpoint_bound(G: Tensor, m: Tensor) -> Tensor | float:
    """The largest |G − m| of G (..., L, K), monotone along L (a cumulative log-decay): at the first or last step."""
    if not G.numel():
        return 0.0
    return torch.maximum((G[..., 0, :] - m[..., 0, :]).abs(), (G[..., -1, :] - m[..., 0, :]).abs()).detach().amax()


def exact_decay_gram(x: Tensor, y: Tensor, Gx: Tensor, Gy: Tensor, mask: Tensor) -> Tensor:
    """Σ_c x_ic y_jc e^{Gx_ic − Gy_jc} (..., C, C) from the exact pairwise ratios e^{Gx_i − Gy_j} <= 1 (a
    (..., C, C, K) tensor), 0 where ``mask`` (C, C) is False."""
    ratio = decay_exp(Gx[..., :, None, :] - Gy[..., None, :, :], max=0.0)  # exact where the mask keeps it
    return torch.einsum("...ijc,...ic,...jc->...ij", ratio, x, y).masked_fill(~mask, 0.0)


def decay_gram(x: Tensor, y: Tensor, Gx: Tensor, Gy: Tensor, diagonal: bool, dt: torch.dtype | None = None) -> Tensor:
    """x, Gx (..., C, K) rows i; y, Gy (..., C, K) columns j (Gx, Gy monotone along C) -> M (..., C, C) in x's
    dtype, M_ij = Σ_c x_ic y_jc e^{Gx_ic − Gy_jc} for j < i (j <= i if ``diagonal``), 0 elsewhere.

    Factorized about the chunk's middle m = Gy_{C/2}: (x e^{Gx − m}) (y e^{m − Gy})ᵀ, one matmul (in ``dt``,
    default x's dtype), while every |exponent| <= MAX_EXP; otherwise :func:`exact_decay_gram`."""
    C = x.shape[-2]
    mask = torch.ones(C, C, dtype=torch.bool, device=x.device).tril(0 if diagonal else -1)
    m = midpoint(Gy)
    bound = midpoint_bound(Gy, m) if Gx is Gy else max(midpoint_bound(Gx, m), midpoint_bound(Gy, m))
    if float(bound) <= MAX_EXP:
        dt = dt or x.dtype
        xd, yd = (x * torch.exp(Gx - m)).to(dt), (y * torch.exp(m - Gy)).to(dt)
        return (xd @ yd.mT).to(x.dtype).masked_fill(~mask, 0.0)
    return exact_decay_gram(x, y, Gx, Gy, mask)


# --------------------------------------------------------------------------- the UT transform
def unit_lower_inverse(A: Tensor, block: int = 16) -> Tensor:
    """A (..., C, C) -> (I + tril₋₁(A))⁻¹ (..., C, C); only A's strictly lower part is read.

    Blocked forward substitution: the diagonal block×block blocks are inverted row by row (one
    broadcast multiply-sum per row, over every block of every matrix at once), then block row i is
    −T_ii (A_{i,<i} T_{<i,<i}), two batched matmuls. Only matmuls and element-wise ops: the batched
    LAPACK solve (torch.linalg.solve_triangular, one threaded call per matrix) measured up to 100x
    slower than this with two threads on a loaded 2-core machine, and within 20% of it on one core."""
    C = A.shape[-1]
    b = min(block, C)
    n = -(-C // b)
    if n * b != C:  # the leading block of a lower-triangular matrix's inverse is the inverse of its leading block
        A = F.pad(A, (0, n * b - C, 0, n * b - C))
    L = A.unflatten(-1, (n, b)).unflatten(-3, (n, b))  # (..., n, b, n, b)
    X = -L.diagonal(dim1=-4, dim2=-2).movedim(-1, -3).tril(-1)  # (..., n, b, b): diagonal blocks of −A
    for i in range(2, b):  # row i of (I + A_ii)⁻¹ − I from the rows above it
        X[..., i, :i] += (X[..., i, 1:i, None] * X[..., 1:i, :i]).sum(-2)
    X.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    T = torch.zeros_like(A)
    T.unflatten(-1, (n, b)).unflatten(-3, (n, b)).diagonal(dim1=-4, dim2=-2).copy_(X.movedim(-3, -1))
    for i in range(1, n):
        r, c = slice(i * b, (i + 1) * b), slice(0, i * b)
        T[..., r, c] = -(X[..., i, :, :] @ (A[..., r, c] @ T[..., c, c]))
    return T[..., :C, :C]


class UnitLowerSolve(torch.autograd.Function):
    """A (..., C, C), R (..., C, M) -> X = (I + tril₋₁(A))⁻¹ R: the UT transform of all chunks at once.

    Forward: the inverse T (:func:`unit_lower_inverse`), then one matmul. Backward (hand-written, two
    matmuls): dR = Tᵀ dX, dA = −tril₋₁(dR Xᵀ)."""

    @staticmethod
    def forward(ctx, A, R):
        Tinv = unit_lower_inverse(A)
        X = Tinv @ R
        ctx.save_for_backward(Tinv, X)
        return X

    @staticmethod
    def backward(ctx, dX):
        Tinv, X = ctx.saved_tensors
        dR = Tinv.mT @ dX
        return -torch.tril(dR @ X.mT, -1), dR


# --------------------------------------------------------------------------- the WY pass over chunks
def pass_forward(U: Tensor, Wk: Tensor, kd: Tensor, d: Tensor | None, E: Tensor | None, S0: Tensor) -> tuple[Tensor, Tensor]:
    """The sequential part of the WY form, over chunks n = 0..N-1 (chunk axis first, Z = batch·heads):

        W_n = U_n − Wk_n S_n,   S_{n+1} = d_n ⊙ S_n + kd_nᵀ W_n (+ E_n)

    U (N, Z, C, V), Wk and kd (N, Z, C, K) (unit last stride), d (N, Z, 1, 1) scalar or (N, Z, K, 1)
    per-key chunk decay, or None; E (N, Z, K, V) or None; S0 (Z, K, V)
    -> W (N, Z, C, V), S (N+1, Z, K, V): the state entering each chunk, then the final one."""
    N, Z, C, V = U.shape
    W = U.new_empty(N, Z, C, V)
    S = U.new_empty(N + 1, Z, Wk.shape[-1], V)
    S[0] = S0
    for n in range(N):  # each step written straight into its output slab: 2-3 ops per chunk
        torch.baddbmm(U[n], Wk[n], S[n], alpha=-1, out=W[n])
        base = S[n]
        if d is not None or E is not None:
            base = S[n + 1]
            if d is None:
                torch.add(S[n], E[n], out=base)
            elif E is None:
                torch.mul(S[n], d[n], out=base)
            else:
                torch.addcmul(E[n], S[n], d[n], out=base)
        torch.baddbmm(base, kd[n].mT, W[n], out=S[n + 1])
    return W, S


def pass_backward(Wk: Tensor, kd: Tensor, d: Tensor | None, dW: Tensor, dS_in: Tensor | None, dS_last: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of :func:`pass_forward` through the chunks, last to first (two matmuls per chunk).

    dW (N, Z, C, V): gradient reaching W from outside, completed in place; dS_in (N, Z, K, V) or None:
    gradient reaching S_n (n < N) from outside; dS_last (Z, K, V): that of the final state
    -> (dW, dS_next (N, Z, K, V) the total gradient of S_{n+1}, dS0 (Z, K, V))."""
    N = dW.shape[0]
    dS_next = dW.new_empty(N, *dS_last.shape)
    dS_next[N - 1] = dS_last
    for n in range(N - 1, -1, -1):  # dS_{n} = d_n ⊙ dS_{n+1} (+ dS_in_n) − Wk_nᵀ dW_n, written into its slot
        dS = dS_next[n]
        dW[n].baddbmm_(kd[n], dS)
        prev = dS_next[n - 1] if n > 0 else torch.empty_like(dS_last)
        if d is None:
            torch.add(dS, dS_in[n], out=prev) if dS_in is not None else prev.copy_(dS)
        elif dS_in is None:
            torch.mul(dS, d[n], out=prev)
        else:
            torch.addcmul(dS_in[n], dS, d[n], out=prev)
        prev.baddbmm_(Wk[n].mT, dW[n], alpha=-1)
    return dW, dS_next, prev


class ChunkPass(torch.autograd.Function):
    """:func:`pass_forward` as an autograd op, chunk axis first with separate batch and head axes:
    U (N, B, H, C, V), Wk and kd (N, B, H, C, K), d (N, B, H, 1, 1) or (N, B, H, K, 1) or None,
    E (N, B, H, K, V) or None, S0 (B, H, K, V) -> W (N, B, H, C, V), S (N+1, B, H, K, V).
    Used by RWKV-7's chunkwise form; the delta rule calls the pass directly inside its own backward."""

    @staticmethod
    def forward(ctx, U, Wk, kd, d, E, S0):
        N, B, H, C, V = U.shape
        flat = lambda t: t.reshape(N, B * H, *t.shape[3:]) if t is not None else None  # noqa: E731
        W, S = pass_forward(flat(U), flat(Wk), flat(kd), flat(d), flat(E), S0.reshape(B * H, *S0.shape[2:]))
        ctx.has_E, ctx.shapes = E is not None, (U.shape, Wk.shape, kd.shape, None if d is None else d.shape, S0.shape)
        ctx.save_for_backward(Wk, kd, d, W, S)
        return W.view(U.shape), S.view(N + 1, *S0.shape)

    @staticmethod
    def backward(ctx, dW_out, dS_out):
        Wk, kd, d, W, S = ctx.saved_tensors
        U_shape, Wk_shape, kd_shape, d_shape, S0_shape = ctx.shapes
        N, Z = W.shape[:2]
        flat = lambda t: t.reshape(N, Z, *t.shape[3:]) if t is not None else None  # noqa: E731
        dW = dW_out.reshape(W.shape).clone() if dW_out is not None else torch.zeros_like(W)
        dS_out = dS_out.reshape(S.shape) if dS_out is not None else torch.zeros_like(S)
        dW, dS_next, dS0 = pass_backward(flat(Wk), flat(kd), flat(d), dW, dS_out[:N], dS_out[N])
        dWk = -(dW @ S[:N].mT)  # (N, Z, C, K)
        dkd = W @ dS_next.mT
        dd = (S[:N] * dS_next).sum_to_size(flat(d).shape).view(d_shape) if d is not None else None
        dE = dS_next.view(N, *S0_shape) if ctx.has_E else None
        return dW.view(U_shape), dWk.view(Wk_shape), dkd.view(kd_shape), dd, dE, dS0.view(S0_shape)
