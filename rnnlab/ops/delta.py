"""The (gated) delta rule and DeltaProduct: matrix state with a rank-one (Householder) correction.

    S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,     o_t = S_tᵀ (scale · q_t)

q, k (B, T, H, K); v (B, T, H, V); beta (B, T, H); g (B, T, H) the log-decay log α_t ≤ 0
(absent = 0 for the plain delta rule); state S (B, H, K, V) in float32.

* DeltaNet: Yang, Wang, Zhang, Shen & Kim 2024, "Parallelizing Linear Transformers with the
  Delta Rule over Sequence Length", eq. 1 (recurrence) and §3.2 (chunkwise WY form).
* Gated DeltaNet: Yang, Kautz & Hatamizadeh 2025, "Gated Delta Networks", eq. 10 (gated delta
  rule) and §3.3 (chunkwise algorithm with gating).
* Negative eigenvalues: Grazzi et al. 2024, "Unlocking State-Tracking in Linear RNNs Through
  Negative Eigenvalues": β ∈ (0, 2) puts the eigenvalues of I − β k kᵀ (‖k‖ = 1) in [−1, 1].
  Every form here accepts β up to 2.
* DeltaProduct: Siems et al. 2025, "DeltaProduct: Improving State-Tracking in Linear RNNs via
  Householder Products", eq. 3: n_h delta steps per token, the gate applied once per token.

Forms, all with the flash-linear-attention signature
``op(q, k, v, [g,] beta, scale=None, initial_state=None, output_final_state=False,
use_qk_l2norm_in_kernel=False) -> (o, final_state)``:

* ``naive_recurrent_*``: the specification, a loop over t that builds the K×K transition
  α(I − β k kᵀ) explicitly (obviously correct, O(K²V) per token).
* ``fused_recurrent_*``: the rank-one form of the same loop, O(KV) per token, few ops per step
  (the decode path of the mixers).
* ``chunk_*``: chunkwise WY/UT form (one parameterized core, ``_chunk_core``; the plain delta
  rule is the gated one with g = 0, its decay terms skipped). See ``_chunk_core`` for the
  derivation; forward and backward are written out in ``_ChunkGatedDelta``. Computed in float32
  whatever the input dtype (measured faster than bfloat16 matmuls on these CPUs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from rnnlab.ops._exp import decay_exp
from rnnlab.ops.varlen import varlen

__all__ = [
    "chunk_delta_rule", "fused_recurrent_delta_rule", "naive_recurrent_delta_rule",
    "chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule", "naive_recurrent_gated_delta_rule",
    "chunk_delta_product", "fused_recurrent_delta_product", "naive_recurrent_delta_product",
    "l2norm",
]


_TIME = ("q", "k", "v", "g", "beta")  # the time-major arguments (rnnlab.ops.varlen)
# the fla keyword arguments the forms recognise, accepted at their defaults only (rnnlab.ops.varlen.FLA_ARGS)
_FLA = ("head_first", "use_beta_sigmoid_in_kernel", "allow_neg_eigval", "state_v_first", "use_gate_in_kernel", "A_log", "dt_bias")
_FLA_CHUNK = _FLA + ("cu_seqlens_cpu", "chunk_indices", "cp_context")
_FLA_RECURRENT = _FLA + ("gk", "gv", "transpose_state_layout")
_FLA_PRODUCT = ("head_first", "cu_seqlens_cpu")


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x (..., K) -> x / sqrt(‖x‖² + eps) over the last dim (fla's l2norm), computed in float32."""
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)


