"""Linear time-invariant SSM kernels: discretization, convolution kernels, FFT causal
convolution, and the state bookkeeping that lets a convolution continue from a state.

    continuous:  x'(t) = A x(t) + B u(t),  y(t) = C x(t)          (per channel h, state size N)
    discrete:    x_k = Ā x_{k-1} + B̄ u_k,  y_k = C x_k           (the recurrent form)
    kernel:      y = K * u,   K_l = C Ā^l B̄                       (the convolutional form)

- Diagonal (S4D, Gu et al. 2022 "On the Parameterization and Initialization of Diagonal
  State Space Models", eq. 4-6): zero-order hold Ā = exp(ΔA), B̄ = (exp(ΔA) − 1)/A · B;
  K by a Vandermonde product, chunked over l so (H, N, L) never lives whole (``diag_conv``).
- Normal plus low rank (S4, Gu et al. 2022 "Efficiently Modeling Long Sequences with
  Structured State Spaces", §3.3, Alg. 1): HiPPO-LegS A = V(Λ − P Q*)V*, bilinear
  discretization (eq. 3), the kernel's truncated generating function at the roots of unity
  from a Cauchy kernel and the Woodbury identity, then an inverse FFT.
- ``fft_causal_conv``: y_t = Σ_{s≤t} K_{t−s} u_s via zero-padded FFTs (length 2T).
- ``hippo_legs``, ``nplr_legs``: the HiPPO-LegS matrix and its NPLR form; ``hippo_n_diag``
  its normal part diagonalized (S5's HiPPO-N initialization).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = [
    "zoh_diag", "diag_conv", "fft_causal_conv", "fft_causal_conv_ref",
    "hippo_legs", "nplr_legs", "hippo_n_diag", "bilinear_dense", "nplr_kernel", "krylov", "dense_state_terms",
]

_CHUNK = 512  # time chunk of the Vandermonde products: (H, 2N, 512) floats at a time


def zoh_diag(dt: Tensor, A: Tensor) -> tuple[Tensor, Tensor]:
    """dt (H,) or (H, N) real, A (H, N) complex -> (dtA, B̄ factor) with Ā = exp(dtA) and
    B̄ = (exp(dtA) − 1)/A (times B): zero-order hold of a diagonal A."""
    dtA = (dt.unsqueeze(-1) if dt.dim() == A.dim() - 1 else dt) * A
    return dtA, torch.expm1(dtA) / A


def _powers(log_z: Tensor, l0: int, l1: int) -> Tensor:
    """log_z (H, N) complex -> z^l for l in [l0, l1) as [Re; Im] stacked: (H, 2N, l1 − l0) real.

    Real arithmetic (a complex exp costs ~4x exp + cos + sin on CPU); the angle l·Im log z is
    formed in float64 and reduced mod 2π, so long kernels keep float32 phase accuracy."""
    ls = torch.arange(l0, l1, device=log_z.device, dtype=torch.float64)
    mag = torch.exp(log_z.real.unsqueeze(-1) * ls.to(log_z.real.dtype))
    ang = (log_z.imag.unsqueeze(-1).double() * ls).remainder(2 * math.pi).to(mag.dtype)
    return torch.cat([mag * torch.cos(ang), mag * torch.sin(ang)], -2)


def _re_dot(v: Tensor) -> Tensor:
    """v (..., N) complex -> (..., 2N) real with Re(v z) = _re_dot(v) · [Re z; Im z]."""
    return torch.cat([v.real, -v.imag], -1)


def _diag_conv_chunk(vw: Tensor, u_rev: Tensor, log_z: Tensor, l0: int, l1: int) -> tuple[Tensor, Tensor]:
    """One time chunk of diag_conv: vw (H, 1+B, 2N), u_rev (H, L, B) -> (kernel taps and state
    outputs (H, 1+B, L), state sum (H, 2N, B)); contiguous operands keep both bmms (and their
    backward) in one batched GEMM instead of a loop over H."""
    Z = _powers(log_z, l0, l1)  # (H, 2N, L)
    return torch.bmm(vw, Z), torch.bmm(Z, u_rev)


def diag_conv(u: Tensor, C: Tensor, log_z: Tensor, Bbar: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """S4D's convolutional form, continuing from a state: u (B, T, H) real; C, log_z = ΔA, B̄ (H, N)
    complex; h0 (B, H, N) complex -> (y (B, T, H) float32, h_T (B, H, N) complex) with

        y_t = Σ_{s≤t} K_{t−s} u_s + 2 Re Σ_n C_n Ā_n^{t+1} h0_n,   K_l = 2 Re Σ_n C_n B̄_n Ā_n^l  (eq. 6, Vandermonde)
        h_T = Ā^T h0 + B̄ Σ_l Ā^{T−1−l} u_l

    (conjugate pairs halved: the factor 2).  The powers Ā^l are made once per time chunk and
    serve all three sums as real batched matmuls; under autograd each chunk is checkpointed, so
    the (H, N, T) powers never live whole, forward or backward."""
    Bsz, T, H = u.shape
    N = log_z.shape[-1]
    v = _re_dot(C * Bbar).unsqueeze(1)  # (H, 1, 2N): kernel taps
    w = _re_dot(h0 * (C * torch.exp(log_z))).transpose(0, 1)  # (H, B, 2N): outputs of the initial state
    vw = 2 * torch.cat([v, w], 1).contiguous()  # (H, 1+B, 2N)
    u_rev = u.float().flip(1).permute(2, 1, 0).contiguous()  # (H, T, B): u_{T−1−l} at position l
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (u, C, log_z, Bbar, h0))
    KY, S = [], 0
    for l0 in range(0, T, _CHUNK):
        l1 = min(T, l0 + _CHUNK)
        args = (vw, u_rev[:, l0:l1], log_z, l0, l1)
        ky, s = checkpoint(_diag_conv_chunk, *args, use_reentrant=False) if grad else _diag_conv_chunk(*args)
        KY.append(ky)
        S = S + s
    KY = torch.cat(KY, -1)  # (H, 1+B, T)
    y = fft_causal_conv(u, KY[:, 0]) + KY[:, 1:].permute(1, 2, 0)
    S = torch.complex(S[:, :N], S[:, N:]).permute(2, 0, 1)  # (B, H, N): Σ_l u_{T−1−l} Ā^l
    return y, Bbar * S + torch.exp(log_z * T) * h0


def fft_causal_conv(u: Tensor, K: Tensor) -> Tensor:
    """u (B, T, H), K (H, L) with L >= T -> y (B, T, H), y_t = Σ_{s≤t} K_{t−s} u_s (float32 FFT, length 2T)."""
    T = u.shape[1]
    n = 2 * T
    uf = torch.fft.rfft(u.float(), n=n, dim=1)  # (B, n/2+1, H)
    kf = torch.fft.rfft(K[:, :T].float(), n=n, dim=-1).t()  # (n/2+1, H)
    return torch.fft.irfft(uf * kf, n=n, dim=1)[:, :T]


def fft_causal_conv_ref(u: Tensor, K: Tensor) -> Tensor:
    """Reference for :func:`fft_causal_conv`: the sum written out as a loop over t."""
    ys = [torch.einsum("bsh,hs->bh", u[:, : t + 1], K[:, : t + 1].flip(-1)) for t in range(u.shape[1])]
    return torch.stack(ys, 1)


# --------------------------------------------------------------------------- HiPPO and NPLR (S4)
def hippo_legs(N: int) -> tuple[Tensor, Tensor]:
    """HiPPO-LegS (Gu et al. 2020, eq. 2 of S4): A (N, N), B (N,) in float64, A = −(...)."""
    q = torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1)
    A = -torch.tril(q[:, None] * q[None, :], -1) - torch.diag(torch.arange(N, dtype=torch.float64) + 1)
    return A, q.clone()


def nplr_legs(N: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """NPLR form of HiPPO-LegS (S4 §3.3, Thm. 1): A = V (Λ − P Pᴴ) Vᴴ with
    P_n = sqrt(n + 1/2) in the original basis.  Returns Λ (N,), P (N,), B (N,), V (N, N),
    complex128, with P and B already in the eigenbasis (Vᴴ P, Vᴴ B)."""
    A, B = hippo_legs(N)
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    S = A + P[:, None] * P[None, :]  # normal: −1/2 I + skew-symmetric
    lam_re = torch.diagonal(S).mean() * torch.ones(N, dtype=torch.float64)
    lam_im, V = torch.linalg.eigh(S.to(torch.complex128) * -1j)  # S = V (lam_re + i lam_im) Vᴴ
    lam = torch.complex(lam_re, lam_im)
    Vh = V.conj().T
    return lam, Vh @ P.to(torch.complex128), Vh @ B.to(torch.complex128), V


def hippo_n_diag(N: int) -> tuple[Tensor, Tensor]:
    """S5's HiPPO-N initialization (Smith et al. 2023, §4.1/App. B): the normal part
    S = A_LegS + P Pᵀ diagonalized, S = V Λ Vᴴ.  Returns Λ (N,), V (N, N) complex128."""
    lam, _, _, V = nplr_legs(N)
    return lam, V


def bilinear_dense(lam: Tensor, P: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear (Tustin) discretization of A = diag(λ) − P Pᴴ (S4 eq. 3):
    lam, P, B (H, N) complex, dt (H,) -> Ā (H, N, N), B̄ (H, N) with
    Ā = (I − Δ/2 A)⁻¹ (I + Δ/2 A), B̄ = (I − Δ/2 A)⁻¹ Δ B.

    In closed form, O(N²) per channel instead of an O(N³) solve: with d = Δ/2, D = 1 − dλ, E = 1 + dλ,
    Sherman–Morrison gives (I − dA)⁻¹ = D⁻¹ − d s (D⁻¹P)(Pᴴ D⁻¹), s = 1/(1 + d Pᴴ D⁻¹ P), and then
    Ā = diag(E/D) − d s (D⁻¹P)(Pᴴ ⊙ (1 + E/D)) — diagonal plus rank one (Re λ < 0 keeps |D| ≥ 1).
    Computed in complex128 (cheap at O(H N²)); in complex64 its backward was the largest error in S4's
    parameter gradients (measured ~1.5e-5 relative vs float64)."""
    out = lam.dtype
    lam, P, B = lam.to(torch.complex128), P.to(torch.complex128), B.to(torch.complex128)
    d = (dt / 2).to(lam.dtype).unsqueeze(-1)  # (H, 1)
    Dinv = 1 / (1 - d * lam)  # (H, N)
    g = (1 + d * lam) * Dinv  # E / D
    u, Pc = Dinv * P, P.conj()
    s = 1 / (1 + d * (Pc * u).sum(-1, keepdim=True))  # (H, 1)
    Abar = torch.diag_embed(g) - (d * s).unsqueeze(-1) * u.unsqueeze(-1) * (Pc * (1 + g)).unsqueeze(-2)
    Bbar = 2 * d * (Dinv * B - d * s * u * (Pc * Dinv * B).sum(-1, keepdim=True))
    return Abar.to(out), Bbar.to(out)


