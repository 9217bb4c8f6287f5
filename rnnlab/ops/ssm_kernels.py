"""Linear time-invariant SSM kernels: discretization, convolution kernels, FFT causal
convolution, and the state bookkeeping that lets a convolution continue from a state.

    continuous:  x'(t) = A x(t) + B u(t),  y(t) = C x(t)          (per channel h, state size N)
    discrete:    x_k = Ā x_{k-1} + B̄ u_k,  y_k = C x_k           (the recurrent form)
    kernel:      y = K * u,   K_l = C Ā^l B̄                       (the convolutional form)

- Diagonal (S4D, Gu et al. 2022 "On the Parameterization and Initialization of Diagonal
  State Space Models", eq. 4-6): zero-order hold Ā = exp(ΔA), B̄ = (exp(ΔA) − 1)/A · B;
  K by a Vandermonde product, factored Ā^{c·a + j} = Ā^{c·a} Ā^j (c ≈ √L) so (H, N, L) never
  lives (``diag_conv``).
- Normal plus low rank (S4, Gu et al. 2022 "Efficiently Modeling Long Sequences with
  Structured State Spaces", §3.3, Alg. 1): HiPPO-LegS A = V(Λ − P Q*)V*, bilinear
  discretization (eq. 3), the kernel's truncated generating function at the roots of unity
  from a Cauchy kernel and the Woodbury identity, then an inverse FFT (``nplr_kernel``);
  Ā's powers from its log2 L squarings (``squarings``, ``power_times``, ``krylov``).
- Dense (LSSL, Gu et al. 2021 "Combining Recurrent, Convolutional, and Continuous-time Models with Linear
  State-Space Layers", §3.2 eq. (5)-(6)): any discretized (Ā, B̄), the kernel K_l = C Ā^l B̄ materialized by
  doubling from Ā's squarings (the Krylov matrix), then the FFT convolution (``dense_ssm_conv``; the loop
  ``dense_ssm_ref`` is its specification).
- ``fft_causal_conv``: y_t = Σ_{s≤t} K_{t−s} u_s via zero-padded FFTs (length 2T).
- The HiPPO matrices (LegS and its NPLR form, S5's HiPPO-N) live in ``rnnlab.ops.hippo``.

Every public function runs with autocast off (rnnlab.ops.varlen.autocast_off): the kernels are
parameter math in the dtypes written here, which autocast's bfloat16 matmuls would break.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from rnnlab.ops.varlen import autocast_off, varlen

__all__ = [
    "zoh_diag", "diag_conv", "fft_causal_conv", "fft_causal_conv_ref",
    "bilinear_dense", "bilinear_dplr", "nplr_kernel", "squarings", "power_times", "krylov", "dense_state_terms",
    "dense_ssm_conv", "dense_ssm_ref",
]

@autocast_off  # kernel math in its own dtypes (complex128 factors, float32 Cauchy sums)
def zoh_diag(dt: Tensor, A: Tensor) -> tuple[Tensor, Tensor]:
    """dt (H,) or (H, N) real, A (H, N) complex -> (dtA, B̄ factor) with Ā = exp(dtA) and
    B̄ = (exp(dtA) − 1)/A (times B): zero-order hold of a diagonal A."""
    dtA = (dt.unsqueeze(-1) if dt.dim() == A.dim() - 1 else dt) * A
    return dtA, torch.expm1(dtA) / A


def _powers(log_z: Tensor, ls: Tensor) -> tuple[Tensor, Tensor]:
    """log_z (H, N) complex, ls (L,) float64 exponents -> (Re z^l, Im z^l), each (H, N, L) real.

    Real arithmetic (a complex exp costs ~4x exp + cos + sin on CPU); the angle l·Im log z is
    formed in float64 and reduced mod 2π, so long kernels keep float32 phase accuracy."""
    mag = torch.exp(log_z.real.unsqueeze(-1) * ls.to(log_z.real.dtype))
    ang = (log_z.imag.unsqueeze(-1).double() * ls).remainder(2 * math.pi).to(mag.dtype)
    return mag * torch.cos(ang), mag * torch.sin(ang)


def _re_dot(v: Tensor) -> Tensor:
    """v (..., N) complex -> (..., 2N) real with Re(v z) = _re_dot(v) · [Re z; Im z]."""
    return torch.cat([v.real, -v.imag], -1)


@varlen(("u",), state="h0", final=None)
def diag_conv(u: Tensor, C: Tensor, log_z: Tensor, Bbar: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """S4D's convolutional form, continuing from a state: u (B, T, H) real; C, log_z = ΔA, B̄ (H, N)
    complex; h0 (B, H, N) complex or None (zero) -> (y (B, T, H) float32, h_T (B, H, N) complex) with

        y_t = Σ_{s≤t} K_{t−s} u_s + 2 Re Σ_n C_n Ā_n^{t+1} h0_n,   K_l = 2 Re Σ_n C_n B̄_n Ā_n^l  (eq. 6, Vandermonde)
        h_T = Ā^T h0 + B̄ Σ_l Ā^{T−1−l} u_l

    (conjugate pairs halved: the factor 2).  The Vandermonde matrix Ā^l, l < T, is factored as
    Ā^{c·a + j} = Ā^{c·a} Ā^j with c ≈ √T: only O(N √T) powers are formed, and each sum over (n, l)
    is one real batched matmul against the (H, 2N, c) block [Re Ā^j; Im Ā^j] — no (H, N, T) tensor,
    forward or backward, and no transcendental per (n, l).  The initial-state outputs run only
    when h0 is given; the kernel is then the FFT causal convolution (length 2T)."""
    Bsz, T, H = u.shape
    N = log_z.shape[-1]
    c = max(1, math.ceil(math.sqrt(T)))
    m = -(-T // c)  # blocks: c·m >= T
    ls = torch.arange(max(c, m), device=u.device, dtype=torch.float64)
    Zj = torch.cat(_powers(log_z, ls[:c]), 1)  # (H, 2N, c): [Re; Im] Ā^j
    Za = torch.complex(*_powers(log_z, ls[:m] * c))  # (H, N, m): Ā^{c·a}
    v = (C * Bbar).unsqueeze(1)  # (H, 1, N): kernel taps
    if h0 is not None:  # (H, B, N): outputs of the initial state
        v = torch.cat([v, h0.transpose(0, 1) * (C * torch.exp(log_z)).unsqueeze(1)], 1)
    KY = 2 * torch.bmm(_re_dot(v.unsqueeze(2) * Za.transpose(1, 2).unsqueeze(1)).flatten(1, 2), Zj)  # (H, R·m, c)
    KY = KY.reshape(H, -1, m * c)[..., :T]  # (H, R, T)
    y = fft_causal_conv(u, KY[:, 0])
    if h0 is not None:
        y = y + KY[:, 1:].permute(1, 2, 0)
    u_rev = torch.nn.functional.pad(u.float().flip(1), (0, 0, 0, m * c - T))  # (B, m·c, H): u_{T−1−l} at l
    U = u_rev.reshape(Bsz, m, c, H).permute(3, 2, 1, 0).reshape(H, c, m * Bsz)  # (H, c, m·B)
    S = torch.bmm(Zj, U).reshape(H, 2 * N, m, Bsz)  # Σ_j Ā^j u_rev[c·a + j]
    S = torch.einsum("hnab,hna->bhn", torch.complex(S[:, :N], S[:, N:]), Za)  # (B, H, N): Σ_l u_{T−1−l} Ā^l
    h = Bbar * S
    return y, h if h0 is None else h + torch.exp(log_z * T) * h0


@varlen(("u",), state=None, final=None)
def fft_causal_conv(u: Tensor, K: Tensor) -> Tensor:
    """u (B, T, H), K (H, L) with L >= T -> y (B, T, H), y_t = Σ_{s≤t} K_{t−s} u_s (FFT of length 2T, in float32,
    float64 for float64 inputs)."""
    T = u.shape[1]
    n = 2 * T
    dt = torch.promote_types(torch.promote_types(u.dtype, K.dtype), torch.float32)
    uf = torch.fft.rfft(u.to(dt).transpose(1, 2), n=n)  # (B, H, n/2+1): FFTs along the contiguous axis
    kf = torch.fft.rfft(K[:, :T].to(dt), n=n)  # (H, n/2+1)
    return torch.fft.irfft(uf * kf, n=n)[..., :T].transpose(1, 2).contiguous()


@varlen(("u",), state=None, final=None)
def fft_causal_conv_ref(u: Tensor, K: Tensor) -> Tensor:
    """Reference for :func:`fft_causal_conv`: the sum written out as a loop over t."""
    ys = [torch.einsum("bsh,hs->bh", u[:, : t + 1], K[:, : t + 1].flip(-1)) for t in range(u.shape[1])]
    return torch.stack(ys, 1)


# --------------------------------------------------------------------------- NPLR (S4); HiPPO matrices: rnnlab.ops.hippo
@autocast_off  # kernel math in its own dtypes (complex128 factors, float32 Cauchy sums)
def bilinear_dplr(lam: Tensor, P: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear (Tustin) discretization of A = diag(λ) − P Pᴴ (S4 eq. 3) in its diagonal-plus-rank-one form:
    lam, P, B (H, N) complex, dt (H,) -> g, u, w, B̄ (H, N) with Ā = diag(g) − u wᵀ, so that
    Ā h = g ⊙ h − u (w · h) costs O(N) per channel (the stepping path), and
    Ā = (I − Δ/2 A)⁻¹ (I + Δ/2 A), B̄ = (I − Δ/2 A)⁻¹ Δ B.

    In closed form: with d = Δ/2, D = 1 − dλ, E = 1 + dλ, Sherman–Morrison gives
    (I − dA)⁻¹ = D⁻¹ − d s (D⁻¹P)(Pᴴ D⁻¹), s = 1/(1 + d Pᴴ D⁻¹ P), hence g = E/D, u = d s D⁻¹P,
    w = Pᴴ ⊙ (1 + E/D) (Re λ < 0 keeps |D| ≥ 1). Computed in complex128 (cheap at O(H N)); in complex64
    its backward was the largest error in S4's parameter gradients (measured ~1.5e-5 relative vs float64)."""
    return tuple(t.to(lam.dtype) for t in _bilinear_factors(lam, P, B, dt))


