"""Linear recurrence with input-dependent matrix transitions, one small state vector per head:

    h_t = A_t h_{t-1} + b_t            A (B, T, H, n, n) | diagonal (B, T, H, n), b (B, T, H, n) or None
                                       h (B, T, H, n), initial state h_0 (B, H, n)

The transition of the state-tracking models that leave the diagonal, [0, 1] world: Fan et al.'s block-diagonal
input-dependent LRNN (A_t block-diagonal, columns norm-bounded), the bilinear RNNs of Ebrahimi & Memisevic
(A_t linear in x_t: full, CP-factored, block-diagonal or diagonal, no additive term). A diagonal A (given as
(B, T, H, n), one factor per state entry) runs through the same code with products in place of matmuls.

``normalize=True`` (only without b) is the unit-norm recurrence h_t = A_t h_{t-1} / ‖A_t h_{t-1}‖, the norm
over the whole (H, n) state of a sequence. Because the update is linear, not affine, that equals
N(A_t ··· A_1 h_0) (N(v) = v / ‖v‖): only the direction is kept, so every fast form may rescale its partial
products by any positive factor. They do so by a detached factor (the largest entry), which keeps products of
many matrices in floating-point range and leaves values and gradients exact: N(c v) = N(v) for c > 0, so the
derivative through c is zero.

Forms (one signature; rnnlab.ops.forms):

- ``reference``: ``matrix_scan_ref``, a loop over t (unbind once, stack once) differentiated by autograd step
  by step: the specification.
- ``recurrent``: the same loop under the hand-written adjoint below; the decode step (T = 1: one matmul), and
  ``auto`` for matrices on CPU tensors.
- ``chunk`` (``auto`` for diagonals, and on GPU): a two-level scan, chunk length L ≈ √T: the cumulative products
  A_i ··· A_1 and the local states of every chunk advance together (L batched matmuls over all chunks), then a pass over the T / L chunk
  ends carries the state, and one batched product adds it back: 2√T sequential steps of batched matmuls,
  T·n³ work (the loop's is T·n², in T steps).
- ``scan``: a log-depth (Hillis–Steele) prefix scan over the whole sequence: ⌈log₂ T⌉ steps, each composing
  every (A_t, b_t) with the one 2^k before it, T·n³·log₂ T work.

The fast forms share one autograd node whose backward is the same scan run backwards in time
(``_MatrixScanFn``). Inputs in bfloat16/float16 are computed in float32 (float64 stays float64); h has the inputs' dtype, the final state the
compute dtype.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from rnnlab.ops.chunk import acc_dtype
from rnnlab.ops.forms import check_form
from rnnlab.ops.varlen import varlen

__all__ = ["matrix_scan", "matrix_scan_ref", "BACKENDS"]

BACKENDS = ("auto", "chunk", "scan", "recurrent", "reference")  # rnnlab.ops.forms


# --------------------------------------------------------------------------- the two operations
def _apply(A: Tensor, h: Tensor, diag: bool) -> Tensor:
    """A (..., n, n) or diagonal (..., n), h (..., n) -> A h (..., n)."""
    return A * h if diag else (A @ h.unsqueeze(-1)).squeeze(-1)


def _compose(A2: Tensor, A1: Tensor, diag: bool) -> Tensor:
    """A2 A1: apply A1 first."""
    return A2 * A1 if diag else A2 @ A1


def _unit(h: Tensor) -> Tensor:
    """h (..., H, n) / its norm over (H, n): one sequence's whole state."""
    return h / torch.linalg.vector_norm(h, dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(h.dtype).tiny)


def _rescale(P: Tensor, diag: bool) -> Tensor:
    """P (..., H, n[, n]) divided by its largest |entry| per leading index, the factor detached (see module doc)."""
    dims = (-2, -1) if diag else (-3, -2, -1)
    return P / P.detach().abs().amax(dim=dims, keepdim=True).clamp_min(torch.finfo(P.dtype).tiny)