def nplr_kernel(lam: Tensor, P: Tensor, B: Tensor, Ct: Tensor, dt: Tensor, L: int, chunk: int = 256) -> Tensor:
    """S4's kernel (Alg. 1): lam, P, B, Ct (H, N) complex (Ct = C̃ = C (I − Ā^L)), dt (H,) -> K (H, L) real.

    The truncated generating function K̂(ω) = C̃ (I − Āω)⁻¹ B̄ at the L roots of unity ω is
    c(ω) C̃ (g(ω) − A)⁻¹ B with g = (2/Δ)(1 − ω)/(1 + ω), c = 2/(1 + ω) (bilinear Ā, B̄) and
    A = Λ − P Pᴴ; by the Woodbury identity it is a sum of four Cauchy kernels over the diagonal
    Λ; an inverse FFT gives K.  Written as 2 [(2/Δ)(1 − ω) − (1 + ω)A]⁻¹ (the same quantity
    multiplied through by 1 + ω) so ω = −1 (L even) needs no division by zero.  Chunked over ω.

    The four Cauchy sums Σ_n v_n r_n(ω) share r_n(ω) = 1/((2/Δ)(1 − ω) − (1 + ω)λ_n): r is formed
    in real arithmetic and the sums are one real batched matmul (complex element-wise ops on CPU
    cost ~10x their real equivalents)."""
    omega = torch.exp(-2j * math.pi * torch.arange(L, device=lam.device, dtype=torch.float64) / L).to(lam.dtype)
    two_dt = (2.0 / dt.to(lam.real.dtype))[:, None, None]  # (H, 1, 1)
    Pc = P.conj()
    V = torch.stack([Ct * B, Ct * P, Pc * B, Pc * P], 1)  # (H, 4, N): the Cauchy numerators
    # with r = (zr − i zi)/|z|²:  Re(v r) = [Re v, Im v]·[zr; zi]/|z|²,  Im(v r) = [Im v, −Re v]·[zr; zi]/|z|²
    W = torch.cat([torch.cat([V.real, V.imag], -1), torch.cat([V.imag, -V.real], -1)], 1)  # (H, 8, 2N)
    lam_ri = torch.stack([lam.real, lam.imag]).unsqueeze(-1)  # (2, H, N, 1)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (lam, P, B, Ct, dt))
    out = []
    for l0 in range(0, L, chunk):
        args = (W, lam_ri, two_dt, omega[l0 : l0 + chunk])
        out.append(checkpoint(_woodbury_chunk, *args, use_reentrant=False) if grad else _woodbury_chunk(*args))
    return torch.fft.ifft(torch.cat(out, -1), n=L, dim=-1).real