def _bilinear_factors(lam: Tensor, P: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`bilinear_dplr`'s g, u, w, B̄ in complex128."""
    lam, P, B = lam.to(torch.complex128), P.to(torch.complex128), B.to(torch.complex128)
    d = (dt / 2).to(lam.dtype).unsqueeze(-1)  # (H, 1)
    Dinv = 1 / (1 - d * lam)  # (H, N)
    g = (1 + d * lam) * Dinv  # E / D
    u, Pc = Dinv * P, P.conj()
    s = 1 / (1 + d * (Pc * u).sum(-1, keepdim=True))  # (H, 1)
    Bbar = 2 * d * (Dinv * B - d * s * u * (Pc * Dinv * B).sum(-1, keepdim=True))
    return g, d * s * u, Pc * (1 + g), Bbar


@autocast_off  # kernel math in its own dtypes (complex128 factors, float32 Cauchy sums)
def bilinear_dense(lam: Tensor, P: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """The same discretization as :func:`bilinear_dplr`, dense: lam, P, B (H, N) complex, dt (H,) ->
    Ā (H, N, N) = diag(g) − u wᵀ, B̄ (H, N) (formed in complex128, returned in lam's dtype)."""
    g, u, w, Bbar = _bilinear_factors(lam, P, B, dt)
    Abar = torch.diag_embed(g) - u.unsqueeze(-1) * w.unsqueeze(-2)
    return Abar.to(lam.dtype), Bbar.to(lam.dtype)


@autocast_off  # kernel math in its own dtypes (complex128 factors, float32 Cauchy sums)
def nplr_kernel(lam: Tensor, P: Tensor, B: Tensor, Ct: Tensor, dt: Tensor, L: int, chunk: int = 256) -> Tensor:
    """S4's kernel (Alg. 1): lam, P, B, Ct (H, N) complex (Ct = C̃ = C (I − Ā^L)), dt (H,) -> K (H, L) real.

    The truncated generating function K̂(ω) = C̃ (I − Āω)⁻¹ B̄ at the L roots of unity ω is
    c(ω) C̃ (g(ω) − A)⁻¹ B with g = (2/Δ)(1 − ω)/(1 + ω), c = 2/(1 + ω) (bilinear Ā, B̄) and
    A = Λ − P Pᴴ; by the Woodbury identity it is a sum of four Cauchy kernels over the diagonal
    Λ; an inverse FFT gives K.  Written as 2 [(2/Δ)(1 − ω) − (1 + ω)A]⁻¹ (the same quantity
    multiplied through by 1 + ω) so ω = −1 (L even) needs no division by zero.  Chunked over ω,
    with a hand-written backward (``_CauchySums``).

    The four Cauchy sums Σ_n v_n r_n(ω) share r_n(ω) = 1/((2/Δ)(1 − ω) − (1 + ω)λ_n): r is formed
    in real arithmetic and the sums are one real batched matmul (complex element-wise ops on CPU
    cost ~10x their real equivalents)."""
    omega = torch.exp(-2j * math.pi * torch.arange(L, device=lam.device, dtype=torch.float64) / L).to(lam.dtype)
    two_dt = (2.0 / dt.to(lam.real.dtype))[:, None, None]  # (H, 1, 1)
    Pc = P.conj()
    V = torch.stack([Ct * B, Ct * P, Pc * B, Pc * P], 1)  # (H, 4, N): the Cauchy numerators
    # with r = (zr − i zi)/|z|²:  Re(v r) = [Re v, Im v]·[zr; zi]/|z|²,  Im(v r) = [Im v, −Re v]·[zr; zi]/|z|²
    W = torch.cat([torch.cat([V.real, V.imag], -1), torch.cat([V.imag, -V.real], -1)], 1)  # (H, 8, 2N)
    k = _CauchySums.apply(W, lam.real.unsqueeze(-1), lam.imag.unsqueeze(-1), two_dt, omega, chunk)  # (H, 8, L)
    k00, k01, k10, k11 = torch.complex(k[:, :4], k[:, 4:]).unbind(1)  # Cauchy sums, (H, L)
    b = 1 + omega
    return torch.fft.ifft(2 * (k00 - b * k01 * k10 / (1 + b * k11)), n=L, dim=-1).real


def _cauchy_r(lr: Tensor, li: Tensor, two_dt: Tensor, omega: Tensor) -> Tensor:
    """lr, li (H, N, 1), two_dt (H, 1, 1), ω (l,) -> R (H, 2N, l) = [Re; −Im] of 1/z, z = (2/Δ)(1 − ω) − (1 + ω)λ."""
    a, b = 1 - omega, 1 + omega
    zr = torch.addcmul(torch.addcmul(two_dt * a.real, b.real, lr, value=-1), b.imag, li)  # (H, N, l)
    zi = torch.addcmul(torch.addcmul(two_dt * a.imag, b.real, li, value=-1), b.imag, lr, value=-1)
    inv = torch.addcmul(zr * zr, zi, zi).reciprocal_()
    return torch.cat([zr.mul_(inv), zi.mul_(inv)], 1)


class _CauchySums(torch.autograd.Function):
    """k = W R(λ, 2/Δ, ω), W (H, 8, 2N) -> (H, 8, L), chunked over ω so only an (H, 2N, chunk) block of R
    lives at a time; a hand-written backward recomputes each block (no autograd graph over (H, N, L)).

    With q = R₁ + i R₂ = 1/z̄ and G = R's gradient as G₁ + i G₂: ∂L/∂z̄ = −(1/z)² G, so
    ∂L/∂zr = −(s_r G₁ − s_i G₂), ∂L/∂zi = s_r G₂ + s_i G₁ with 1/z² = s_r + i s_i = (R₁² − R₂²) − 2i R₁R₂;
    then z = (2/Δ)(1 − ω) − (1 + ω)λ gives λ's and 2/Δ's gradients as sums over ω (matrix-vector products)."""

    @staticmethod
    def forward(ctx, W, lr, li, two_dt, omega, chunk):
        ctx.save_for_backward(W, lr, li, two_dt, omega)
        ctx.chunk = chunk
        return torch.cat([torch.bmm(W, _cauchy_r(lr, li, two_dt, omega[l0 : l0 + chunk]))
                          for l0 in range(0, omega.shape[0], chunk)], -1)

    @staticmethod
    def backward(ctx, gk):
        W, lr, li, two_dt, omega = ctx.saved_tensors
        N = lr.shape[1]
        gW, glr, gli, gtd = torch.zeros_like(W), torch.zeros_like(lr), torch.zeros_like(li), torch.zeros_like(two_dt)
        Wt = W.transpose(1, 2)
        for l0 in range(0, omega.shape[0], ctx.chunk):
            om, g = omega[l0 : l0 + ctx.chunk], gk[..., l0 : l0 + ctx.chunk]
            R = _cauchy_r(lr, li, two_dt, om)
            gW.baddbmm_(g, R.transpose(1, 2))
            G = torch.bmm(Wt, g)
            (R1, R2), (G1, G2) = R.split(N, 1), G.split(N, 1)
            sr, si = R1 * R1 - R2 * R2, -2 * R1 * R2
            gzr, gzi = si * G2 - sr * G1, torch.addcmul(sr * G2, si, G1)
            a, b = 1 - om, 1 + om
            glr -= (gzr @ b.real + gzi @ b.imag).unsqueeze(-1)
            gli += (gzr @ b.imag - gzi @ b.real).unsqueeze(-1)
            gtd += (gzr @ a.real + gzi @ a.imag).sum(-1).view_as(gtd)
        return gW, glr, gli, gtd, None, None


@autocast_off  # kernel math in its own dtypes (complex128 factors, float32 Cauchy sums)
def squarings(Abar: Tensor, n: int) -> list[Tensor]:
    """Abar (H, N, N) -> [Ā, Ā², Ā⁴, …, Ā^(2^k)] with 2^k <= max(n, 1): the log2 n matmuls every power below n needs."""
    sq = [Abar]
    while 2 ** len(sq) <= n:
        sq.append(sq[-1] @ sq[-1])
    return sq


@autocast_off  # kernel math in its own dtypes (complex128 factors, float32 Cauchy sums)
def power_times(sq: list[Tensor], n: int, v: Tensor | None = None, right: bool = False) -> Tensor:
    """Ā^n v for v (H, N, X), or v Ā^n for v (H, X, N) with ``right``, from ``squarings`` (powers of one
    matrix commute, so the binary digits of n apply in any order); v None (n >= 1): the matrix Ā^n
    (as torch.linalg.matrix_power, the factors in increasing order)."""
    for k in range(n.bit_length()):
        if n >> k & 1:
            v = sq[k] if v is None else v @ sq[k] if right else sq[k] @ v
    return v


@autocast_off  # kernel math in its own dtypes (complex128 factors, float32 Cauchy sums)
def krylov(sq: list[Tensor], Bbar: Tensor, C: Tensor | None, L: int) -> tuple[Tensor, Tensor | None]:
    """By doubling, from ``squarings(Ā, L)``: Bbar, C (H, N) ->
    KB (H, N, L) with KB_l = Ā^l B̄ and CK (H, L, N) with CK_l = C Ā^{l+1} (None if C is None)."""
    KB, CK, n = Bbar.unsqueeze(-1), None if C is None else C.unsqueeze(-2) @ sq[0], 1
    for M in sq:
        if n >= L:
            break
        KB = torch.cat([KB, M @ KB], -1)
        CK = None if C is None else torch.cat([CK, CK @ M], -2)
        n *= 2
    return KB[..., :L], None if C is None else CK[:, :L]


@autocast_off  # kernel math in its own dtypes (complex128 factors, float32 Cauchy sums)
def dense_state_terms(u: Tensor, sq: list[Tensor], Bbar: Tensor, C: Tensor, h0: Tensor | None,
                      chunk: int = 256) -> tuple[Tensor | None, Tensor]:
    """Continue a convolution from a state, dense Ā: u (B, T, H) real, sq = ``squarings(Ā, T)``, Bbar, C (H, N),
    h0 (B, H, N) complex or None (zero) -> (y0 (B, T, H) complex, y0_t = C Ā^{t+1} h0 (None without h0);
    h_T (B, H, N) = Ā^T h0 + Σ Ā^{T−1−l} B̄ u_l).  Chunked over time: per chunk the Krylov blocks of
    length <= chunk, then Ā^n (from the squarings) carries the state."""
    Bsz, T, H = u.shape
    L = min(chunk, T)
    KB, CK = krylov(sq, Bbar, None if h0 is None else C, L)
    h = hz = None if h0 is None else h0.permute(1, 2, 0)  # (H, N, B)
    ys = []
    for l0 in range(0, T, L):
        uc = u[:, l0 : l0 + L].to(KB.dtype)
        n = uc.shape[1]
        if h0 is not None:
            ys.append(torch.einsum("htn,hnb->bth", CK[:, :n], hz))
            hz = power_times(sq, L, hz)
        h = (power_times(sq, n, h) if l0 or h0 is not None else 0) + torch.einsum("bth,hnt->hnb", uc.flip(1), KB[..., :n])
    return (torch.cat(ys, 1) if ys else None), h.permute(2, 0, 1)


@varlen(("u",), state="h0", final=None)
def dense_ssm_conv(u: Tensor, Abar: Tensor, Bbar: Tensor, C: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The convolutional view of a dense discrete SSM (LSSL eq. (6)): u (B, T, H), Ā (H, N, N), B̄, C (H, N) real,
    h0 (B, H, N) or None (zero) -> (y (B, T, H), h_T (B, H, N)) with

        y_t = Σ_{s≤t} K_{t−s} u_s + C Ā^{t+1} h0,   K_l = C Ā^l B̄ (the Krylov kernel, by doubling from log2 T squarings)
        h_T = Ā^T h0 + Σ_l Ā^{T−1−l} B̄ u_l                                   (``dense_state_terms``, chunked)

    In Ā's dtype (the layer chooses it); the initial-state outputs run only when h0 is given."""
    T = u.shape[1]
    sq = squarings(Abar, T)
    KB, _ = krylov(sq, Bbar, None, T)  # (H, N, T): Ā^l B̄
    y = fft_causal_conv(u.to(Abar.dtype), torch.einsum("hn,hnt->ht", C, KB))
    y0, h = dense_state_terms(u, sq, Bbar, C, h0)
    return (y if y0 is None else y + y0), h


@varlen(("u",), state="h0", final=None)
def dense_ssm_ref(u: Tensor, Abar: Tensor, Bbar: Tensor, C: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrent view (LSSL eq. (5)), the specification of :func:`dense_ssm_conv` (same signature):
    h_t = Ā h_{t−1} + B̄ u_t, y_t = C h_t, one step per token."""
    h = u.new_zeros(u.shape[0], *Bbar.shape).to(Abar.dtype) if h0 is None else h0.to(Abar.dtype)
    ys = []
    for ut in u.to(Abar.dtype).unbind(1):
        h = torch.einsum("hnm,bhm->bhn", Abar, h) + Bbar * ut[..., None]
        ys.append((h * C).sum(-1))
    return torch.stack(ys, 1), h
