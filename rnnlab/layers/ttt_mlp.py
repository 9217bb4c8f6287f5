"""TTT-MLP (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive Hidden States"): TTT-Linear's
layer (ttt_linear.py, the shared body and the equations) with a two-layer MLP as the inner model,

    g(x; W) = GELU(x W1 + b1) W2 + b2,   hidden 4 · head_dim,   GELU in its tanh form (the authors' code),

and the inner base learning rate 0.1 (the paper's value for TTT-MLP; 1.0 for TTT-Linear).
"""
from __future__ import annotations

from rnnlab.layers.registry import register_mixer
from rnnlab.layers.ttt_linear import _TTTMixer

__all__ = ["TTTMLP"]


@register_mixer("ttt_mlp", family="ttt", small={"num_heads": 2, "mini_batch_size": 8})
class TTTMLP(_TTTMixer):
    """TTT-MLP: x (B, T, D) -> y (B, T, D); the inner model is a two-layer MLP per head (4x hidden).
    State floats: 2·H·(8·hd² + 5·hd) + 1 (weights at the mini-batch start, accumulated gradients, position)."""

    def __init__(self, d_model: int, num_heads: int = 4, mini_batch_size: int = 16, base_lr: float = 0.1, rope: bool = True,
                 gate: bool = False, token_scale: bool = True):
        super().__init__(d_model, num_heads, mini_batch_size, base_lr, depth=2, rope=rope, gate=gate, token_scale=token_scale)