def _woodbury_chunk(W: Tensor, lam_ri: Tensor, two_dt: Tensor, omega: Tensor) -> Tensor:
    """K̂(ω) for a chunk of roots ω (l,): W (H, 8, 2N) Cauchy numerators, lam_ri (2, H, N, 1) -> (H, l) complex.
    Checkpointed by the caller: the (H, N, l) terms live for one chunk only, forward and backward."""
    (lr, li), a, b = lam_ri, 1 - omega, 1 + omega
    zr = torch.addcmul(torch.addcmul(two_dt * a.real, b.real, lr, value=-1), b.imag, li)  # (H, N, l): z = 1/r
    zi = torch.addcmul(torch.addcmul(two_dt * a.imag, b.real, li, value=-1), b.imag, lr, value=-1)
    den = torch.addcmul(zr * zr, zi, zi).unsqueeze(1)
    k = torch.bmm(W, (torch.stack([zr, zi], 1) / den).flatten(1, 2))  # (H, 8, l)
    k00, k01, k10, k11 = torch.complex(k[:, :4], k[:, 4:]).unbind(1)  # Cauchy sums, (H, l)
    return 2 * (k00 - b * k01 * k10 / (1 + b * k11))


def krylov(Abar: Tensor, Bbar: Tensor, C: Tensor, L: int) -> tuple[Tensor, Tensor]:
    """By doubling (log2 L batched matmuls): Abar (H, N, N), Bbar, C (H, N) ->
    KB (H, N, L) with KB_l = Ā^l B̄ and CK (H, L, N) with CK_l = C Ā^{l+1}."""
    KB, CK, M, n = Bbar.unsqueeze(-1), C.unsqueeze(-2) @ Abar, Abar, 1
    while n < L:
        KB = torch.cat([KB, M @ KB], -1)
        CK = torch.cat([CK, CK @ M], -2)
        M, n = M @ M, 2 * n
    return KB[..., :L], CK[:, :L]