# --------------------------------------------------------------------------- validation
def _check(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, beta: Tensor, initial_state: Tensor | None, nh: int | None = None) -> None:
    """Shapes: q (B, T, H, K); k (B, T, H, [n_h,] K); v (B, T, H, [n_h,] V); beta (B, T, H, [n_h]); g (B, T, H)."""
    for name, t in (("q", q), ("k", k), ("v", v), ("beta", beta)) + ((("g", g),) if g is not None else ()):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor")
    if q.dim() != 4:
        raise ValueError(f"q must be (B, T, H, K), got shape {tuple(q.shape)}")
    B, T, H, K = q.shape
    extra = () if nh is None else (nh,)
    if tuple(k.shape) != (B, T, H, *extra, K):
        raise ValueError(f"k must be (B, T, H, {'n_h, ' if nh else ''}K) = {(B, T, H, *extra, K)}, got {tuple(k.shape)}")
    if v.dim() != 4 + len(extra) or tuple(v.shape[:-1]) != (B, T, H, *extra):
        raise ValueError(f"v must be (B, T, H, {'n_h, ' if nh else ''}V) with (B, T, H{', n_h' if nh else ''}) = {(B, T, H, *extra)}, got {tuple(v.shape)}")
    if tuple(beta.shape) != (B, T, H, *extra):
        raise ValueError(f"beta must be (B, T, H{', n_h' if nh else ''}) = {(B, T, H, *extra)}, got {tuple(beta.shape)}")
    if g is not None and tuple(g.shape) != (B, T, H):
        raise ValueError(f"g must be (B, T, H) = {(B, T, H)}, got {tuple(g.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (B, H, K, v.shape[-1]):
        raise ValueError(f"initial_state must be (B, H, K, V) = {(B, H, K, v.shape[-1])}, got {tuple(initial_state.shape)}")


def _prep(q, k, scale, use_qk_l2norm_in_kernel):
    """float32 q (scaled) and k, optionally L2-normalized over K."""
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return q.float() * scale, k.float()


# --------------------------------------------------------------------------- reference loop
def _naive(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel):
    """The specification loop. q (B, T, H, K), k (B, T, H, n_h, K), v (B, T, H, n_h, V), g (B, T, H) or None,
    beta (B, T, H, n_h): per token S ← e^{g_t} S, then for each of the n_h sub-steps the K×K transition
    built explicitly, S ← (I − β k kᵀ) S + β k vᵀ; then o_t = Sᵀ (scale q_t)."""
    B, T, H, K = q.shape
    qs, ks = _prep(q, k, scale, use_qk_l2norm_in_kernel)
    S = q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32) if initial_state is None else initial_state.float()
    eye = torch.eye(K, dtype=torch.float32, device=q.device)
    gs = g.float().unbind(1) if g is not None else [None] * T
    os = []
    for qt, kt, vt, bt, gt in zip(qs.unbind(1), ks.unbind(1), v.float().unbind(1), beta.float().unbind(1), gs):
        if gt is not None:
            S = S * gt.exp()[..., None, None]
        for kj, vj, bj in zip(kt.unbind(2), vt.unbind(2), bt.unbind(2)):  # the n_h Householder steps
            transition = eye - bj[..., None, None] * kj[..., :, None] * kj[..., None, :]  # (B, H, K, K)
            S = transition @ S + bj[..., None, None] * kj[..., :, None] * vj[..., None, :]
        os.append((qt[..., None, :] @ S).squeeze(-2))
    return torch.stack(os, 1).to(v.dtype), (S if output_final_state else None)


@varlen(_TIME, fla=_FLA_RECURRENT)
def naive_recurrent_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False):
    """q, k (B, T, H, K), v (B, T, H, V), g (B, T, H) log-decay or None, beta (B, T, H),
    initial_state (B, H, K, V) or None -> (o (B, T, H, V) in v's dtype, final_state (B, H, K, V) float32 or None).

    The specification (Gated DeltaNet eq. 10): S_t = exp(g_t)(I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,
    o_t = S_tᵀ (scale q_t), with the K×K transition matrix built explicitly each step (the loop that
    DeltaProduct's reference runs with one sub-step per token).
    """
    _check(q, k, v, g, beta, initial_state)
    return _naive(q, k[:, :, :, None], v[:, :, :, None], g, beta[..., None], scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)


@varlen(("q", "k", "v", "beta"), fla=_FLA_RECURRENT)
def naive_recurrent_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False):
    """q, k (B, T, H, K), v (B, T, H, V), beta (B, T, H) -> (o (B, T, H, V), final_state (B, H, K, V) or None).
    DeltaNet (Yang et al. 2024, eq. 1): the gated rule with g = 0."""
    return naive_recurrent_gated_delta_rule(q, k, v, None, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)