def _check(A: Tensor, b: Tensor | None, h0: Tensor | None, normalize: bool, who: str) -> bool:
    """Validate shapes; returns whether A is diagonal."""
    if not isinstance(A, Tensor) or A.dim() not in (4, 5) or (A.dim() == 5 and A.shape[-1] != A.shape[-2]):
        got = tuple(A.shape) if isinstance(A, Tensor) else type(A).__name__
        raise ValueError(f"{who}: A must be (B, T, H, n, n) matrices or (B, T, H, n) diagonals, got {got}")
    diag = A.dim() == 4
    Bsz, T, H, n = A.shape[:4]
    if T == 0:
        raise ValueError(f"{who}: expects T >= 1")
    if b is not None and tuple(b.shape) != (Bsz, T, H, n):
        raise ValueError(f"{who}: b must be (B, T, H, n) = {(Bsz, T, H, n)} like A, got {tuple(b.shape)}")
    if h0 is not None and tuple(h0.shape) != (Bsz, H, n):
        raise ValueError(f"{who}: initial_state must be (B, H, n) = {(Bsz, H, n)}, got {tuple(h0.shape)}")
    if normalize and b is not None:
        raise ValueError(f"{who}: normalize=True is the unit-norm recurrence of a linear (not affine) update; pass b=None")
    if normalize and h0 is None:
        raise ValueError(f"{who}: normalize=True needs a non-zero initial_state (from zero the state stays zero)")
    return diag


def _prepare(A, b, h0):
    dt = acc_dtype(A) if b is None else torch.promote_types(acc_dtype(A), acc_dtype(b))
    out_dtype = A.dtype if b is None else torch.promote_types(A.dtype, b.dtype)
    h0 = A.new_zeros(A.shape[0], A.shape[2], A.shape[3], dtype=dt) if h0 is None else h0.to(dt)
    return A.to(dt), None if b is None else b.to(dt), h0, out_dtype


# --------------------------------------------------------------------------- reference
def _loop_fwd(A: Tensor, b: Tensor | None, h0: Tensor, normalize: bool, diag: bool) -> Tensor:
    """The loop over t (unbind once, stack once) -> h (B, T, H, n)."""
    h, hs = h0, []
    for At, bt in zip(A.unbind(1), [None] * A.shape[1] if b is None else b.unbind(1)):
        h = _apply(At, h, diag) if bt is None else _apply(At, h, diag) + bt
        if normalize:
            h = _unit(h)
        hs.append(h)
    return torch.stack(hs, 1)


@varlen(("A", "b"), final=None)
def matrix_scan_ref(A: Tensor, b: Tensor | None = None, initial_state: Tensor | None = None,
                    normalize: bool = False) -> tuple[Tensor, Tensor]:
    """A (B, T, H, n, n) or diagonal (B, T, H, n), b (B, T, H, n) or None, initial_state (B, H, n) or None
    -> (h (B, T, H, n), h_last (B, H, n)): the loop h_t = A_t h_{t-1} + b_t (h_t / ‖h_t‖ if ``normalize``),
    differentiated by autograd step by step: the specification."""
    diag = _check(A, b, initial_state, normalize, "matrix_scan_ref")
    A, b, h0, out_dtype = _prepare(A, b, initial_state)
    h = _loop_fwd(A, b, h0, normalize, diag)
    return h.to(out_dtype), h[:, -1]


# --------------------------------------------------------------------------- fast forms
def _pad_time(x: Tensor, T_pad: int, identity: bool, diag: bool) -> Tensor:
    """Pad dim 1 to T_pad steps that leave the state unchanged: identity transitions, zero inputs."""
    extra = T_pad - x.shape[1]
    if extra == 0:
        return x
    if not identity:
        return F.pad(x, (0, 0) * (x.dim() - 2) + (0, extra))
    n = x.shape[-1]
    eye = x.new_ones(n) if diag else torch.eye(n, dtype=x.dtype, device=x.device)
    return torch.cat([x, eye.expand(x.shape[0], extra, *x.shape[2:])], 1)


