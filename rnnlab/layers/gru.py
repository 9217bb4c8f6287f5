"""GRU mixer (Cho et al. 2014), torch.nn.GRU-compatible.

x (B, T, D) -> y (B, T, D); state {"h": (B, H)} float32. Gates r, z, n with torch's formula
n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) and parameter layout (see _classic_rnn.py);
``num_heads > 1`` gives FlashRNN's head-wise block-diagonal recurrence. The recurrence is
``rnnlab.ops.rnn.gru``.
"""
from __future__ import annotations

from rnnlab.layers._classic_rnn import ClassicRNN
from rnnlab.layers.registry import register_mixer


@register_mixer("gru", family="nonlinear", small={})
class GRU(ClassicRNN):
    """torch.nn.GRU-compatible mixer. ``from_torch(nn.GRU)`` / ``to_torch()`` copy weights across."""

    cell = "gru"

    def __init__(self, d_model: int, hidden_size: int | None = None, num_heads: int = 1, backend: str = "auto"):
        super().__init__(d_model, hidden_size=hidden_size, num_heads=num_heads, backend=backend)
