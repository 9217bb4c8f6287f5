"""Fused CPU kernel form of rnnlab.ops.rnn: one numba call forward, one numba call backward through time.

    rnn_kernel(cell, gx, weight_hh, bias_hh, initial_state, output_final_state, nonlinearity, forget_gate)
        gx (B, T, G*H), weight_hh (G*H, H) | (NH, G*Kh, Kh) -> (h (B, T, H), final_state | None)

The recurrent loop (matmul + gate non-linearities) lives in ``_numba.<cell>_fwd``; its adjoint in
``_numba.<cell>_bwd``. What is not sequential is left to torch after the loop: the recurrent weight
gradient is ONE matmul over all steps, dW_hh = sum_t drec_t^T h_{t-1} (per head a bmm), and the
input-side gradients flow from d gx through the caller's input projection (one matmul).
Computation is float32; bf16 inputs are upcast, h is returned in gx's dtype, the state in float32.
"""
from __future__ import annotations

import logging
import time

import torch
from torch import Tensor

from rnnlab.ops._threads import run_rows
from rnnlab.ops.rnn.reference import CELLS, check_args

__all__ = ["rnn_kernel", "load_kernels"]

log = logging.getLogger(__name__)
_NUM_AUX = {"elman": 0, "lstm": 2, "gru": 1, "slstm": 4}
_KERNELS = None
# rows per thread group at least: each group streams W_hh from cache every step, so groups of 1-2 rows
# lose more to that traffic than a second thread gains (2 threads, d=256: B=4 lstm +9%, gru +24% as one group)
_MIN_ROWS = 4


def load_kernels(cell: str):
    """-> (fwd, bwd) of ``cell``. Each cell's machine code is compiled on its first use on a machine and cached on disk
    (numba ``cache=True``, in ``__pycache__`` beside _numba.py or NUMBA_CACHE_DIR); later processes load it."""
    global _KERNELS
    if _KERNELS is None:
        t0 = time.perf_counter()
        from rnnlab.ops.rnn import _numba

        _KERNELS = _numba.KERNELS
        log.debug("rnnlab.ops.rnn numba kernels imported in %.2fs", time.perf_counter() - t0)
    return _KERNELS[cell]


def _np(t: Tensor):
    return t.detach().numpy()


class _RNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell: str, flag: int, gx: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, *s0: Tensor):
        fwd, _ = load_kernels(cell)
        B, T, GH = gx.shape
        G, NS = CELLS[cell]
        H = GH // G
        W3 = weight_hh.detach().float().reshape(-1, weight_hh.shape[-2], weight_hh.shape[-1]).contiguous()  # (NH, G*Kh, Kh)
        NH = W3.shape[0]
        gxf = gx.detach().float().contiguous()
        # parameters reach numpy as copies: a numpy view marks a storage non-resizable, and FSDP frees and refills a
        # parameter's storage around each use (WT below is always a copy)
        bias = torch.zeros(GH) if bias_hh is None else bias_hh.detach().to(torch.float32, copy=True)
        S0 = torch.stack([s.detach().float() for s in s0], 1).contiguous()  # (B, NS, H)
        hs = torch.empty(B, T, H)
        acts = torch.empty(B, T, GH)
        aux = torch.empty(B, T, _NUM_AUX[cell], H)
        ST = torch.empty(B, NS, H)
        WT = W3.transpose(1, 2).clone(memory_format=torch.contiguous_format)  # (NH, Kh, G*Kh), always a copy
        run_rows(fwd, B, flag, _np(gxf), _np(WT), _np(bias), _np(S0), _np(hs), _np(acts), _np(aux), _np(ST), min_rows=_MIN_ROWS)
        ctx.save_for_backward(hs, acts, aux, S0, weight_hh)  # weight_hh itself: autograd's in-place check
        ctx.meta = (cell, flag, weight_hh.shape, weight_hh.dtype, bias_hh is not None, gx.dtype, NH)
        return (hs.to(gx.dtype), *(s.contiguous() for s in ST.unbind(1)))

    @staticmethod
    def backward(ctx, dh: Tensor, *dsT: Tensor):
        hs, acts, aux, S0, weight_hh = ctx.saved_tensors
        cell, flag, w_shape, w_dtype, has_bias, gx_dtype, NH = ctx.meta
        _, bwd = load_kernels(cell)
        W3 = weight_hh.detach().to(torch.float32, copy=True).reshape(NH, -1, weight_hh.shape[-1])  # (NH, G*Kh, Kh), a copy: forward says why
        B, T, H = hs.shape
        GH = acts.shape[-1]
        dhf = dh.float().contiguous()
        DST = torch.stack([d.float() for d in dsT], 1).contiguous()  # (B, NS, H)
        dgx = torch.empty(B, T, GH)
        drec = torch.empty(B, T, GH) if cell == "gru" else dgx
        DS0 = torch.empty_like(S0)
        G, Kh = GH // H, H // NH
        dhm = torch.empty(NH, B, T, G * Kh) if NH > 1 else torch.empty(0, 0, 0, 0)  # drec head-major, for dW
        run_rows(bwd, B, flag, _np(W3), _np(hs), _np(acts), _np(aux), _np(S0), _np(dhf), _np(DST), _np(dgx), _np(drec),
                  _np(dhm), _np(DS0), min_rows=_MIN_ROWS)
        dW = db = None
        if ctx.needs_input_grad[3] or (has_bias and ctx.needs_input_grad[4]):
            hprev = torch.cat([S0[:, :1], hs[:, :-1]], 1)  # (B, T, H): h_{t-1}
            if NH == 1:
                dW = drec.reshape(B * T, GH).T @ hprev.reshape(B * T, H)  # ONE matmul over all steps
            else:
                dW = torch.bmm(dhm.view(NH, B * T, G * Kh).transpose(1, 2),
                               hprev.reshape(B * T, NH, Kh).transpose(0, 1))  # (NH, G*Kh, Kh)
            dW = dW.reshape(w_shape).to(w_dtype)
            if has_bias:
                db = drec.sum((0, 1))
        return (None, None, dgx.to(gx_dtype), dW, db, *(d.contiguous() for d in DS0.unbind(1)))


def rnn_kernel(cell: str, gx: Tensor, weight_hh: Tensor, bias_hh: Tensor | None = None, initial_state=None,
               output_final_state: bool = False, nonlinearity: str = "tanh", forget_gate: str = "sigmoid"):
    """The fused CPU kernel; same signature and results as ``reference.rnn_ref``. CPU tensors only."""
    H, _, _ = check_args(cell, gx, weight_hh, bias_hh, initial_state, nonlinearity, forget_gate)
    if gx.device.type != "cpu":
        raise ValueError(f"{cell}: the numba kernel needs CPU tensors, got {gx.device}")
    flag = int(nonlinearity == "relu") if cell == "elman" else int(forget_gate == "exp") if cell == "slstm" else 0
    S = CELLS[cell][1]
    if initial_state is None:
        initial_state = tuple(torch.zeros(gx.shape[0], H) for _ in range(S))
    h, *final = _RNNFunction.apply(cell, flag, gx, weight_hh, bias_hh, *initial_state)
    return h, (tuple(final) if output_final_state else None)
