"""Depthwise causal 1-D convolution with a carried state (the "short conv" of
Mamba, Mamba-2, DeltaNet, Griffin, ...).

    y_t = act(bias + sum_{j=0}^{W-1} weight[:, j] * x_{t-W+1+j}),   act = identity or SiLU

The state is the last W-1 inputs, so a long input processed in pieces gives the
same output as in one go.

The parallel form works in the (B, T, C) layout of its callers: W shifted multiply-adds
(forward and backward, one autograd.Function with SiLU fused), where F.conv1d wants
(B, C, T) and its transposed output made every later elementwise op and their backward
run on strided memory (measured 2-4x slower at (4, 2048, 640), one thread).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnlab.ops.chunk import cast
from rnnlab.ops.varlen import varlen

__all__ = ["causal_conv1d", "causal_conv1d_ref"]

_ACTIVATIONS = (None, "silu")


def _shifted(x: Tensor, h0: Tensor, W: int):
    """(j, x_shift_j, h0_part_j, n_j) for the taps j < W-1 with shift s = W-1-j: y_t += w_j x_{t-s}; rows
    t >= s read x[:, :T-s] (x_shift_j), rows t < n_j = min(s, T) read h0[:, W-1-s : W-1-s+n_j] (h0_part_j)."""
    T = x.shape[1]
    for j in range(W - 1):
        s = W - 1 - j
        n = min(s, T)
        yield j, s, x[:, : max(T - s, 0)], h0[:, W - 1 - s : W - 1 - s + n], n


class _CausalConv(torch.autograd.Function):
    """x (B, T, C), weight (C, W), bias (C,) or None, h0 (B, W-1, C) -> act(conv) (B, T, C), contiguous."""

    @staticmethod
    def forward(ctx, x, weight, bias, h0, silu):
        x = x.contiguous()
        T, W = x.shape[1], weight.shape[1]
        u = torch.mul(x, weight[:, W - 1]) if bias is None else torch.addcmul(bias, x, weight[:, W - 1])
        for j, s, xs, hs, n in _shifted(x, h0, W):
            if T > s:
                u[:, s:].addcmul_(xs, weight[:, j])
            u[:, :n].addcmul_(hs, weight[:, j])
        ctx.save_for_backward(x, weight, h0, u if silu else None)
        ctx.silu, ctx.has_bias = silu, bias is not None
        return F.silu(u) if silu else u

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, h0, u = ctx.saved_tensors
        T, W = x.shape[1], weight.shape[1]
        du = torch.ops.aten.silu_backward(dy, u) if ctx.silu else dy.contiguous()
        acc = torch.promote_types(du.dtype, torch.float32)  # float32 sums (float64 for float64: it was float32, 5e-8 off)
        flat = torch.empty(du.numel(), dtype=du.dtype)  # one scratch for the products (fresh large tensors cost page faults each)

        def red(a, b):  # sum over (B, T) of a * b, the product laid out contiguously: reducing a strided slice
            out = flat[: a.numel()].view(a.shape)  # of a bigger buffer measured 30x slower (20 ms vs 0.6 ms at (4, 2048, 768))
            return torch.mul(a, b, out=out).sum((0, 1), dtype=acc)

        dx = du * weight[:, W - 1]
        dh0 = torch.zeros_like(h0)
        dw = [None] * W
        dw[W - 1] = red(du, x)
        for j, s, xs, hs, n in _shifted(x, h0, W):
            dw[j] = red(du[:, :n], hs)
            if T > s:
                dx[:, : T - s].addcmul_(du[:, s:], weight[:, j])
                dw[j] = dw[j] + red(du[:, s:], xs)
            dh0[:, W - 1 - s : W - 1 - s + n].addcmul_(du[:, :n], weight[:, j])
        db = du.sum((0, 1), dtype=acc).to(weight.dtype) if ctx.has_bias else None
        return dx, torch.stack(dw, 1).to(weight.dtype), db, dh0, None


@varlen(("x",), final=None)
def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, initial_state: Tensor | None = None,
                  activation: str | None = None) -> tuple[Tensor, Tensor]:
    """x (B, T, C), weight (C, W), bias (C,) or None, initial_state (B, W-1, C) or None
    -> (y (B, T, C), final_state (B, W-1, C)): the last W-1 inputs (older first).
    ``activation``: None or "silu", applied to y (fused into the parallel form)."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    B, T, C = x.shape
    W = weight.shape[-1]
    h0 = x.new_zeros(B, W - 1, C) if initial_state is None else cast(initial_state, x.dtype)
    w, b = cast(weight, x.dtype), (cast(bias, x.dtype) if bias is not None else None)
    if T == 1:  # decode: one dot product per channel, no autograd.Function (mul + sum: einsum's bmm costs 3x at this size)
        window = torch.cat([h0, x], 1)  # (B, W, C)
        y = (window * w.t()).sum(1, keepdim=True)
        y = y + b if b is not None else y
        return (F.silu(y) if activation == "silu" else y), window[:, 1:]
    y = _CausalConv.apply(x, w, b, h0, activation == "silu")
    final = torch.cat([h0, x[:, max(T - (W - 1), 0):]], 1)[:, -(W - 1):] if W > 1 else h0
    return y, final


@varlen(("x",), final=None)
def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None, initial_state: Tensor | None = None,
                      activation: str | None = None) -> tuple[Tensor, Tensor]:
    """Reference loop for :func:`causal_conv1d` (same signature)."""
    B, T, C = x.shape
    W = weight.shape[-1]
    buf = x.new_zeros(B, W - 1, C) if initial_state is None else initial_state.to(x.dtype)
    ys = []
    for xt in x.unbind(1):
        window = torch.cat([buf, xt[:, None]], dim=1)  # (B, W, C)
        y = (window * weight.t()).sum(1)
        y = y if bias is None else y + bias
        ys.append(F.silu(y) if activation == "silu" else y)
        buf = window[:, 1:]
    return torch.stack(ys, 1), buf