def dense_state_terms(u: Tensor, Abar: Tensor, Bbar: Tensor, C: Tensor, h0: Tensor, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Continue a convolution from a state, dense Ā: u (B, T, H) real, Abar (H, N, N), Bbar, C (H, N),
    h0 (B, H, N) complex -> (y0 (B, T, H) complex, y0_t = C Ā^{t+1} h0; h_T (B, H, N) = Ā^T h0 + Σ Ā^{T−1−l} B̄ u_l).
    Chunked over time: per chunk the Krylov blocks of length <= chunk, then Ā^chunk carries the state."""
    Bsz, T, H = u.shape
    L = min(chunk, T)
    KB, CK = krylov(Abar, Bbar, C, L)
    AL = torch.linalg.matrix_power(Abar, L)
    hz, h = h0, h0
    ys = []
    for l0 in range(0, T, L):
        uc = u[:, l0 : l0 + L].to(KB.dtype)
        n = uc.shape[1]
        ys.append(torch.einsum("htn,bhn->bth", CK[:, :n], hz))
        An = AL if n == L else torch.linalg.matrix_power(Abar, n)
        h = torch.einsum("hnm,bhm->bhn", An, h) + torch.einsum("bth,hnt->bhn", uc.flip(1), KB[..., :n])
        hz = torch.einsum("hnm,bhm->bhn", AL, hz)
    return torch.cat(ys, 1), h
