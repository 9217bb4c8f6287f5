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
  rule is the gated one with g = 0). See ``_chunk_core`` for the derivation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

__all__ = [
    "chunk_delta_rule", "fused_recurrent_delta_rule", "naive_recurrent_delta_rule",
    "chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule", "naive_recurrent_gated_delta_rule",
    "chunk_delta_product", "fused_recurrent_delta_product", "naive_recurrent_delta_product",
    "l2norm",
]


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
def naive_recurrent_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False):
    """q, k (B, T, H, K), v (B, T, H, V), g (B, T, H) log-decay or None, beta (B, T, H),
    initial_state (B, H, K, V) or None -> (o (B, T, H, V) in v's dtype, final_state (B, H, K, V) float32 or None).

    The specification (Gated DeltaNet eq. 10): S_t = exp(g_t)(I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,
    o_t = S_tᵀ (scale q_t), with the K×K transition matrix built explicitly each step.
    """
    _check(q, k, v, g, beta, initial_state)
    B, T, H, K = q.shape
    qs, ks = _prep(q, k, scale, use_qk_l2norm_in_kernel)
    S = q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32) if initial_state is None else initial_state.float()
    eye = torch.eye(K, dtype=torch.float32, device=q.device)
    gs = g.float().unbind(1) if g is not None else [None] * T
    os = []
    for qt, kt, vt, bt, gt in zip(qs.unbind(1), ks.unbind(1), v.float().unbind(1), beta.float().unbind(1), gs):
        transition = eye - bt[..., None, None] * kt[..., :, None] * kt[..., None, :]  # (B, H, K, K)
        if gt is not None:
            transition = transition * gt.exp()[..., None, None]
        S = transition @ S + bt[..., None, None] * kt[..., :, None] * vt[..., None, :]
        os.append((qt[..., None, :] @ S).squeeze(-2))
    o = torch.stack(os, 1).to(v.dtype)
    return o, (S if output_final_state else None)


def naive_recurrent_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False):
    """q, k (B, T, H, K), v (B, T, H, V), beta (B, T, H) -> (o (B, T, H, V), final_state (B, H, K, V) or None).
    DeltaNet (Yang et al. 2024, eq. 1): the gated rule with g = 0."""
    return naive_recurrent_gated_delta_rule(q, k, v, None, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)


# --------------------------------------------------------------------------- fused recurrent
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


def fused_recurrent_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False):
    """q, k (B, T, H, K), v (B, T, H, V), beta (B, T, H) -> (o, final_state): the gated form with g = 0."""
    return fused_recurrent_gated_delta_rule(q, k, v, None, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)


# --------------------------------------------------------------------------- chunkwise (WY / UT)
def _mm(lowp: bool):
    """Matmul for the batched intra-chunk products: bfloat16 operands (fp32 accumulation, ~5x the
    fp32 throughput on CPU) when the inputs were bfloat16, else plain float32."""
    if lowp:
        return lambda a, b: (a.bfloat16() @ b.bfloat16()).float()
    return torch.matmul


class _UnitLowerSolve(torch.autograd.Function):
    """A (..., C, C), R (..., C, M) -> X = (I + tril₋₁(A))⁻¹ R: the UT transform of all chunks at once.

    Forward: the inverse T by one batched triangular solve (only A's strictly lower part is read),
    then one matmul. Backward (hand-written, two matmuls): dR = Tᵀ dX, dA = −tril₋₁(dR Xᵀ)."""

    @staticmethod
    def forward(ctx, A, R, lowp):
        C = A.shape[-1]
        eye = torch.eye(C, dtype=A.dtype, device=A.device)
        Tinv = torch.linalg.solve_triangular(A, eye.expand_as(A), upper=False, unitriangular=True)
        X = _mm(lowp)(Tinv, R)
        ctx.lowp = lowp
        ctx.save_for_backward(Tinv, X)
        return X

    @staticmethod
    def backward(ctx, dX):
        Tinv, X = ctx.saved_tensors
        mm = _mm(ctx.lowp)
        dR = mm(Tinv.mT, dX)
        return -torch.tril(mm(dR, X.mT), -1), dR, None