# --------------------------------------------------------------------------- fused recurrent
@varlen(_TIME, fla=_FLA_RECURRENT)
def fused_recurrent_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False):
    """q, k (B, T, H, K), v (B, T, H, V), g (B, T, H) or None, beta (B, T, H), initial_state (B, H, K, V)
    -> (o (B, T, H, V), final_state or None). Rank-one form of the loop, O(KV) per token:
    S ← αS; u = β(v − Sᵀk); S ← S + k uᵀ; o = Sᵀq. Element-wise work is hoisted out of the loop."""
    _check(q, k, v, g, beta, initial_state)
    B, T, H, K = q.shape
    qs, ks = _prep(q, k, scale, use_qk_l2norm_in_kernel)
    S = q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32) if initial_state is None else initial_state.float()
    kcol, krow, qrow = ks[..., :, None], ks[..., None, :], qs[..., None, :]  # (B, T, H, K, 1), (B, T, H, 1, K)
    bv = (beta.float()[..., None] * v.float())[..., None, :]  # (B, T, H, 1, V)
    bk = beta.float()[..., None, None] * krow  # (B, T, H, 1, K)
    alpha = g.float().exp()[..., None, None].unbind(1) if g is not None else [None] * T
    os = []
    for kc, kr, bkr, bvr, qr, a in zip(kcol.unbind(1), krow.unbind(1), bk.unbind(1), bv.unbind(1), qrow.unbind(1), alpha):
        if a is not None:
            S = S * a
        u = bvr - bkr @ S  # (B, H, 1, V)
        S = torch.baddbmm(S.flatten(0, 1), kc.flatten(0, 1), u.flatten(0, 1)).view_as(S)
        os.append(qr @ S)
    o = torch.cat(os, -2).transpose(1, 2).to(v.dtype)  # (B, H, T, V) -> (B, T, H, V)
    return o, (S if output_final_state else None)


@varlen(("q", "k", "v", "beta"), fla=_FLA_RECURRENT)
def fused_recurrent_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False):
    """q, k (B, T, H, K), v (B, T, H, V), beta (B, T, H) -> (o, final_state): the gated form with g = 0."""
    return fused_recurrent_gated_delta_rule(q, k, v, None, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)


# --------------------------------------------------------------------------- chunkwise (WY / UT)
def _unit_lower_inverse(A: Tensor, block: int = 16) -> Tensor:
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


class _UnitLowerSolve(torch.autograd.Function):
    """A (..., C, C), R (..., C, M) -> X = (I + tril₋₁(A))⁻¹ R: the UT transform of all chunks at once.

    Forward: the inverse T (``_unit_lower_inverse``), then one matmul. Backward (hand-written, two
    matmuls): dR = Tᵀ dX, dA = −tril₋₁(dR Xᵀ)."""

    @staticmethod
    def forward(ctx, A, R):
        Tinv = _unit_lower_inverse(A)
        X = Tinv @ R
        ctx.save_for_backward(Tinv, X)
        return X

    @staticmethod
    def backward(ctx, dX):
        Tinv, X = ctx.saved_tensors
        dR = Tinv.mT @ dX
        return -torch.tril(dR @ X.mT, -1), dR


def _pass_forward(U: Tensor, Wk: Tensor, kd: Tensor, d: Tensor | None, E: Tensor | None, S0: Tensor) -> tuple[Tensor, Tensor]:
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