def _chunk_len(T: int) -> int:
    """≈ √T balances the L steps inside the chunks against the T / L steps over them."""
    return max(1, math.ceil(math.sqrt(T)))


def _chunk_fwd(A: Tensor, b: Tensor | None, h0: Tensor, normalize: bool, diag: bool) -> Tensor:
    """The two-level scan (module doc) -> h (B, T, H, n)."""
    T = A.shape[1]
    L = _chunk_len(T)
    NC = -(-T // L)
    Ac = rearrange(_pad_time(A, NC * L, True, diag), "b (c l) ... -> l b c ...", l=L)  # (L, B, NC, H, n[, n])
    bc = None if b is None else rearrange(_pad_time(b, NC * L, False, diag), "b (c l) ... -> l b c ...", l=L)
    Ps, us = [Ac[0]], [None if bc is None else bc[0]]  # P_i = A_i ··· A_0, u_i = the local state from 0
    for i in range(1, L):
        P = _compose(Ac[i], Ps[-1], diag)
        Ps.append(_rescale(P, diag) if normalize else P)
        if bc is not None:
            us.append(_apply(Ac[i], us[-1], diag) + bc[i])
    starts, s = [], h0  # the state entering each chunk
    for c in range(NC):
        starts.append(s)
        s = _apply(Ps[-1][:, c], s, diag)
        s = _unit(s) if normalize else (s if bc is None else s + us[-1][:, c])
    P, S = torch.stack(Ps, 2), torch.stack(starts, 1)  # (B, NC, L, H, n[, n]), (B, NC, H, n)
    h = _apply(P, S.unsqueeze(2), diag)
    h = _unit(h) if normalize else (h if bc is None else h + torch.stack(us, 2))
    return rearrange(h, "b c l h n -> b (c l) h n")[:, :T]


def _scan_fwd(A: Tensor, b: Tensor | None, h0: Tensor, normalize: bool, diag: bool) -> Tensor:
    """Hillis–Steele: after step k, (A_t, b_t) maps the state before step max(t − 2^k + 1, 0) to h_t."""
    T, k = A.shape[1], 1
    while k < T:
        A_new = _compose(A[:, k:], A[:, :-k], diag)
        if b is not None:
            b = torch.cat([b[:, :k], _apply(A[:, k:], b[:, :-k], diag) + b[:, k:]], 1)
        A = torch.cat([A[:, :k], _rescale(A_new, diag) if normalize else A_new], 1)
        k *= 2
    h = _apply(A, h0.unsqueeze(1), diag)
    return _unit(h) if normalize else (h if b is None else h + b)


_FORMS = {"recurrent": _loop_fwd, "chunk": _chunk_fwd, "scan": _scan_fwd}


def _transpose(A: Tensor, diag: bool) -> Tensor:
    return A if diag else A.mT


def _outer(g: Tensor, h: Tensor, diag: bool) -> Tensor:
    """dA_t from g_t and h_{t-1}: g hᵀ (..., n, n), or g ⊙ h for a diagonal A."""
    return g * h if diag else g.unsqueeze(-1) * h.unsqueeze(-2)


class _MatrixScanFn(torch.autograd.Function):
    """One autograd node for every fast form. The adjoint of h_t = A_t h_{t-1} + b_t is the same scan backwards
    in time with transposed transitions, run by the same form:

        g_t = dh_t + A_{t+1}ᵀ g_{t+1},   dA_t = g_t h_{t-1}ᵀ,   db_t = g_t,   dh_0 = A_1ᵀ g_1.

    With ``normalize`` the outputs are n_t = N(h_t) of the linear recurrence from h_0; with r_t = ‖A_t n_{t-1}‖
    (n_0 = h_0) and the adjoint rescaled by ‖h_t‖ (ĝ_t = g_t ‖h_t‖, which stays in range):

        ĝ_t = (I − n_t n_tᵀ) dn_t + A_{t+1}ᵀ ĝ_{t+1} / r_{t+1},   dA_t = ĝ_t n_{t-1}ᵀ / r_t,   dh_0 = A_1ᵀ ĝ_1 / r_1."""

    @staticmethod
    def forward(ctx, A: Tensor, b: Tensor | None, h0: Tensor, normalize: bool, diag: bool, form: str) -> Tensor:
        h = _FORMS[form](A, b, h0, normalize, diag)
        ctx.save_for_backward(A, h0, h)
        ctx.cfg = (normalize, diag, form, b is not None)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh: Tensor):
        A, h0, h = ctx.saved_tensors
        normalize, diag, form, has_b = ctx.cfg
        h_prev = torch.cat([h0.unsqueeze(1), h[:, :-1]], 1)
        At = _transpose(A, diag)
        if normalize:
            r = torch.linalg.vector_norm(_apply(A, h_prev, diag), dim=(-2, -1), keepdim=True)  # (B, T, 1, 1)
            dh = dh - h * (h * dh).sum((-2, -1), keepdim=True)  # (I − n nᵀ) dn
            At = At / (r.unsqueeze(-1) if not diag else r)
        # reversed time: step s = T − 1 − t takes g_{t+1} to g_t through A_{t+1}ᵀ (the first reversed step's
        # transition multiplies the zero initial state; A_1ᵀ is reused there)
        M = torch.cat([At[:, 1:], At[:, :1]], 1).flip(1)
        g = _FORMS[form](M, dh.flip(1), torch.zeros_like(h0), False, diag).flip(1)
        if normalize:
            g_in = g / r  # the rescaled adjoint of u_t = A_t n_{t-1}
            dA, dh0 = _outer(g_in, h_prev, diag), _apply(_transpose(A[:, 0], diag), g_in[:, 0], diag)
        else:
            dA, dh0 = _outer(g, h_prev, diag), _apply(At[:, 0], g[:, 0], diag)
        return dA, (g if has_b else None), dh0, None, None, None


