"""Linear time-invariant SSM kernels: discretization, convolution kernels, FFT causal
convolution, and the state bookkeeping that lets a convolution continue from a state.

    continuous:  x'(t) = A x(t) + B u(t),  y(t) = C x(t)          (per channel h, state size N)
    discrete:    x_k = Ā x_{k-1} + B̄ u_k,  y_k = C x_k           (the recurrent form)
    kernel:      y = K * u,   K_l = C Ā^l B̄                       (the convolutional form)

- Diagonal (S4D, Gu et al. 2022 "On the Parameterization and Initialization of Diagonal
  State Space Models", eq. 4-6): zero-order hold Ā = exp(ΔA), B̄ = (exp(ΔA) − 1)/A · B;
  K by a Vandermonde product (chunked over l so (H, N, L) never lives whole).
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

__all__ = [
    "zoh_diag", "vandermonde_kernel", "diag_state_contrib", "diag_final_state", "fft_causal_conv", "fft_causal_conv_ref",
    "hippo_legs", "nplr_legs", "hippo_n_diag", "cauchy", "bilinear_dense", "nplr_kernel", "krylov", "dense_state_terms",
]

_CHUNK = 1024  # time chunk of the Vandermonde products: (H, N, 1024) complex at a time


def zoh_diag(dt: Tensor, A: Tensor) -> tuple[Tensor, Tensor]:
    """dt (H,) or (H, N) real, A (H, N) complex -> (dtA, B̄ factor) with Ā = exp(dtA) and
    B̄ = (exp(dtA) − 1)/A (times B): zero-order hold of a diagonal A."""
    dtA = (dt.unsqueeze(-1) if dt.dim() == A.dim() - 1 else dt) * A
    return dtA, torch.expm1(dtA) / A


def _powers(log_z: Tensor, l0: int, l1: int) -> Tensor:
    """log_z (..., N) complex -> z^l for l in [l0, l1): (..., N, l1 - l0)."""
    ls = torch.arange(l0, l1, device=log_z.device, dtype=log_z.real.dtype)
    return torch.exp(log_z.unsqueeze(-1) * ls)


def vandermonde_kernel(v: Tensor, log_z: Tensor, L: int) -> Tensor:
    """v, log_z (H, N) complex -> K (H, L) real, K_l = 2 Re Σ_n v_n z_n^l (conjugate pairs halved).

    For S4D: v = C ⊙ B̄, log_z = ΔA."""
    out = []
    for l0 in range(0, L, _CHUNK):
        out.append(torch.einsum("hn,hnl->hl", v, _powers(log_z, l0, min(L, l0 + _CHUNK))).real * 2)
    return torch.cat(out, -1)


def diag_state_contrib(Cv: Tensor, log_z: Tensor, h0: Tensor, T: int) -> Tensor:
    """Output of an initial state: Cv, log_z (H, N) complex, h0 (B, H, N) complex ->
    y0 (B, T, H) real, y0_t = 2 Re Σ_n C_n Ā_n^{t+1} h0_n."""
    v = h0 * (Cv * torch.exp(log_z))  # (B, H, N)
    out = []
    for l0 in range(0, T, _CHUNK):
        out.append(torch.einsum("bhn,hnl->blh", v, _powers(log_z, l0, min(T, l0 + _CHUNK))).real * 2)
    return torch.cat(out, 1)


def diag_final_state(u: Tensor, Bbar: Tensor, log_z: Tensor, h0: Tensor | None) -> Tensor:
    """State after u: u (B, T, H) real, Bbar, log_z (H, N) complex, h0 (B, H, N) or None ->
    h_T (B, H, N) = Ā^T h0 + Σ_l Ā^{T−1−l} B̄ u_l."""
    Bsz, T, H = u.shape
    uc = u.flip(1).to(Bbar.dtype)  # u_{T-1-l'}: power l'
    h = torch.zeros(Bsz, *Bbar.shape, dtype=Bbar.dtype, device=u.device)
    for l0 in range(0, T, _CHUNK):
        l1 = min(T, l0 + _CHUNK)
        h = h + torch.einsum("blh,hnl->bhn", uc[:, l0:l1], _powers(log_z, l0, l1))
    h = h * Bbar
    if h0 is not None:
        h = h + torch.exp(log_z * T) * h0
    return h


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


def cauchy(v: Tensor, z: Tensor, w: Tensor) -> Tensor:
    """Cauchy kernel: v, w (..., N), z (L,) -> (..., L), out_l = Σ_n v_n / (z_l − w_n)."""
    return (v.unsqueeze(-1) / (z - w.unsqueeze(-1))).sum(-2)


def bilinear_dense(lam: Tensor, P: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear (Tustin) discretization of A = diag(λ) − P Pᴴ (S4 eq. 3):
    lam, P, B (H, N) complex, dt (H,) -> Ā (H, N, N), B̄ (H, N) with
    Ā = (I − Δ/2 A)⁻¹ (I + Δ/2 A), B̄ = (I − Δ/2 A)⁻¹ Δ B."""
    N = lam.shape[-1]
    A = torch.diag_embed(lam) - P.unsqueeze(-1) * P.conj().unsqueeze(-2)
    I = torch.eye(N, dtype=A.dtype, device=A.device)
    d = (dt / 2).to(A.dtype)[:, None, None]
    M0, M1 = I - d * A, I + d * A
    Abar = torch.linalg.solve(M0, M1)
    Bbar = torch.linalg.solve(M0, (2 * d[..., 0] * B).unsqueeze(-1)).squeeze(-1)
    return Abar, Bbar


