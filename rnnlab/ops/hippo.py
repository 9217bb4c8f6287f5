"""HiPPO (Gu, Dao, Ermon, Rudra & Ré 2020, "HiPPO: Recurrent Memory with Optimal Polynomial Projections"):
the online projection of a signal's history onto orthogonal polynomials, the one source of the HiPPO matrices
in rnnlab (S4's NPLR form and S5's HiPPO-N included).

Convention: dc/dt = A c + B f (the paper writes dc/dt = −A c + B f; here A carries the sign, as in S4).

    measure  history weighted by                 basis of c_n (reconstruction f ≈ Σ c_n g_n)            ODE
    legs     uniform on [0, t]  (scaled)         g_n = √(2n+1) P_n(2s − 1), s = x / t ∈ [0, 1]         dc/dt = (A c + B f) / t
    legt     uniform on [t − θ, t] (translated)  g_n = √(2n+1) P_n(2s − 1), s = (x − t + θ) / θ         dc/dt = A c + B f
    lagt     e^{−(t − x)} on (−∞, t]             g_n = L_n(t − x)  (Laguerre, α = 0)                    dc/dt = A c + B f

- LegS (Thm. 2, eq. (3); App. D.3): A_nk = −√(2n+1)√(2k+1) (n > k), −(n + 1) (n = k), 0 (n < k); B_n = √(2n+1).
- LegT (App. D.1, the orthonormal basis λ_n = 1): A_nk = −(1/θ)√(2n+1)√(2k+1)·{1 if k ≤ n; (−1)^{n−k} if k > n},
  B_n = √(2n+1)/θ. The paper's main-text LegT is the LMU scaling λ_n = √(2n+1)(−1)^n of the same system
  (c_n ↦ λ_n c_n); the orthonormal one is used here, as in the authors' S4 code, so every measure reconstructs
  with the basis above.
- LagT (App. D.2, generalized Laguerre with α = 0): A_nk = −1 (n ≥ k), 0 (n < k); B_n = 1. (The authors' later
  code shifts A by I/2, a tilted measure; the paper's matrix is used here.)

Discretizations (``discretize``, App. B.3: the generalized bilinear transform, and zero-order hold):
    forward  Ā = I + ΔA,                     B̄ = ΔB
    backward Ā = (I − ΔA)⁻¹,                 B̄ = (I − ΔA)⁻¹ ΔB
    bilinear Ā = (I − Δ/2 A)⁻¹ (I + Δ/2 A),   B̄ = (I − Δ/2 A)⁻¹ ΔB
    zoh      Ā = exp(ΔA),                     B̄ = A⁻¹ (exp(ΔA) − I) B   (one matrix exponential of [[A, B], [0, 0]] Δ)
LegS is time-varying: a step of length Δ ending at time t uses Δ/t for forward/backward/bilinear (sample k of a
regular series integrates (k − 1, k]: 1/k, the paper's c_{k+1} = (1 − A/k) c_k + (1/k) B f_k with the sign
convention above; time is in units of the sampling step, which LegS never sees otherwise: its timescale
invariance) and, for ZOH, the log-time step log(t / (t − Δ)) of the LTI system dc/ds = A c + B f in s = log t
(a step from time 0: Ā = 0, B̄ = −A⁻¹B = e_0). Irregular series give each step its own Δ (``step``).
With ZOH, LegS's recurrence is *exactly* the projection of the piecewise-constant signal holding f_k on
(k − 1, k]; LagT's likewise (tests/ops/test_hippo.py checks both against the closed-form integrals).

The online projection (``project``): f (B, T, H) -> coefficients c (B, T, H, N); the state is (c, n) with n the
samples already seen per row (LegS's clock). Forms: ``reference`` (the recurrence, one step per sample, the
specification) and, for the time-invariant measures (LegT, LagT), ``fft`` (Krylov kernel Ā^l B̄ by doubling +
FFT convolution, plus Ā^{t+1} c_0 for a given state). LegS's transitions differ at every step (the kernel is not
Toeplitz), so it has the reference form only; the mixers that use it (``hippo_rnn``) are sequential anyway.
"""
from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.ops.forms import check_form
from rnnlab.ops.ssm_kernels import krylov, squarings
from rnnlab.ops.varlen import autocast_off, varlen

__all__ = ["MEASURES", "METHODS", "legs", "legt", "lagt", "transition", "nplr_legs", "hippo_n_diag", "discretize",
           "legs_discrete", "step", "project", "project_ref", "basis", "reconstruct", "GBT_ALPHA"]