def _pass_backward(Wk: Tensor, kd: Tensor, d: Tensor | None, dW: Tensor, dS_in: Tensor | None, dS_last: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of :func:`_pass_forward` through the chunks, last to first (two matmuls per chunk).

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


class _ChunkPass(torch.autograd.Function):
    """:func:`_pass_forward` as an autograd op, chunk axis first with separate batch and head axes:
    U (N, B, H, C, V), Wk and kd (N, B, H, C, K), d (N, B, H, 1, 1) or (N, B, H, K, 1) or None,
    E (N, B, H, K, V) or None, S0 (B, H, K, V) -> W (N, B, H, C, V), S (N+1, B, H, K, V).
    Used by RWKV-7's chunkwise form (rnnlab/ops/rwkv7.py); the delta rule calls the pass directly."""

    @staticmethod
    def forward(ctx, U, Wk, kd, d, E, S0):
        N, B, H, C, V = U.shape
        flat = lambda t: t.reshape(N, B * H, *t.shape[3:]) if t is not None else None  # noqa: E731
        W, S = _pass_forward(flat(U), flat(Wk), flat(kd), flat(d), flat(E), S0.reshape(B * H, *S0.shape[2:]))
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
        dW, dS_next, dS0 = _pass_backward(flat(Wk), flat(kd), flat(d), dW, dS_out[:N], dS_out[N])
        dWk = -(dW @ S[:N].mT)  # (N, Z, C, K)
        dkd = W @ dS_next.mT
        dd = (S[:N] * dS_next).sum_to_size(flat(d).shape).view(d_shape) if d is not None else None
        dE = dS_next.view(N, *S0_shape) if ctx.has_E else None
        return dW.view(U_shape), dWk.view(Wk_shape), dkd.view(kd_shape), dd, dE, dS0.view(S0_shape)


def _chunks(x: Tensor, C: int) -> Tensor:
    """(B, T, H, *F) -> (N·B·H, C, *F) float32 contiguous, chunk-major (chunk n of every head is one
    slab), zero-padded to N = ⌈T / C⌉ chunks."""
    pad = (-x.shape[1]) % C
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad))
    view = rearrange(x, "b (n c) h ... -> n b h c ...", c=C)
    return torch.empty(view.shape, dtype=torch.float32, device=x.device).copy_(view).flatten(0, 2)


def _unchunk(x: Tensor, B: int, H: int, T: int) -> Tensor:
    """(N·B·H, C, *F) -> (B, T, H, *F), the inverse of :func:`_chunks` (a view, the padding dropped)."""
    return rearrange(x, "(n b h) c ... -> b (n c) h ...", b=B, h=H)[:, :T]


def _mac(a: Tensor, b: Tensor, alpha: float = 1.0, acc: Tensor | None = None) -> Tensor:
    """a (Z, M, L) @ b (Z, L, N) -> acc + alpha · a b (acc updated in place) or alpha · a b, through
    baddbmm: the scaling and the accumulation cost no extra pass over memory."""
    if acc is None:
        if alpha == 1.0:
            return torch.bmm(a, b)
        unused = a.new_empty(()).expand(a.shape[0], a.shape[1], b.shape[2])  # beta = 0: baddbmm never reads it
        return torch.baddbmm(unused, a, b, beta=0, alpha=alpha)
    return acc.baddbmm_(a, b, alpha=alpha)


def _decay(gam: Tensor) -> Tensor:
    """gam (Z, C) cumulative log-decay -> (Z, C, C) e^{γ_i − γ_j} for j ≤ i (exponents ≤ 0), 0 above the diagonal.
    Masked after the exp, the exponents clamped by ``decay_exp`` (rnnlab/ops/_exp.py: torch's exp is 10-100x
    slower for −inf and for results that underflow or overflow)."""
    return decay_exp(gam[:, :, None] - gam[:, None, :], max=0.0).tril_()


def _mask(X: Tensor, Y: Tensor, gam: Tensor | None, rs: Tensor | None) -> None:
    """In place: X ← tril(X ⊙ Γ), Y ← tril₋₁(diag(rs) Y ⊙ Γ), Γ_ij = e^{γ_i − γ_j} (ones if gam is None);
    X, Y (Z, C, C), gam and rs (Z, C) or None. The causal decay masks of P and A (forward), dP and −dA (backward)."""
    if gam is not None:
        dec = _decay(gam)
        X.mul_(dec)
        Y.mul_(dec)
    else:
        X.tril_()
    Y.tril_(-1)
    if rs is not None:
        Y.mul_(rs[..., None])


