"""LSTM mixer (Hochreiter & Schmidhuber 1997; forget gate: Gers et al. 2000), torch.nn.LSTM-compatible.

x (B, T, D) -> y (B, T, D); state {"h": (B, H), "c": (B, H)} float32. Gates i, f, g, o with
torch's parameter names and layout (see rnnlab/layers/_classic_rnn.py); ``num_heads > 1`` gives
FlashRNN's head-wise block-diagonal recurrence. The recurrence is ``rnnlab.ops.rnn.lstm``.
"""
from __future__ import annotations

from rnnlab.layers._classic_rnn import ClassicRNN
from rnnlab.layers.registry import register_mixer


@register_mixer("lstm", family="nonlinear", small={})
class LSTM(ClassicRNN):
    """torch.nn.LSTM-compatible mixer. ``from_torch(nn.LSTM)`` / ``to_torch()`` copy weights across."""

    cell = "lstm"

    def __init__(self, d_model: int, hidden_size: int | None = None, num_heads: int = 1, backend: str = "auto"):
        super().__init__(d_model, hidden_size=hidden_size, num_heads=num_heads, backend=backend)
