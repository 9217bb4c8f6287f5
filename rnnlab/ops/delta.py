"""The (gated) delta rule and DeltaProduct: matrix state with a rank-one (Householder) correction.

    S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,     o_t = S_tᵀ (scale · q_t)

q, k (B, T, H, K); v (B, T, H, V); beta (B, T, H); g (B, T, H) the log-decay log α_t ≤ 0
(absent = 0 for the plain delta rule); state S (B, H, K, V) in float32.

Grouped value heads (the (gated) delta rule's forms, not DeltaProduct's): v, g, beta and the state may have
HV = G·H heads, value head j reading query/key head j // G (fla's GVA and Qwen3-Next's / Qwen3.5's checkpoints:
16 key heads, 32 value heads). Each form repeats q and k to HV heads on entry (``_group``: HV·K more floats per
token, small beside the HV·K·V state; autograd sums the gradients of a group's copies), so every form computes
the same recurrence per value head as with HV = H.

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
from einops import rearrange
from torch import Tensor

from rnnlab.ops._exp import decay_exp
from rnnlab.ops.chunk import acc_dtype, cast, chunk_major, decay_ratios, mac, pass_backward, pass_forward, unchunk, unit_lower_inverse
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
    """x (..., K) -> x / sqrt(‖x‖² + eps) over the last dim (fla's l2norm), computed in float32 (float64 kept)."""
    xf = cast(x, acc_dtype(x))  # float32, float64 kept
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


def _group(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Grouped value heads: q, k (B, T, H, K) and v (B, T, G·H, V) -> q, k repeated to (B, T, G·H, K), value head j
    reading head j // G (consecutive value heads share a key head, as repeat_interleave). Other shapes pass
    through unchanged (``_check`` names what is wrong)."""
    if not all(isinstance(t, Tensor) and t.dim() == 4 for t in (q, k, v)):
        return q, k
    H, HV = q.shape[2], v.shape[2]
    if HV == H or k.shape[2] != H:
        return q, k
    if HV % H:
        raise ValueError(f"v has {HV} heads for {H} query/key heads: grouped value heads need a multiple of them")
    return q.repeat_interleave(HV // H, 2), k.repeat_interleave(HV // H, 2)


def _prep(q, k, scale, use_qk_l2norm_in_kernel):
    """float32 q (scaled) and k, optionally L2-normalized over K."""
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return cast(q, torch.float32) * scale, cast(k, torch.float32)


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
    DeltaProduct's reference runs with one sub-step per token). v, g, beta and the state may have G·H heads
    (grouped value heads, see the module docstring).
    """
    q, k = _group(q, k, v)
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
    S ← αS; u = β(v − Sᵀk); S ← S + k uᵀ; o = Sᵀq. Element-wise work is hoisted out of the loop.
    Grouped value heads as the reference."""
    q, k = _group(q, k, v)
    _check(q, k, v, g, beta, initial_state)
    B, T, H, K = q.shape
    qs, ks = _prep(q, k, scale, use_qk_l2norm_in_kernel)
    S = q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32) if initial_state is None else cast(initial_state, torch.float32)
    kcol, krow, qrow = ks[..., :, None], ks[..., None, :], qs[..., None, :]  # (B, T, H, K, 1), (B, T, H, 1, K)
    beta = cast(beta, torch.float32)
    bv = (beta[..., None] * cast(v, torch.float32))[..., None, :]  # (B, T, H, 1, V)
    bk = beta[..., None, None] * krow  # (B, T, H, 1, K)
    alpha = cast(g, torch.float32).exp()[..., None, None].unbind(1) if g is not None else [None] * T
    os = []
    for kc, kr, bkr, bvr, qr, a in zip(kcol.unbind(1), krow.unbind(1), bk.unbind(1), bv.unbind(1), qrow.unbind(1), alpha):
        if a is not None:
            S = S * a
        u = bvr - bkr @ S  # (B, H, 1, V)
        S = torch.addcmul(S, kc, u)  # the rank-one update k uᵀ: elementwise (a bmm with inner size 1 costs ~7x)
        os.append(qr @ S)
    o = cast((torch.cat(os, -2) if T > 1 else os[0]).transpose(1, 2), v.dtype)  # (B, H, T, V) -> (B, T, H, V)
    return o, (S if output_final_state else None)


@varlen(("q", "k", "v", "beta"), fla=_FLA_RECURRENT)
def fused_recurrent_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False):
    """q, k (B, T, H, K), v (B, T, H, V), beta (B, T, H) -> (o, final_state): the gated form with g = 0."""
    return fused_recurrent_gated_delta_rule(q, k, v, None, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)


# --------------------------------------------------------------------------- chunkwise (WY / UT)
def _mask(X: Tensor, Y: Tensor, gam: Tensor | None, rs: Tensor | None) -> None:
    """In place: X ← tril(X ⊙ Γ), Y ← tril₋₁(diag(rs) Y ⊙ Γ), Γ_ij = e^{γ_i − γ_j} (ones if gam is None);
    X, Y (Z, C, C), gam and rs (Z, C) or None. The causal decay masks of P and A (forward), dP and −dA (backward)."""
    if gam is not None:
        dec = decay_ratios(gam[..., None], gam[..., None]).tril_()  # e^{γ_i − γ_j} on j <= i (no autograd here: masked in place)
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
    qc, kc, vc = chunk_major(q, C), chunk_major(k, C), chunk_major(v, C)
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
        dg = unchunk(dgam.flip(-1).cumsum(-1).flip(-1), B, H, T)
    return (unchunk(dq, B, H, T), unchunk(dk, B, H, T), unchunk(dRv.mul_(bc[..., None]), B, H, T),
            unchunk(dbeta, B, H, T), dg)


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
        bc = chunk_major(beta, C)  # (Z, C)
        gam = eg = to_end = None
        if g is not None:
            gam = chunk_major(g, C).cumsum(-1)  # (Z, C): γ_i
            eg, to_end = decay_exp(gam), decay_exp(gam[:, -1:] - gam)
        qc, kc, vc, Rv, Rk, qe, kd = _layout(q, k, v, bc, eg, to_end, scale, C)
        A = mac(kc, kc.mT)  # (Z, C, C): k_iᵀk_j, masked to A_ij = β_i e^{γ_i−γ_j} k_iᵀk_j (j < i)
        P = mac(qc, kc.mT, alpha=scale)  # (Z, C, C): scale q_iᵀk_j, masked to the decayed causal part
        _mask(P, A, gam, bc)
        Tinv = unit_lower_inverse(A)
        del A
        U, Wk = mac(Tinv, Rv), mac(Tinv, Rk)  # (Z, C, V), (Z, C, K)
        del Rv, Rk  # freed before the pass: they would only raise the peak
        d = None if gam is None else eg[:, -1].reshape(N, BH, 1, 1)  # e^{γ_C}, the chunk's whole decay
        W, S = pass_forward(U.view(N, BH, C, V), Wk.view(N, BH, C, K), kd.view(N, BH, C, K), d, None, S0.reshape(BH, K, V))
        del U
        o = mac(P, W.view(Z, C, V), acc=mac(qe, S[:N].view(Z, K, V)))  # (Z, C, V)
        ctx.save_for_backward(qc, kc, vc, bc, gam, eg, to_end, Tinv, Wk, W, S, P)
        ctx.meta = scale, B, H, T, C
        return unchunk(o, B, H, T), S[N].view(B, H, K, V)

    @staticmethod
    def backward(ctx, do, dS_final):
        qc, kc, vc, bc, gam, eg, to_end, Tinv, Wk, W, S, P = ctx.saved_tensors
        scale, B, H, T, C = ctx.meta
        Z, _, K = qc.shape
        V = vc.shape[-1]
        N, BH = S.shape[0] - 1, B * H
        gated = gam is not None
        dS_final = torch.zeros_like(S[N]) if dS_final is None else dS_final.reshape(BH, K, V).float()
        do = chunk_major(do, C) if do is not None else qc.new_zeros(Z, C, V)  # (Z, C, V)
        Sin, Wz = S[:N].view(Z, K, V), W.view(Z, C, V)
        if gated:
            eg, to_end = eg[..., None], to_end[..., None]  # (Z, C, 1): factors on rows
            qf, kd, d = eg * scale, kc * to_end, eg[:, -1].reshape(N, BH, 1, 1)
        else:
            qf, kd, d = scale, kc, None
        # o = qe S_n + P W_n, qe = q ⊙ qf (temporaries are deleted once used: this bounds peak memory)
        dq = mac(do, Sin.mT).mul_(qf)  # (Z, C, K)
        dP = mac(do, Wz.mT)  # (Z, C, C)
        dW = torch.bmm(P.mT, do)  # = dU
        dS_in = mac((qc * qf).mT, do).view(N, BH, K, V)
        del do
        # the pass W_n = U_n − Wk_n S_n, S_{n+1} = d_n S_n + kd_nᵀ W_n, last chunk to first
        _, dS_next, dS0 = pass_backward(Wk.view(N, BH, C, K), kd.view(N, BH, C, K), d, dW.view(N, BH, C, V), dS_in, dS_final)
        del dS_in, kd
        dS_next = dS_next.view(Z, K, V)
        dk = mac(Wz, dS_next.mT)  # (Z, C, K): through kd
        dS_C = None
        if gated:
            dk.mul_(to_end)
            dS_C = _rowdot(S[1:].view(Z, K, V), dS_next).sum(-1)  # ⟨S_{n+1}, dS_{n+1}⟩
        del dS_next
        # [U, Wk] = T [β v, β e^γ k] with dU = dW and dWk = −dW Sᵀ (W = U − Wk S), so dRv = Tᵀ dW,
        # dRk = Tᵀ dWk = −dRv Sᵀ, and −dA = dRv Uᵀ + dRk Wkᵀ = dRv (U − Wk S)ᵀ = dRv Wᵀ before the mask
        # (three products where the chain rule taken step by step needs five)
        dRv = mac(Tinv.mT, dW)
        del dW
        dRk = mac(dRv, Sin.mT, alpha=-1.0)
        nA = mac(dRv, Wz.mT)
        dkb = dRk.mul_(eg) if gated else dRk
        _mask(dP, nA, gam, None)
        # A = tril₋₁(diag(β) K Kᵀ ⊙ Γ), P = scale tril(Q Kᵀ ⊙ Γ): with kb = β k
        dkb = mac(nA, kc, alpha=-1.0, acc=dkb)
        dq = mac(dP, kc, alpha=scale, acc=dq)
        dk = mac(dP.mT, qc, alpha=scale, acc=dk)
        del dP
        dk = mac(nA.mT, kc * bc[..., None], alpha=-1.0, acc=dk)
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
    Only W and S_C need the sequential pass over chunks (``rnnlab.ops.chunk.pass_forward``, two matmuls per chunk);
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
    scale defaults to K^-1/2. Computation in float32 whatever the input dtype. Grouped value heads: v, g, beta and
    initial_state with G·H heads (module docstring).
    """
    q, k = _group(q, k, v)
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