def _layout(q, k, v, bc, eg, to_end, scale, C):
    """q, k (B, T, H, K), v (B, T, H, V); bc, eg = e^γ, to_end = e^{γ_C − γ} (Z, C) (eg, to_end None: no decay)
    -> in chunks (Z, C, ·), float32: qc, kc, vc, β v, β e^γ k, qe = scale e^γ q, kd = e^{γ_C − γ} k."""
    qc, kc, vc = _chunks(q, C), _chunks(k, C), _chunks(v, C)
    b = bc[..., None]
    if eg is None:
        return qc, kc, vc, vc * b, kc * b, qc * scale, kc
    return qc, kc, vc, vc * b, kc * (b * eg[..., None]), qc * (eg * scale)[..., None], kc * to_end[..., None]


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """(Z, C, D), (Z, C, D) -> (Z, C): the row dot products, as one batch of tiny matmuls (einsum), measured
    1.8x faster than the product tensor and its sum."""
    return torch.einsum("zcd,zcd->zc", a, b)


def _close_grads(dq, dk, dkb, dRv, qc, kc, vc, bc, dS_C, B, H, T):
    """The backward's last element-wise step -> dq, dk, dv (B, T, H, ·), dbeta (B, T, H), dg (B, T, H) or
    None (dS_C None: not gated). dk gains β dkb (kb = β k); β's gradient is dRv·v + dkb·k; γ enters only
    through q e^{γ}, (βk) e^{γ}, k e^{−γ} (Γ_ij = e^{γ_i} e^{−γ_j}) and e^{γ_C} S_{n+1}
    (S_{n+1} = e^{γ_C}(S_n + (k e^{−γ})ᵀ W)), so its gradient is read off the input gradients:
    dγ_i = q_i·dq_i − k_i·dk_i + 2 β_i k_i·dkb_i (+ dS_C = ⟨S_{n+1}, dS_{n+1}⟩ at i = C), and g's is its
    reverse cumulative sum within the chunk (γ = cumsum(g))."""
    dk = dk.addcmul_(dkb, bc[..., None])
    s_b = _rowdot(dkb, kc)
    dbeta = _rowdot(dRv, vc).add_(s_b)
    dg = None
    if dS_C is not None:
        dgam = _rowdot(dq, qc).sub_(_rowdot(dk, kc)).add_(2 * bc * s_b)
        dgam[:, -1] += dS_C
        dg = _unchunk(dgam.flip(-1).cumsum(-1).flip(-1), B, H, T)
    return (_unchunk(dq, B, H, T), _unchunk(dk, B, H, T), _unchunk(dRv.mul_(bc[..., None]), B, H, T),
            _unchunk(dbeta, B, H, T), dg)