def nplr_kernel(lam: Tensor, P: Tensor, B: Tensor, Ct: Tensor, dt: Tensor, L: int, chunk: int = 256) -> Tensor:
    """S4's kernel (Alg. 1): lam, P, B, Ct (H, N) complex (Ct = C̃ = C (I − Ā^L)), dt (H,) -> K (H, L) real.

    The truncated generating function K̂(ω) = C̃ (I − Āω)⁻¹ B̄ at the L roots of unity ω is
    c(ω) C̃ (g(ω) − A)⁻¹ B with g = (2/Δ)(1 − ω)/(1 + ω), c = 2/(1 + ω) (bilinear Ā, B̄) and
    A = Λ − P Pᴴ; by the Woodbury identity it is a sum of four Cauchy kernels over the diagonal
    Λ; an inverse FFT gives K.  Written as 2 [(2/Δ)(1 − ω) − (1 + ω)A]⁻¹ (the same quantity
    multiplied through by 1 + ω) so ω = −1 (L even) needs no division by zero.  Chunked over ω."""
    omega = torch.exp(-2j * math.pi * torch.arange(L, device=lam.device, dtype=torch.float64) / L).to(lam.dtype)
    two_dt = (2.0 / dt.to(lam.dtype))[:, None, None]  # (H, 1, 1)
    Pc = P.conj()
    v00, v01, v10, v11 = (Ct * B).unsqueeze(-1), (Ct * P).unsqueeze(-1), (Pc * B).unsqueeze(-1), (Pc * P).unsqueeze(-1)
    out = []
    for l0 in range(0, L, chunk):
        w = omega[l0 : l0 + chunk]  # (l,)
        r = 1.0 / (two_dt * (1 - w) - (1 + w) * lam.unsqueeze(-1))  # (H, N, l): R(ω) of the rescaled resolvent
        k00, k01, k10, k11 = ((v * r).sum(-2) for v in (v00, v01, v10, v11))  # Cauchy sums, (H, l)
        out.append(2 * (k00 - (1 + w) * k01 * k10 / (1 + (1 + w) * k11)))
    return torch.fft.ifft(torch.cat(out, -1), n=L, dim=-1).real


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
