"""Nonlinear RNN cells (Elman, LSTM, GRU, sLSTM): reference loops and fused CPU kernels.

    op(gx, weight_hh, bias_hh=None, initial_state=None, output_final_state=False, backend="auto", ...)
        gx (B, T, G*H), weight_hh (G*H, H) or head-wise (NH, G*Kh, Kh) -> (h (B, T, H), final_state | None)

See ``reference.py`` for the equations and the layout. Backends:

- ``"reference"``: the plain PyTorch loop (any device; autograd through the loop).
- ``"kernel"``: the fused numba CPU kernel (``kernel.py``): the whole forward is one call, the
  backward through time one call with a hand-written adjoint; weight gradients are one matmul
  over all steps after the loop. Batch rows are split over torch.get_num_threads() threads.
  Compiled per cell on its first use on a machine, then loaded from numba's disk cache; nothing is
  compiled at install. CPU tensors only (ValueError otherwise).
- ``"auto"``: ``"kernel"`` for CPU tensors, ``"reference"`` elsewhere. The choice is logged
  once per (op, backend, device) at INFO level; nothing falls back silently.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from rnnlab.ops.forms import check_form
from rnnlab.ops.rnn.reference import CELLS, elman_ref, gru_ref, lstm_ref, rnn_ref, slstm_ref
from rnnlab.ops.varlen import varlen

__all__ = ["elman", "lstm", "gru", "slstm", "rnn", "elman_ref", "lstm_ref", "gru_ref", "slstm_ref", "rnn_ref",
           "resolve_backend", "torch_rnn", "BACKENDS", "CELLS"]

log = logging.getLogger(__name__)
BACKENDS = ("auto", "kernel", "reference")  # rnnlab.ops.forms
_LOGGED: set = set()


def _log_once(cell: str, backend: str, device: torch.device, why: str) -> None:
    key = (cell, backend, device.type)
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.info("rnnlab.ops.rnn.%s: backend=%r on %s (%s)", cell, backend, device.type, why)


def resolve_backend(backend: str, device: torch.device, cell: str = "rnn") -> str:
    """'auto' | 'kernel' | 'reference' -> the backend that runs ('kernel' or 'reference'), logged once."""
    backend = check_form(backend, BACKENDS, cell)
    if backend == "kernel":
        if device.type != "cpu":
            raise ValueError(f"{cell}: backend='kernel' is the numba CPU kernel but the tensors are on {device}; use 'reference' or 'auto'")
        _log_once(cell, "kernel", device, "requested")
        return "kernel"
    if backend == "auto":
        chosen = "kernel" if device.type == "cpu" else "reference"
        _log_once(cell, chosen, device, "auto: CPU tensors -> kernel" if chosen == "kernel" else "auto: non-CPU tensors -> reference")
        return chosen
    _log_once(cell, "reference", device, "requested")
    return "reference"


@varlen(("gx",))
def rnn(cell: str, gx: Tensor, weight_hh: Tensor, bias_hh: Tensor | None = None, initial_state=None,
        output_final_state: bool = False, backend: str = "auto", nonlinearity: str = "tanh", forget_gate: str = "sigmoid"):
    """Dispatch ``cell`` ("elman" | "lstm" | "gru" | "slstm") to a backend. Shapes as in the module docstring."""
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; valid: {sorted(CELLS)}")
    if resolve_backend(backend, gx.device, cell) == "reference":
        return rnn_ref(cell, gx, weight_hh, bias_hh, initial_state, output_final_state, nonlinearity, forget_gate)
    from rnnlab.ops.rnn.kernel import rnn_kernel

    return rnn_kernel(cell, gx, weight_hh, bias_hh, initial_state, output_final_state, nonlinearity, forget_gate)


_TORCH_FUSED = {"lstm": torch.lstm, "gru": torch.gru, ("elman", "tanh"): torch.rnn_tanh, ("elman", "relu"): torch.rnn_relu}


def torch_rnn(cell: str, x: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor,
              initial_state: tuple[Tensor, ...], nonlinearity: str = "tanh") -> tuple[Tensor, tuple[Tensor, ...]]:
    """torch.nn's fused one-layer RNN (the kernel torch.nn.LSTM/GRU/RNN run: oneDNN on CPU, cuDNN on CUDA) on the
    raw input: x (B, T, D), torch.nn's weights (weight_hh (G*H, H): one head), initial_state (h,) or (h, c) each
    (B, H) -> (h (B, T, H), final state). The same equations as ``rnn(cell, x Wᵢₕᵀ + b, ...)`` (reference.py),
    which the tests hold it to; the layers use it for forward-only calls (rnnlab.layers._classic_rnn)."""
    fn = _TORCH_FUSED[cell if cell != "elman" else ("elman", nonlinearity)]
    hx = tuple(s.unsqueeze(0).contiguous() for s in initial_state)  # torch's (num_layers, B, H)
    out = fn(x, hx if cell == "lstm" else hx[0], [weight_ih, weight_hh, bias_ih, bias_hh], True, 1, 0.0, False, False, True)
    return out[0], tuple(s[0] for s in out[1:]) if cell == "lstm" else (out[1][0],)


@varlen(("gx",))
def elman(gx, weight_hh, bias_hh=None, initial_state=None, output_final_state=False, backend="auto", nonlinearity="tanh"):
    """Elman RNN. gx (B, T, H), weight_hh (H, H) | (NH, Kh, Kh) -> (h (B, T, H), (h_T,) | None)."""
    return rnn("elman", gx, weight_hh, bias_hh, initial_state, output_final_state, backend, nonlinearity=nonlinearity)


@varlen(("gx",))
def lstm(gx, weight_hh, bias_hh=None, initial_state=None, output_final_state=False, backend="auto"):
    """LSTM (gates i, f, g, o). gx (B, T, 4H), weight_hh (4H, H) | (NH, 4Kh, Kh) -> (h (B, T, H), (h_T, c_T) | None)."""
    return rnn("lstm", gx, weight_hh, bias_hh, initial_state, output_final_state, backend)


@varlen(("gx",))
def gru(gx, weight_hh, bias_hh=None, initial_state=None, output_final_state=False, backend="auto"):
    """GRU (gates r, z, n). gx (B, T, 3H), weight_hh (3H, H) | (NH, 3Kh, Kh) -> (h (B, T, H), (h_T,) | None)."""
    return rnn("gru", gx, weight_hh, bias_hh, initial_state, output_final_state, backend)


@varlen(("gx",))
def slstm(gx, weight_hh, bias_hh=None, initial_state=None, output_final_state=False, backend="auto", forget_gate="sigmoid"):
    """sLSTM (gates i, f, z, o). gx (B, T, 4H), weight_hh (4H, H) | (NH, 4Kh, Kh) -> (h (B, T, H), (h, c, n, m) | None)."""
    return rnn("slstm", gx, weight_hh, bias_hh, initial_state, output_final_state, backend, forget_gate=forget_gate)
