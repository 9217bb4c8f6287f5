"""Elman RNN mixer (Elman 1990), torch.nn.RNN-compatible.

x (B, T, D) -> y (B, T, D); state {"h": (B, H)} float32; h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
(or relu), torch's parameter names (see _classic_rnn.py); ``num_heads > 1`` gives a head-wise
block-diagonal recurrence. The recurrence is ``rnnlab.ops.rnn.elman``.
"""
from __future__ import annotations

from rnnlab.layers._classic_rnn import ClassicRNN
from rnnlab.layers.registry import register_mixer


@register_mixer("elman", family="nonlinear", small={})
class Elman(ClassicRNN):
    """torch.nn.RNN-compatible mixer. ``from_torch(nn.RNN)`` / ``to_torch()`` copy weights across."""

    cell = "elman"

    def __init__(self, d_model: int, hidden_size: int | None = None, num_heads: int = 1, backend: str = "auto",
                 nonlinearity: str = "tanh"):
        super().__init__(d_model, hidden_size=hidden_size, num_heads=num_heads, backend=backend, nonlinearity=nonlinearity)