class _ChunkPass(torch.autograd.Function):
    """The sequential part of the WY form, over chunks n = 0..N-1 (chunk axis first):

        W_n = U_n − Wk_n S_n,   S_{n+1} = d_n ⊙ S_n + kd_nᵀ W_n (+ E_n)

    U (N, B, H, C, V), Wk and kd (N, B, H, C, K), d (N, B, H, 1, 1) scalar or (N, B, H, K, 1)
    per-key chunk decay, or None; E (N, B, H, K, V) or None; S0 (B, H, K, V)
    -> W (N, B, H, C, V), S (N+1, B, H, K, V): the state entering each chunk, then the final one.
    Two small matmuls per chunk each way; the backward's other products are batched over chunks.
    Shared by the delta rule (here) and RWKV-7's chunkwise form (rnnlab/ops/rwkv7.py)."""

    @staticmethod
    def forward(ctx, U, Wk, kd, d, E, S0):
        N, B, H, C, V = U.shape
        K = Wk.shape[-1]
        W = torch.empty_like(U)
        S = U.new_empty(N + 1, B, H, K, V)
        S[0] = S0
        U3, Wk3, kdT3, W3, S3 = U.view(N, B * H, C, V), Wk.view(N, B * H, C, K), kd.view(N, B * H, C, K).mT, W.view(N, B * H, C, V), S.view(N + 1, B * H, K, V)
        for n in range(N):
            torch.baddbmm(U3[n], Wk3[n], S3[n], alpha=-1, out=W3[n])
            if d is None:
                S[n + 1].copy_(S[n])
            else:
                torch.mul(S[n], d[n], out=S[n + 1])
            if E is not None:
                S[n + 1].add_(E[n])
            S3[n + 1].baddbmm_(kdT3[n], W3[n])
        ctx.has_E = E is not None
        ctx.save_for_backward(Wk, kd, d, W, S)
        return W, S

    @staticmethod
    def backward(ctx, dW_out, dS_out):
        Wk, kd, d, W, S = ctx.saved_tensors
        N, B, H, C, V = W.shape
        K = Wk.shape[-1]
        dW = dW_out.clone() if dW_out is not None else torch.zeros_like(W)
        dS_out = dS_out if dS_out is not None else torch.zeros_like(S)
        dS_next = torch.empty_like(S[1:])  # gradient w.r.t. S_{n+1}, kept for the batched products below
        dS = dS_out[N].clone()
        Wk3, kd3, dW3 = Wk.view(N, B * H, C, K), kd.view(N, B * H, C, K), dW.view(N, B * H, C, V)
        for n in range(N - 1, -1, -1):
            dS_next[n] = dS
            dW3[n].baddbmm_(kd3[n], dS.view(B * H, K, V))
            dS_prev = dS * d[n] if d is not None else dS.clone()
            dS_prev.view(B * H, K, V).baddbmm_(Wk3[n].mT, dW3[n], alpha=-1)
            dS = dS_prev.add_(dS_out[n])
        dWk = -(dW @ S[:N].mT)  # (N, B, H, C, K)
        dkd = W @ dS_next.mT  # (N, B, H, C, K)
        dd = (S[:N] * dS_next).sum_to_size(d.shape) if d is not None else None
        return dW, dWk, dkd, dd, (dS_next if ctx.has_E else None), dS