class _ChunkGatedDelta(torch.autograd.Function):
    """The chunkwise WY/UT form (math in :func:`_chunk_core`) with a hand-written backward.

    q, k (B, T, H, K), v (B, T, H, V), g (B, T, H) log-decay or None, beta (B, T, H), S0 (B, H, K, V)
    float32 -> o (B, T, H, V), S_final (B, H, K, V), float32 whatever the input dtype: on these cores
    bfloat16 batched matmuls (oneDNN) measured 0.5-0.8x the float32 ones (MKL), so bfloat16 inputs are
    only widened once, while being laid out in chunks. Inside, every tensor is (Z, C, ·) with Z = N·B·H
    chunk-major, zero-padded to N = ⌈T / C⌉ chunks: the batched matmuls read contiguous slabs and the
    pass over chunks reads chunk n as one slab. ``scale`` is folded into the matmuls' alpha and the
    per-row factors, never a separate pass over q."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, S0, scale, C):
        B, T, H, K = q.shape
        V = v.shape[-1]
        N, BH = -(-T // C), B * H
        Z = N * BH
        bc = _chunks(beta, C)  # (Z, C)
        gam = eg = to_end = None
        if g is not None:
            gam = _chunks(g, C).cumsum(-1)  # (Z, C): γ_i
            eg, to_end = decay_exp(gam), decay_exp(gam[:, -1:] - gam)
        qc, kc, vc, Rv, Rk, qe, kd = _layout(q, k, v, bc, eg, to_end, scale, C)
        A = _mac(kc, kc.mT)  # (Z, C, C): k_iᵀk_j, masked to A_ij = β_i e^{γ_i−γ_j} k_iᵀk_j (j < i)
        P = _mac(qc, kc.mT, alpha=scale)  # (Z, C, C): scale q_iᵀk_j, masked to the decayed causal part
        _mask(P, A, gam, bc)
        Tinv = _unit_lower_inverse(A)
        del A
        U, Wk = _mac(Tinv, Rv), _mac(Tinv, Rk)  # (Z, C, V), (Z, C, K)
        del Rv, Rk  # freed before the pass: they would only raise the peak
        d = None if gam is None else eg[:, -1].reshape(N, BH, 1, 1)  # e^{γ_C}, the chunk's whole decay
        W, S = _pass_forward(U.view(N, BH, C, V), Wk.view(N, BH, C, K), kd.view(N, BH, C, K), d, None, S0.reshape(BH, K, V))
        del U
        o = _mac(P, W.view(Z, C, V), acc=_mac(qe, S[:N].view(Z, K, V)))  # (Z, C, V)
        ctx.save_for_backward(qc, kc, vc, bc, gam, eg, to_end, Tinv, Wk, W, S, P)
        ctx.meta = scale, B, H, T, C
        return _unchunk(o, B, H, T), S[N].view(B, H, K, V)

    @staticmethod
    def backward(ctx, do, dS_final):
        qc, kc, vc, bc, gam, eg, to_end, Tinv, Wk, W, S, P = ctx.saved_tensors
        scale, B, H, T, C = ctx.meta
        Z, _, K = qc.shape
        V = vc.shape[-1]
        N, BH = S.shape[0] - 1, B * H
        gated = gam is not None
        dS_final = torch.zeros_like(S[N]) if dS_final is None else dS_final.reshape(BH, K, V).float()
        do = _chunks(do, C) if do is not None else qc.new_zeros(Z, C, V)  # (Z, C, V)
        Sin, Wz = S[:N].view(Z, K, V), W.view(Z, C, V)
        if gated:
            eg, to_end = eg[..., None], to_end[..., None]  # (Z, C, 1): factors on rows
            qf, kd, d = eg * scale, kc * to_end, eg[:, -1].reshape(N, BH, 1, 1)
        else:
            qf, kd, d = scale, kc, None
        # o = qe S_n + P W_n, qe = q ⊙ qf (temporaries are deleted once used: this bounds peak memory)
        dq = _mac(do, Sin.mT).mul_(qf)  # (Z, C, K)
        dP = _mac(do, Wz.mT)  # (Z, C, C)
        dW = torch.bmm(P.mT, do)  # = dU
        dS_in = _mac((qc * qf).mT, do).view(N, BH, K, V)
        del do
        # the pass W_n = U_n − Wk_n S_n, S_{n+1} = d_n S_n + kd_nᵀ W_n, last chunk to first
        _, dS_next, dS0 = _pass_backward(Wk.view(N, BH, C, K), kd.view(N, BH, C, K), d, dW.view(N, BH, C, V), dS_in, dS_final)
        del dS_in, kd
        dS_next = dS_next.view(Z, K, V)
        dk = _mac(Wz, dS_next.mT)  # (Z, C, K): through kd
        dS_C = None
        if gated:
            dk.mul_(to_end)
            dS_C = _rowdot(S[1:].view(Z, K, V), dS_next).sum(-1)  # ⟨S_{n+1}, dS_{n+1}⟩
        del dS_next
        # [U, Wk] = T [β v, β e^γ k] with dU = dW and dWk = −dW Sᵀ (W = U − Wk S), so dRv = Tᵀ dW,
        # dRk = Tᵀ dWk = −dRv Sᵀ, and −dA = dRv Uᵀ + dRk Wkᵀ = dRv (U − Wk S)ᵀ = dRv Wᵀ before the mask
        # (three products where the chain rule taken step by step needs five)
        dRv = _mac(Tinv.mT, dW)
        del dW
        dRk = _mac(dRv, Sin.mT, alpha=-1.0)
        nA = _mac(dRv, Wz.mT)
        dkb = dRk.mul_(eg) if gated else dRk
        _mask(dP, nA, gam, None)
        # A = tril₋₁(diag(β) K Kᵀ ⊙ Γ), P = scale tril(Q Kᵀ ⊙ Γ): with kb = β k
        dkb = _mac(nA, kc, alpha=-1.0, acc=dkb)
        dq = _mac(dP, kc, alpha=scale, acc=dq)
        dk = _mac(dP.mT, qc, alpha=scale, acc=dk)
        del dP
        dk = _mac(nA.mT, kc * bc[..., None], alpha=-1.0, acc=dk)
        del nA
        dq, dk, dv, dbeta, dg = _close_grads(dq, dk, dkb, dRv, qc, kc, vc, bc, dS_C, B, H, T)
        return dq, dk, dv, dg, dbeta, dS0.view(B, H, K, V), None, None


def _chunk_core(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, chunk_size):
    """Chunkwise gated delta rule (g None = plain delta rule). Shapes as in chunk_gated_delta_rule.

    Within a chunk of C tokens with cumulative log-decay γ_i = Σ_{j≤i} g_j and entry state S₀,
    the state is S_i = e^{γ_i} S₀ + Σ_{j≤i} e^{γ_i−γ_j} k_j w_jᵀ with pseudo-values
    w_j = β_j(v_j − e^{γ_j} S₀ᵀk_j − Σ_{m<j} e^{γ_j−γ_m}(k_jᵀk_m) w_m). In matrix form
    (I + A) W = diag(β)V − diag(β e^{γ}) K S₀ with A_jm = β_j e^{γ_j−γ_m} k_jᵀk_m (m < j), so with
    T = (I + A)⁻¹ (the UT transform, one triangular inverse per chunk, all chunks at once):
        [U, Wk] = T [diag(β) V, diag(β e^{γ}) K],   W = U − Wk S₀                 (WY form)
        O = (Q ⊙ e^{γ}) S₀ + (QKᵀ ⊙ e^{γ_i−γ_j} ⊙ causal) W
        S_C = e^{γ_C} S₀ + (K ⊙ e^{γ_C−γ})ᵀ W
    Only W and S_C need the sequential pass over chunks (``_pass_forward``, two matmuls per chunk);
    everything else is batched over all chunks. All ratios are exp of differences ≤ 0, so nothing
    overflows. The last chunk is zero-padded (zero keys, β = 0, g = 0: the state passes through).
    The backward is written by hand (``_ChunkGatedDelta``): the same matmuls transposed, the pass run
    from the last chunk to the first; memory O(T·(C+K+V) + T/C·K·V).
    """
    B, T, H, K = q.shape
    scale = K**-0.5 if scale is None else scale
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    S0 = q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32) if initial_state is None else initial_state.float()
    o, S = _ChunkGatedDelta.apply(q, k, v, g, beta, S0, scale, chunk_size)
    return o.to(v.dtype), (S if output_final_state else None)


@varlen(_TIME, fla=_FLA_CHUNK)
def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False, chunk_size=64):
    """q, k (B, T, H, K), v (B, T, H, V), g (B, T, H) log-decay (≤ 0), beta (B, T, H) in [0, 2],
    initial_state (B, H, K, V) or None -> (o (B, T, H, V) in v's dtype, final_state (B, H, K, V) float32 or None).

    Gated DeltaNet (Yang et al. 2025, eq. 10, §3.3), chunkwise WY/UT form; see ``_chunk_core``.
    scale defaults to K^-1/2. Computation in float32 whatever the input dtype.
    """
    _check(q, k, v, g, beta, initial_state)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return _chunk_core(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, chunk_size)


@varlen(("q", "k", "v", "beta"), fla=_FLA_CHUNK)
def chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False, chunk_size=64):
    """q, k (B, T, H, K), v (B, T, H, V), beta (B, T, H) in [0, 2], initial_state (B, H, K, V) or None
    -> (o (B, T, H, V), final_state or None). DeltaNet (Yang et al. 2024, eq. 1, §3.2): the chunkwise
    gated rule with g = 0 (the decay terms are skipped, not multiplied by one)."""
    return chunk_gated_delta_rule(q, k, v, None, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, chunk_size)


# --------------------------------------------------------------------------- DeltaProduct
def _interleave(q, k, v, g, beta):
    """DeltaProduct inputs -> delta-rule inputs on the length-T·n_h sequence (Siems et al. 2025, §3):
    sub-step j of token t is position t·n_h + j; the gate sits on sub-step 0, the query on the last."""
    B, T, H, nh, K = k.shape
    kk = rearrange(k, "b t h n k -> b (t n) h k")
    vv = rearrange(v, "b t h n v -> b (t n) h v")
    bb = rearrange(beta, "b t h n -> b (t n) h")
    qq = q.new_zeros(B, T, nh, H, K)
    qq[:, :, -1] = q
    qq = rearrange(qq, "b t n h k -> b (t n) h k")
    gg = None
    if g is not None:
        gg = g.new_zeros(B, T, nh, H)
        gg[:, :, 0] = g
        gg = rearrange(gg, "b t n h -> b (t n) h")
    return qq, kk, vv, gg, bb


def _delta_product(fn, q, k, v, g, beta, num_householder, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, **kw):
    if not isinstance(num_householder, int) or num_householder < 1:
        raise ValueError(f"num_householder must be a positive int, got {num_householder!r}")
    _check(q, k, v, g, beta, initial_state, nh=num_householder)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if use_qk_l2norm_in_kernel:  # normalize before interleaving: the zero query slots stay zero
        q, k = l2norm(q).to(q.dtype), l2norm(k).to(k.dtype)
    qq, kk, vv, gg, bb = _interleave(q, k, v, g, beta)
    o, s = fn(qq, kk, vv, gg, bb, scale=scale, initial_state=initial_state, output_final_state=output_final_state, **kw)
    return o[:, num_householder - 1 :: num_householder], s


@varlen(_TIME, fla=_FLA_PRODUCT)
def chunk_delta_product(q, k, v, g, beta, num_householder, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False, chunk_size=64):
    """q (B, T, H, K), k (B, T, H, n_h, K), v (B, T, H, n_h, V), g (B, T, H) log-decay or None,
    beta (B, T, H, n_h), initial_state (B, H, K, V) -> (o (B, T, H, V), final_state or None).

    DeltaProduct (Siems et al. 2025, eq. 3): per token, S ← e^{g_t} S, then for j = 1..n_h
    S ← (I − β_{t,j} k_{t,j}k_{t,j}ᵀ) S + β_{t,j} k_{t,j} v_{t,j}ᵀ; o_t = Sᵀ(scale q_t). Implemented
    by the interleaving equivalence: the chunkwise delta rule on the length-T·n_h sequence, gate on
    each token's first sub-step, output read at its last one."""
    return _delta_product(chunk_gated_delta_rule, q, k, v, g, beta, num_householder, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, chunk_size=chunk_size)


@varlen(_TIME, fla=_FLA_PRODUCT)
def fused_recurrent_delta_product(q, k, v, g, beta, num_householder, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False):
    """Same signature and shapes as :func:`chunk_delta_product`; the fused recurrent loop on the interleaved sequence."""
    return _delta_product(fused_recurrent_gated_delta_rule, q, k, v, g, beta, num_householder, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)


@varlen(_TIME, fla=_FLA_PRODUCT)
def naive_recurrent_delta_product(q, k, v, g, beta, num_householder, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False):
    """Reference loop for :func:`chunk_delta_product` (same signature), written from eq. 3 directly:
    per token the gate, then n_h explicit K×K Householder-like transitions, then the output."""
    if not isinstance(num_householder, int) or num_householder < 1:
        raise ValueError(f"num_householder must be a positive int, got {num_householder!r}")
    _check(q, k, v, g, beta, initial_state, nh=num_householder)
    return _naive(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)