MEASURES = ("legs", "legt", "lagt")
METHODS = ("forward", "backward", "bilinear", "zoh")
BACKENDS = ("auto", "fft", "reference")  # rnnlab.ops.forms
GBT_ALPHA = {"forward": 0.0, "backward": 1.0, "bilinear": 0.5}  # the generalized bilinear transform's α


# --------------------------------------------------------------------------- the matrices
def legs(N: int) -> tuple[Tensor, Tensor]:
    """HiPPO-LegS (HiPPO eq. (3), S4 eq. (2)): A (N, N), B (N,) float64 with dc/dt = (A c + B f) / t."""
    q = torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1)
    A = -torch.tril(q[:, None] * q[None, :], -1) - torch.diag(torch.arange(N, dtype=torch.float64) + 1)
    return A, q.clone()


def legt(N: int, theta: float = 1.0) -> tuple[Tensor, Tensor]:
    """HiPPO-LegT (App. D.1, orthonormal basis): A (N, N), B (N,) float64 with dc/dt = A c + B f, window θ."""
    n = torch.arange(N, dtype=torch.float64)
    q = torch.sqrt(2 * n + 1)
    sign = torch.where(n[None, :] <= n[:, None], torch.ones(N, N, dtype=torch.float64), (-1.0) ** (n[:, None] - n[None, :]))
    return -(q[:, None] * sign * q[None, :]) / theta, q / theta


def lagt(N: int) -> tuple[Tensor, Tensor]:
    """HiPPO-LagT (App. D.2, Laguerre α = 0): A (N, N) = −tril(1), B (N,) = 1, float64, dc/dt = A c + B f."""
    return -torch.tril(torch.ones(N, N, dtype=torch.float64)), torch.ones(N, dtype=torch.float64)


def transition(measure: str, N: int, theta: float = 1.0) -> tuple[Tensor, Tensor]:
    """(A, B) of a measure in :data:`MEASURES` (``theta``: LegT's window)."""
    if measure not in MEASURES:
        raise ValueError(f"HiPPO measure must be one of {MEASURES}, got {measure!r}")
    if not isinstance(N, int) or N < 1:
        raise ValueError(f"HiPPO order N must be a positive int, got {N!r}")
    return legt(N, theta) if measure == "legt" else legs(N) if measure == "legs" else lagt(N)


def nplr_legs(N: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """NPLR form of HiPPO-LegS (S4 §3.3, Thm. 1): A = V (Λ − P Pᴴ) Vᴴ with
    P_n = sqrt(n + 1/2) in the original basis.  Returns Λ (N,), P (N,), B (N,), V (N, N),
    complex128, with P and B already in the eigenbasis (Vᴴ P, Vᴴ B)."""
    A, B = legs(N)
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


# --------------------------------------------------------------------------- discretization
@autocast_off
def discretize(A: Tensor, B: Tensor, dt, method: str = "bilinear") -> tuple[Tensor, Tensor]:
    """A (..., N, N), B (..., N), dt a float or a tensor of the batch shape (...) -> (Ā (..., N, N), B̄ (..., N)).

    ``method`` in :data:`METHODS` (module docstring); the batch dims of A, B and dt broadcast. Differentiable in
    A, B and dt (a learnable Δ, a learnable A)."""
    if method not in METHODS:
        raise ValueError(f"discretization method must be one of {METHODS}, got {method!r}")
    N = A.shape[-1]
    dt = torch.as_tensor(dt, dtype=A.dtype, device=A.device)
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-1], dt.shape)
    A, B, dt = A.expand(*batch, N, N), B.expand(*batch, N), dt.expand(batch)
    dA, dB = dt[..., None, None] * A, dt[..., None] * B
    if method == "zoh":  # exp([[ΔA, ΔB], [0, 0]]) = [[Ā, B̄], [0, 1]]
        M = torch.cat([torch.cat([dA, dB[..., None]], -1), torch.zeros(*batch, 1, N + 1, dtype=A.dtype, device=A.device)], -2)
        E = torch.linalg.matrix_exp(M)
        return E[..., :N, :N], E[..., :N, N]
    alpha = GBT_ALPHA[method]
    eye = torch.eye(N, dtype=A.dtype, device=A.device)
    if alpha == 0.0:
        return eye + dA, dB
    lhs = eye - alpha * dA
    rhs = torch.cat([eye + (1 - alpha) * dA, dB[..., None]], -1)  # one solve for Ā and B̄
    sol = torch.linalg.solve(lhs, rhs)
    return sol[..., :N], sol[..., N]


