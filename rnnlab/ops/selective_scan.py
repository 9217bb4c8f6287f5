"""Selective (input-dependent) diagonal SSM scan of Mamba (Gu & Dao 2023, Alg. 2, eq. 2a-2b),
with a pluggable transition so Longhorn (Liu et al. 2024) and Mamba with negative
eigenvalues (Grazzi et al. 2024) run on the same kernel.

    x, dt (B, T, D); A (D, N); B, C (B, T, N); D (D,); z (B, T, D); state h (B, D, N)

    h_t = a_t ⊙ h_{t-1} + (dt_t x_t) ⊗ B_t            (per channel d, state index n)
    y_t = h_t C_t + D ⊙ x_t,        y_t <- y_t ⊙ silu(z_t) if z is given

transition (the a_t above):
    "exp"       a = exp(dt·A)              Mamba's zero-order hold of A (B uses dt·B, as the paper's code)
    "exp_neg"   a = 2·exp(dt·A) − 1        Grazzi et al. 2024: eigenvalues in (−1, 1)
    "longhorn"  a = 1 − dt·B²              Longhorn eq. (10): S_t = (1 − ε_t ⊗ k_t²) S_{t-1} + (ε_t x_t) ⊗ k_t,
                                           with dt := ε (B, T, D), B := k (B, T, N), C := q; A unused (None)

Forms (same signature):
- ``selective_scan_ref``: the specification, a loop over t with the (B, D, N) state.
- backend "kernel": numba CPU kernel with a hand-written backward that recomputes each
  chunk's states from checkpoints; never holds (B, T, D, N).
- backend "chunk": device-agnostic torch; per time chunk (B, L, D, N) is built, scanned
  with ``linear_scan(backend="chunk")`` and contracted with C, under activation
  checkpointing, so only one chunk's (B, L, D, N) lives at a time, forward or backward.
"auto" = "kernel" for CPU tensors, "chunk" elsewhere; the choice is logged once (names: rnnlab.ops.forms).
Computation is float32 for bf16/fp16 inputs; y has x's dtype, h_last is float32.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from rnnlab.ops._threads import run_calls, run_rows
from rnnlab.ops.forms import check_form
from rnnlab.ops.scan import linear_scan
from rnnlab.ops.varlen import varlen

__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_step", "TRANSITIONS", "transition_coeffs"]

log = logging.getLogger(__name__)
TRANSITIONS = ("exp", "exp_neg", "longhorn")
BACKENDS = ("auto", "kernel", "chunk", "reference")  # rnnlab.ops.forms
_TIME = ("x", "dt", "B", "C", "z")  # the time-major arguments (rnnlab.ops.varlen)


def transition_coeffs(dt: Tensor, A: Tensor | None, Bm: Tensor, transition: str) -> Tensor:
    """dt (..., D), A (D, N), Bm (..., N) -> a (..., D, N): the per-step decay of the state."""
    if transition == "longhorn":
        return 1 - dt.unsqueeze(-1) * Bm.unsqueeze(-2).square()
    e = torch.exp(dt.unsqueeze(-1) * A)
    return e if transition == "exp" else 2 * e - 1


def _finish(y: Tensor, x: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    if D is not None:
        y = y + x * D
    if z is not None:
        y = y * F.silu(z)
    return y


def _check(x, dt, A, Bm, Cm, D, z, initial_state, transition):
    if x.dim() != 3:
        raise ValueError(f"selective_scan expects x of shape (B, T, D), got {tuple(x.shape)}")
    Bsz, T, Dm = x.shape
    if transition not in TRANSITIONS:
        raise ValueError(f"selective_scan transition must be one of {TRANSITIONS}, got {transition!r}")
    if Bm.dim() != 3 or Bm.shape[:2] != (Bsz, T):
        raise ValueError(f"selective_scan expects B of shape (B, T, N) = ({Bsz}, {T}, N), got {tuple(Bm.shape)}")
    N = Bm.shape[2]
    if tuple(dt.shape) != (Bsz, T, Dm):
        raise ValueError(f"selective_scan expects dt of shape {(Bsz, T, Dm)}, got {tuple(dt.shape)}")
    if tuple(Cm.shape) != (Bsz, T, N):
        raise ValueError(f"selective_scan expects C of shape {(Bsz, T, N)}, got {tuple(Cm.shape)}")
    if transition != "longhorn" and (A is None or tuple(A.shape) != (Dm, N)):
        raise ValueError(f"selective_scan expects A of shape {(Dm, N)}, got {None if A is None else tuple(A.shape)}")
    if D is not None and tuple(D.shape) != (Dm,):
        raise ValueError(f"selective_scan expects D of shape ({Dm},), got {tuple(D.shape)}")
    if z is not None and tuple(z.shape) != (Bsz, T, Dm):
        raise ValueError(f"selective_scan expects z of shape {(Bsz, T, Dm)}, got {tuple(z.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (Bsz, Dm, N):
        raise ValueError(f"selective_scan expects initial_state of shape {(Bsz, Dm, N)}, got {tuple(initial_state.shape)}")
    if T == 0:
        raise ValueError("selective_scan expects T >= 1")


def _f32(t: Tensor | None) -> Tensor | None:
    return None if t is None else (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t)


def selective_scan_step(
    x: Tensor, dt: Tensor, A: Tensor | None, B: Tensor, C: Tensor, h: Tensor, transition: str = "exp"
) -> tuple[Tensor, Tensor]:
    """One step, no checks: x, dt (B, D); A (D, N); B, C (B, N); h (B, D, N) -> (y (B, D) without D/z, new h).
    The one place the recurrence is written; the reference loop and recurrent decoding use it."""
    a = transition_coeffs(dt, A, B, transition)  # (B, D, N)
    h = torch.addcmul(a * h, (dt * x).unsqueeze(-1), B.unsqueeze(1))
    return (h @ C.unsqueeze(-1)).squeeze(-1), h  # y = h C: a matmul (an einsum's parsing costs more than the product)


@varlen(_TIME, final=None)
def selective_scan_ref(
    x: Tensor, dt: Tensor, A: Tensor | None, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
    initial_state: Tensor | None = None, transition: str = "exp",
) -> tuple[Tensor, Tensor]:
    """x, dt (B, T, D); A (D, N); B, C (B, T, N); D (D,); z (B, T, D); initial_state (B, D, N)
    -> (y (B, T, D), h_last (B, D, N)).  The specification: a loop over t."""
    _check(x, dt, A, B, C, D, z, initial_state, transition)
    xf, dtf, Af, Bf, Cf = (_f32(t) for t in (x, dt, A, B, C))
    h = xf.new_zeros(x.shape[0], x.shape[2], B.shape[2]) if initial_state is None else initial_state.to(xf.dtype)
    ys = []
    for xt, dtt, bt, ct in zip(xf.unbind(1), dtf.unbind(1), Bf.unbind(1), Cf.unbind(1)):
        y, h = selective_scan_step(xt, dtt, Af, bt, ct, h, transition)
        ys.append(y)
    y = _finish(torch.stack(ys, 1), xf, _f32(D), _f32(z))
    return y.to(x.dtype), h


# --------------------------------------------------------------------------- chunked torch form
def _chunk_fn(x, dt, A, Bm, Cm, h0, transition: str):
    a = transition_coeffs(dt, A, Bm, transition)  # (B, L, D, N): one chunk only
    u = (dt * x).unsqueeze(-1) * Bm.unsqueeze(-2)
    h, h_last = linear_scan(a, u, h0, backend="chunk")
    return torch.einsum("bldn,bln->bld", h, Cm), h_last


def _chunked(x, dt, A, Bm, Cm, h0, transition: str, chunk_size: int):
    ys = []
    h = h0
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, dt, A, Bm, Cm, h0))
    # split once (not x[:, s:e] per chunk, whose backward would allocate a full-size gradient per chunk)
    pieces = zip(*(t.split(chunk_size, 1) for t in (x, dt, Bm, Cm)))
    for xc, dtc, bc, cc in pieces:
        args = (xc, dtc, A, bc, cc, h, transition)
        y, h = checkpoint(_chunk_fn, *args, use_reentrant=False) if grad else _chunk_fn(*args)
        ys.append(y)
    return torch.cat(ys, 1), h


# --------------------------------------------------------------------------- numba kernel form
_MODES = {"exp": 0, "exp_neg": 1, "longhorn": 2}


def _row(x: Tensor, dtype: torch.dtype | None = None):
    """A scratch row per sequence of x (B, T, D): (B, D) numpy, x's dtype unless given."""
    return torch.empty(x.shape[0], x.shape[2], dtype=dtype or x.dtype).numpy()


