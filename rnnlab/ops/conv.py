"""Depthwise causal 1-D convolution with a carried state (the "short conv" of
Mamba, Mamba-2, DeltaNet, Griffin, ...).

    y_t = bias + sum_{j=0}^{W-1} weight[:, j] * x_{t-W+1+j}

The state is the last W-1 inputs, so a long input processed in pieces gives the
same output as in one go.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_conv1d", "causal_conv1d_ref"]


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """x (B, T, C), weight (C, W), bias (C,) or None, initial_state (B, W-1, C) or None
    -> (y (B, T, C), final_state (B, W-1, C)): the last W-1 inputs (older first)."""
    B, T, C = x.shape
    W = weight.shape[-1]
    if initial_state is None:
        initial_state = x.new_zeros(B, W - 1, C)
    xx = torch.cat([initial_state.to(x.dtype), x], dim=1)  # (B, W-1+T, C)
    if T == 1:  # decode: one dot product per channel, no conv dispatch
        y = torch.einsum("bwc,cw->bc", xx, weight.to(x.dtype)).unsqueeze(1)
        if bias is not None:
            y = y + bias.to(x.dtype)
    else:
        y = F.conv1d(xx.transpose(1, 2), weight.to(x.dtype).unsqueeze(1), bias.to(x.dtype) if bias is not None else None, groups=C).transpose(1, 2)
    return y, xx[:, xx.shape[1] - (W - 1):]


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None, initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Reference loop for :func:`causal_conv1d` (same signature)."""
    B, T, C = x.shape
    W = weight.shape[-1]
    buf = x.new_zeros(B, W - 1, C) if initial_state is None else initial_state.to(x.dtype)
    ys = []
    for xt in x.unbind(1):
        window = torch.cat([buf, xt[:, None]], dim=1)  # (B, W, C)
        y = (window * weight.t()).sum(1)
        ys.append(y if bias is None else y + bias)
        buf = window[:, 1:]
    return torch.stack(ys, 1), buf