@autocast_off
def legs_discrete(A: Tensor, B: Tensor, t: Tensor, dt=1.0, method: str = "bilinear") -> tuple[Tensor, Tensor]:
    """LegS's step of length dt ending at time t (tensors of one shape S; sample k of a regular series: t = k,
    dt = 1) -> (Ā (*S, N, N), B̄ (*S, N)): ``discretize`` with Δ/t, or for ZOH the log-time step log(t / (t − dt))
    (a step from time 0: Ā = 0, B̄ = −A⁻¹B = e_0, the projection of a constant)."""
    t = torch.as_tensor(t, dtype=A.dtype, device=A.device)
    dt = torch.as_tensor(dt, dtype=A.dtype, device=A.device).expand(t.shape)
    if method != "zoh":
        return discretize(A, B, torch.where(t > 0, dt / t.clamp_min(1e-30), 0.0), method)
    first = t - dt <= 0
    ratio = torch.where(first, 2.0, t) / torch.where(first, 1.0, t - dt)
    Ab, Bb = discretize(A, B, torch.log(ratio), "zoh")
    B0 = -torch.linalg.solve(A, B)
    return torch.where(first[..., None, None], torch.zeros_like(Ab), Ab), torch.where(first[..., None], B0, Bb)


@autocast_off
def step(c: Tensor, f: Tensor, A: Tensor, B: Tensor, measure: str, method: str, t: Tensor, dt: Tensor) -> Tensor:
    """One online update c' = Ā c + B̄ f, each row with its own step: c (R, M, N) coefficients of M signals,
    f (R, M) their new samples, t (R,) the time after the step (LegS's clock), dt (R,) its length (in units of the
    sampling step the measure's (A, B) were built for; 1 on a regular series) -> c' (R, M, N), in c's dtype.

    ZOH forms Ā per row (a matrix exponential); the bilinear family solves (I − αΔA) c' = (I + (1 − α)ΔA) c + ΔB f
    per row, a triangular solve for LegS and LagT (lower triangular A): O(N²) per signal, no N × N inverse."""
    A, B = A.to(c.dtype), B.to(c.dtype)
    t, dt = t.to(c.dtype), dt.to(c.dtype)
    if method == "zoh":
        Ab, Bb = legs_discrete(A, B, t, dt, "zoh") if measure == "legs" else discretize(A, B, dt, "zoh")
        return torch.einsum("rnm,rcm->rcn", Ab, c) + f[..., None] * Bb[:, None]
    scale = torch.where(t > 0, dt / t.clamp_min(1e-30), 0.0) if measure == "legs" else dt  # (R,): Δ/t or Δ
    alpha = GBT_ALPHA[method]
    Ac = c @ A.T
    rhs = c + ((1 - alpha) * scale)[:, None, None] * Ac + scale[:, None, None] * f[..., None] * B
    if alpha == 0.0:
        return rhs
    M = torch.eye(A.shape[-1], dtype=c.dtype, device=c.device) - (alpha * scale)[:, None, None] * A  # (R, N, N)
    sol = torch.linalg.solve_triangular(M, rhs.transpose(1, 2), upper=False) if measure != "legt" \
        else torch.linalg.solve(M, rhs.transpose(1, 2))
    return sol.transpose(1, 2)


# --------------------------------------------------------------------------- the online projection
def _matrices(measure, N, method, theta, device):
    A, B = transition(measure, N, theta)
    if method not in METHODS:
        raise ValueError(f"discretization method must be one of {METHODS}, got {method!r}")
    return A.to(device), B.to(device)


def _state(f: Tensor, N: int, initial_state) -> tuple[Tensor, Tensor]:
    Bsz, _, H = f.shape
    if initial_state is None:
        return f.new_zeros(Bsz, H, N), torch.zeros(Bsz, dtype=torch.int64, device=f.device)
    c0, n0 = initial_state
    if c0.shape != (Bsz, H, N) or n0.shape != (Bsz,):
        raise ValueError(f"initial_state must be (c (B, H, N) = {(Bsz, H, N)}, n (B,) int64), got {tuple(c0.shape)}, {tuple(n0.shape)}")
    return c0.to(f.dtype), n0