def _chunk_core(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, chunk_size):
    """Chunkwise gated delta rule (g None = plain delta rule). Shapes as in chunk_gated_delta_rule.

    Within a chunk of C tokens with cumulative log-decay γ_i = Σ_{j≤i} g_j and entry state S₀,
    the state is S_i = e^{γ_i} S₀ + Σ_{j≤i} e^{γ_i−γ_j} k_j w_jᵀ with pseudo-values
    w_j = β_j(v_j − e^{γ_j} S₀ᵀk_j − Σ_{m<j} e^{γ_j−γ_m}(k_jᵀk_m) w_m). In matrix form
    (I + A) W = diag(β)V − diag(β e^{γ}) K S₀ with A_jm = β_j e^{γ_j−γ_m} k_jᵀk_m (m < j), so with
    T = (I + A)⁻¹ (the UT transform, one triangular solve per chunk, all chunks at once):
        [U, Wk] = T [diag(β) V, diag(β e^{γ}) K],   W = U − Wk S₀                 (WY form)
        O = (Q ⊙ e^{γ}) S₀ + (QKᵀ ⊙ e^{γ_i−γ_j} ⊙ causal) W
        S_C = e^{γ_C} S₀ + (K ⊙ e^{γ_C−γ})ᵀ W
    Only W and S_C need the sequential pass over chunks (``_ChunkPass``, two matmuls per chunk);
    everything else is batched over all chunks. All ratios are exp of differences ≤ 0, so nothing
    overflows. Gradients: autograd through the batched parts, hand-written backward for the UT
    transform and the chunk pass; memory O(T·(C+K+V) + T/C·K·V).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    lowp = q.dtype == torch.bfloat16
    mm = _mm(lowp)
    qs, ks = _prep(q, k, scale, use_qk_l2norm_in_kernel)
    vf, bf = v.float(), beta.float()
    pad = (-T) % C
    if pad:  # zero keys, β = 0, g = 0 after the end: the state passes through unchanged
        qs, ks, vf = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (qs, ks, vf))
        bf = F.pad(bf, (0, 0, 0, pad))
    # chunk axis first, one contiguous copy each: every batched matmul reads them without copies
    qc = rearrange(qs, "b (n c) h k -> n b h c k", c=C).contiguous()
    kc = rearrange(ks, "b (n c) h k -> n b h c k", c=C).contiguous()
    vc = rearrange(vf, "b (n c) h v -> n b h c v", c=C).contiguous()
    bc = rearrange(bf, "b (n c) h -> n b h c", c=C)[..., None]  # (N, B, H, C, 1)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    kb = kc * bc
    A = mm(kb, kc.mT)  # (N, B, H, C, C); only the strictly lower part is used
    P = mm(qc, kc.mT)  # (N, B, H, C, C)
    if g is not None:
        gf = F.pad(g.float(), (0, 0, 0, pad)) if pad else g.float()
        gam = rearrange(gf, "b (n c) h -> n b h c", c=C).cumsum(-1)  # (N, B, H, C)
        diff = gam[..., :, None] - gam[..., None, :]  # γ_i − γ_j
        decay = diff.masked_fill(~causal, -float("inf")).exp()  # (N, B, H, C, C), ≤ 1, zero above the diagonal
        A, P = A * decay, P * decay
        eg = gam.exp()[..., None]  # (N, B, H, C, 1)
        qc, kbg = qc * eg, kb * eg
        kd = kc * (gam[..., -1:, None] - gam[..., None]).exp()  # k_j e^{γ_C − γ_j}
        dC = gam[..., -1].exp()[..., None, None]  # (N, B, H, 1, 1)
    else:
        P = P.masked_fill(~causal, 0.0)
        kbg, kd, dC = kb, kc, None
    X = _UnitLowerSolve.apply(A, torch.cat([vc * bc, kbg], -1), lowp)  # (N, B, H, C, V + K)
    U, Wk = X[..., :V], X[..., V:]
    S0 = q.new_zeros(B, H, K, V, dtype=torch.float32) if initial_state is None else initial_state.float()
    W, S = _ChunkPass.apply(U.contiguous(), Wk.contiguous(), kd, dC, None, S0)
    o = mm(qc, S[:-1]) + mm(P, W)  # (N, B, H, C, V)
    o = rearrange(o, "n b h c v -> b (n c) h v")[:, :T].to(v.dtype)
    return o, (S[-1] if output_final_state else None)


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


def chunk_delta_product(q, k, v, g, beta, num_householder, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False, chunk_size=64):
    """q (B, T, H, K), k (B, T, H, n_h, K), v (B, T, H, n_h, V), g (B, T, H) log-decay or None,
    beta (B, T, H, n_h), initial_state (B, H, K, V) -> (o (B, T, H, V), final_state or None).

    DeltaProduct (Siems et al. 2025, eq. 3): per token, S ← e^{g_t} S, then for j = 1..n_h
    S ← (I − β_{t,j} k_{t,j}k_{t,j}ᵀ) S + β_{t,j} k_{t,j} v_{t,j}ᵀ; o_t = Sᵀ(scale q_t). Implemented
    by the interleaving equivalence: the chunkwise delta rule on the length-T·n_h sequence, gate on
    each token's first sub-step, output read at its last one."""
    return _delta_product(chunk_gated_delta_rule, q, k, v, g, beta, num_householder, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, chunk_size=chunk_size)


def fused_recurrent_delta_product(q, k, v, g, beta, num_householder, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False):
    """Same signature and shapes as :func:`chunk_delta_product`; the fused recurrent loop on the interleaved sequence."""
    return _delta_product(fused_recurrent_gated_delta_rule, q, k, v, g, beta, num_householder, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)


def naive_recurrent_delta_product(q, k, v, g, beta, num_householder, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False):
    """Reference loop for :func:`chunk_delta_product` (same signature), written from eq. 3 directly:
    per token the gate, then n_h explicit K×K Householder-like transitions, then the output."""
    if not isinstance(num_householder, int) or num_householder < 1:
        raise ValueError(f"num_householder must be a positive int, got {num_householder!r}")
    _check(q, k, v, g, beta, initial_state, nh=num_householder)
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
            transition = eye - bj[..., None, None] * kj[..., :, None] * kj[..., None, :]
            S = transition @ S + bj[..., None, None] * kj[..., :, None] * vj[..., None, :]
        os.append((qt[..., None, :] @ S).squeeze(-2))
    return torch.stack(os, 1).to(v.dtype), (S if output_final_state else None)