def _channel_blocks(batch: int, D: int) -> list[tuple[int, int]]:
    """Channel ranges run as separate kernel calls: one (all channels, rows split over threads) when there
    are at least as many rows as threads; else the channels split so every thread has work (channels are
    independent in the scan; only dB and dC sum over them). B = 1 and a packed batch's last rows would
    otherwise leave all threads but one idle."""
    threads = torch.get_num_threads()
    P = 1 if batch >= threads else max(1, min(threads // batch, D // 32))
    return [(D * p // P, D * (p + 1) // P) for p in range(P)]


def _cols(t: Tensor, d0: int, d1: int) -> Tensor:
    """Channels [d0, d1) of the last dim, contiguous (the kernels take C-contiguous arrays)."""
    return t if (d0, d1) == (0, t.shape[-1]) else t[..., d0:d1].contiguous()


class _SelectiveScanFn(torch.autograd.Function):
    """The numba kernels (``_selective_scan_numba``), which keep the state transposed, (N, D)."""

    @staticmethod
    def forward(ctx, x, dt, A, Bm, Cm, h0, transition: str, chunk_size: int):
        from rnnlab.ops._selective_scan_numba import sscan_fwd

        Bsz, T, D = x.shape
        N = Bm.shape[2]
        nc = -(-T // chunk_size)
        At = (A.t() if A is not None else x.new_zeros(N, D)).contiguous()
        h0T = h0.transpose(1, 2).contiguous()
        blocks = _channel_blocks(Bsz, D)
        parts, calls = [], []
        for d0, d1 in blocks:
            xs = _cols(x, d0, d1)
            y, hT, ckpt = torch.empty_like(xs), x.new_empty(Bsz, N, d1 - d0), x.new_empty(Bsz, nc, N, d1 - d0)
            args = (xs.numpy(), _cols(dt, d0, d1).numpy(), _cols(At, d0, d1).numpy(), Bm.numpy(), Cm.numpy(),
                    _cols(h0T, d0, d1).numpy(), _MODES[transition], chunk_size, y.numpy(), hT.numpy(), ckpt.numpy(),
                    _row(xs), _row(xs, torch.int32), _row(xs), x.dtype == torch.float32)
            parts.append((y, hT, ckpt))
            calls.append((lambda a=args: sscan_fwd(*a, 0, Bsz)) if len(blocks) > 1 else (lambda a=args: run_rows(sscan_fwd, Bsz, *a)))
        run_calls(calls) if len(calls) > 1 else calls[0]()
        y, hT, ckpt = (torch.cat(ts, -1) if len(parts) > 1 else ts[0] for ts in zip(*parts))
        ctx.save_for_backward(x, dt, At, Bm, Cm, ckpt)
        ctx.transition, ctx.chunk_size, ctx.has_A = transition, chunk_size, A is not None
        return y, hT.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, dy, dh_last):
        from rnnlab.ops._selective_scan_numba import sscan_bwd

        x, dt, At, Bm, Cm, ckpt = ctx.saved_tensors
        (Bsz, _, D), N, L = x.shape, At.shape[0], ctx.chunk_size
        dy = torch.zeros_like(x) if dy is None else dy.contiguous().to(x.dtype)
        dhT = x.new_zeros(Bsz, N, D) if dh_last is None else dh_last.to(x.dtype).transpose(1, 2).contiguous()
        blocks = _channel_blocks(Bsz, D)
        parts, calls = [], []
        for d0, d1 in blocks:
            xs, Dp = _cols(x, d0, d1), d1 - d0
            dx, ddt, dB, dC = torch.empty_like(xs), torch.empty_like(xs), torch.empty_like(Bm), torch.empty_like(Cm)
            dAt, g = x.new_zeros(Bsz, N, Dp), x.new_empty(Bsz, N, Dp)  # g: the state's adjoint, ends as dh0
            args = (xs.numpy(), _cols(dt, d0, d1).numpy(), _cols(At, d0, d1).numpy(), Bm.numpy(), Cm.numpy(), _MODES[ctx.transition], L,
                    _cols(ckpt, d0, d1).numpy(), _cols(dy, d0, d1).numpy(), _cols(dhT, d0, d1).numpy(), dx.numpy(), ddt.numpy(),
                    dAt.numpy(), dB.numpy(), dC.numpy(), g.numpy(), x.new_empty(Bsz, L + 1, N, Dp).numpy(),
                    x.new_empty(Bsz, L, N, Dp).numpy(), _row(xs), _row(xs), _row(xs), _row(xs, torch.int32), x.dtype == torch.float32)
            parts.append((dx, ddt, dAt, g, dB, dC))
            calls.append((lambda a=args: sscan_bwd(*a, 0, Bsz)) if len(blocks) > 1 else (lambda a=args: run_rows(sscan_bwd, Bsz, *a)))
        run_calls(calls) if len(calls) > 1 else calls[0]()
        if len(parts) == 1:
            dx, ddt, dAt, g, dB, dC = parts[0]
        else:  # channels concatenated; dB, dC summed over the blocks' channels
            dx, ddt, dAt, g = (torch.cat(ts, -1) for ts in list(zip(*parts))[:4])
            dB, dC = (sum(ts[1:], ts[0]) for ts in list(zip(*parts))[4:])
        dA = dAt.sum(0).t() if ctx.has_A else None
        return dx, ddt, dA, dB, dC, g.transpose(1, 2).contiguous(), None, None


_LOGGED: set = set()


def _resolve_backend(backend: str, device: torch.device) -> str:
    backend = check_form(backend, BACKENDS, "selective_scan")
    if backend == "kernel" and device.type != "cpu":
        raise ValueError(f"selective_scan backend='kernel' is the numba CPU kernel; tensors are on {device}. Use 'chunk'.")
    chosen = backend if backend != "auto" else ("kernel" if device.type == "cpu" else "chunk")
    if (chosen, device.type) not in _LOGGED:
        _LOGGED.add((chosen, device.type))
        log.info("selective_scan: backend=%r on %s (%s)", chosen, device.type, "auto" if backend == "auto" else "requested")
    return chosen


@varlen(_TIME, final=None)
def selective_scan(
    x: Tensor, dt: Tensor, A: Tensor | None, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
    initial_state: Tensor | None = None, transition: str = "exp", backend: str = "auto", chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """x, dt (B, T, D); A (D, N) (None for "longhorn"); B, C (B, T, N); D (D,); z (B, T, D);
    initial_state (B, D, N) -> (y (B, T, D), h_last (B, D, N) float32).

    See the module docstring for the recurrence, transitions and backends.  chunk_size:
    time steps per checkpoint (kernel) / per materialized chunk (chunked)."""
    _check(x, dt, A, B, C, D, z, initial_state, transition)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"selective_scan chunk_size must be a positive int, got {chunk_size!r}")
    be = _resolve_backend(backend, x.device)
    if be == "reference":
        return selective_scan_ref(x, dt, A, B, C, D, z, initial_state, transition)
    xf, dtf, Af, Bf, Cf = (_f32(t) for t in (x, dt, A, B, C))
    cdt = torch.promote_types(xf.dtype, dtf.dtype)
    xf, dtf, Bf, Cf = (t.to(cdt) for t in (xf, dtf, Bf, Cf))
    Af = Af.to(cdt) if Af is not None else None
    h0 = xf.new_zeros(x.shape[0], x.shape[2], B.shape[2]) if initial_state is None else initial_state.to(cdt)
    if be == "kernel":
        y, h_last = _SelectiveScanFn.apply(
            xf.contiguous(), dtf.contiguous(), Af.contiguous() if Af is not None else None, Bf.contiguous(), Cf.contiguous(),
            h0.contiguous(), transition, chunk_size,
        )
    else:
        y, h_last = _chunked(xf, dtf, Af, Bf, Cf, h0, transition, chunk_size)
    return _finish(y, xf, _f32(D), _f32(z)).to(x.dtype), h_last