@varlen(("f",), final=None)
def project_ref(f: Tensor, measure: str = "legs", N: int = 32, dt: float = 1.0, method: str = "bilinear", theta: float = 1.0,
                initial_state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The online HiPPO projection, one step per sample (the specification): f (B, T, H) -> (c (B, T, H, N),
    final state (c_T (B, H, N), n_T (B,) int64)). ``dt``: the sampling step of the time-invariant measures (LegS
    has none); ``initial_state``: (c_0, n_0), n_0 the samples seen before (LegS's clock), zeros if None.
    Matrices in float64, the recurrence in f's dtype."""
    A, B = _matrices(measure, N, method, theta, f.device)
    c, n = _state(f, N, initial_state)
    step_len = torch.full(n.shape, 1.0 if measure == "legs" else float(dt), dtype=f.dtype, device=f.device)
    cs = []
    for k, ft in enumerate(f.unbind(1)):  # ft (B, H): sample n + k + 1 of each row, at time n + k + 1 (LegS)
        c = step(c, ft, A, B, measure, method, (n + k + 1).to(f.dtype), step_len)
        cs.append(c)
    return torch.stack(cs, 1), (c, n + f.shape[1])


@varlen(("f",), final=None)
def _project_fft(f: Tensor, measure: str, N: int, dt: float, method: str, theta: float,
                 initial_state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Time-invariant measures: c_t = Ā^{t+1} c_0 + Σ_{s≤t} Ā^{t−s} B̄ f_s, the kernel Ā^l B̄ (l < T) by doubling
    from log2 T squarings of Ā, the sum as an FFT convolution (length 2T), the state term by doubling too."""
    A, B = _matrices(measure, N, method, theta, f.device)
    c0, n = _state(f, N, initial_state)
    Bsz, T, H = f.shape
    Ab, Bb = (t.to(f.dtype) for t in discretize(A, B, dt, method))
    sq = squarings(Ab, T)
    KB, _ = krylov(sq, Bb, None, T)  # (N, T): Ā^l B̄
    n_fft = 2 * T
    ff = torch.fft.rfft(f.transpose(1, 2), n=n_fft)  # (B, H, F)
    c = torch.fft.irfft(ff[:, :, None] * torch.fft.rfft(KB, n=n_fft)[None, None], n=n_fft)[..., :T]  # (B, H, N, T)
    c = c.permute(0, 3, 1, 2)  # (B, T, H, N)
    if initial_state is not None:
        P, _ = krylov(sq, (c0 @ Ab.T).reshape(Bsz * H, N), None, T)  # (B·H, N, T): Ā^{l+1} c_0
        c = c + P.reshape(Bsz, H, N, T).permute(0, 3, 1, 2)
    return c, (c[:, -1], n + T)


def project(f: Tensor, measure: str = "legs", N: int = 32, dt: float = 1.0, method: str = "bilinear", theta: float = 1.0,
            initial_state: tuple[Tensor, Tensor] | None = None, backend: str = "auto",
            cu_seqlens: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The online HiPPO projection f (B, T, H) -> (c (B, T, H, N), (c_T, n_T)); see :func:`project_ref` for the
    arguments. ``backend``: "reference" (the recurrence), "fft" (LegT / LagT only), "auto" (fft for the time-invariant
    measures, the recurrence for LegS). ``cu_seqlens``: packed sequences (rnnlab.ops.varlen)."""
    backend = check_form(backend, BACKENDS, "hippo.project")
    if backend == "fft" and measure == "legs":
        raise ValueError("hippo.project: backend 'fft' needs a time-invariant measure (legt, lagt); LegS is time-varying")
    fn = project_ref if backend == "reference" or (backend == "auto" and measure == "legs") else _project_fft
    return fn(f, measure, N, dt, method, theta, initial_state, cu_seqlens=cu_seqlens)


# --------------------------------------------------------------------------- reconstruction
def basis(measure: str, N: int, s: Tensor) -> Tensor:
    """The basis functions at positions s (...,) -> (..., N), in s's dtype: for legs / legt s ∈ [0, 1] is the
    position in the window (0 its oldest end, 1 now): √(2n+1) P_n(2s − 1); for lagt s ≥ 0 is the age t − x: L_n(s)."""
    if measure not in MEASURES:
        raise ValueError(f"HiPPO measure must be one of {MEASURES}, got {measure!r}")
    x = 2 * s - 1 if measure != "lagt" else s
    p = [torch.ones_like(x), x if measure != "lagt" else 1 - x]
    for n in range(1, N - 1):  # three-term recurrences: Legendre (n+1)P_{n+1} = (2n+1)x P_n − n P_{n−1};
        if measure == "lagt":   # Laguerre (n+1)L_{n+1} = (2n+1−x) L_n − n L_{n−1}
            p.append(((2 * n + 1 - x) * p[n] - n * p[n - 1]) / (n + 1))
        else:
            p.append(((2 * n + 1) * x * p[n] - n * p[n - 1]) / (n + 1))
    P = torch.stack(p[:N], -1)
    if measure == "lagt":
        return P
    return P * torch.sqrt(2 * torch.arange(N, dtype=s.dtype, device=s.device) + 1)


def reconstruct(c: Tensor, measure: str, s: Tensor) -> Tensor:
    """c (..., N) coefficients -> f at positions s (S,) (:func:`basis`): (..., S) = Σ_n c_n g_n(s)."""
    return c @ basis(measure, c.shape[-1], s.to(c.dtype)).T