def _auto(A: Tensor, diag: bool) -> str:
    """The ``auto`` form: on CPU, small matrices go through the loop (torch's batched matmuls of 8×8 to 64×64
    tiles cost more per flop than the loop's per-step dispatch: fwd+bwd at B=4, T=2048, 32 heads of 8×8,
    recurrent 170 ms, chunk 604 ms, scan 4.1 s; one 64×64 head normalized 478 / 939 / 12282 ms, one thread,
    loaded machine) and diagonals through the chunks (7.7 ms vs the loop's 33 ms); elsewhere (GPU) the chunks."""
    return "recurrent" if A.device.type == "cpu" and not diag else "chunk"


@varlen(("A", "b"), final=None)
def matrix_scan(A: Tensor, b: Tensor | None = None, initial_state: Tensor | None = None, normalize: bool = False,
                backend: str = "auto") -> tuple[Tensor, Tensor]:
    """A (B, T, H, n, n) or diagonal (B, T, H, n), b (B, T, H, n) or None, initial_state (B, H, n) or None (zeros)
    -> (h (B, T, H, n), h_last (B, H, n)) with h_t = A_t h_{t-1} + b_t, or with ``normalize`` (b None) the
    unit-norm recurrence h_t = A_t h_{t-1} / ‖A_t h_{t-1}‖ (norm over (H, n)). backend: "auto" (``_auto``: the
    loop for matrices on CPU, else the chunks), "chunk", "scan", "recurrent", "reference" (module doc)."""
    form = check_form(backend, BACKENDS, "matrix_scan")
    if form == "reference":
        return matrix_scan_ref(A, b, initial_state, normalize)
    diag = _check(A, b, initial_state, normalize, "matrix_scan")
    A, b, h0, out_dtype = _prepare(A, b, initial_state)
    if A.shape[1] == 1 and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (A, b, h0))):
        h = _loop_fwd(A, b, h0, normalize, diag)  # a decode token: every form's one step, without the Function or padding
    else:
        h = _MatrixScanFn.apply(A, b, h0, normalize, diag, _auto(A, diag) if form == "auto" else form)
    return h.to(out_dtype), h[:, -1]
