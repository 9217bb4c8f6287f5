"""Memora (Behrouz, Razaviyayn, Zhong & Mirrokni 2025, "It's All Connected", §5.3, eq. 27): a Miras memory (the shared
body and architecture: _miras.py) with the ℓ2 attentional bias and the KL (softmax) retention,

    W_t = Softmax(α_t log W_{t−1} − η_t ∇‖f(k_t) − v_t‖²)     per output column of each weight matrix

run as a linear recurrence on the logits (a softmax ignores a constant per column, so log W_{t−1} may be replaced by
the logits): Z_t = α_t Z_{t−1} − η_t ∇ℓ(W_{t'}), W_t = Softmax(Z_t), every gradient of a chunk of b tokens taken at
the weights W_{t'} the chunk started from (b = 1 is eq. 27 exactly). The state holds logits. The chunk form forms W_t
per token (recomputed in the backward). Op: rnnlab.ops.ttt.chunk_memora.

The learned initial logits are N(0, 2²) (ours): near-uniform columns (logits ~0) make every output of the memory an
average of the same inputs, so g − mean(g) inside the inner LN cancels catastrophically — measured at d_model 32:
float32 vs float64 output 2e-5 and step vs parallel 2.7e-5 with logits N(0, 0.1²); 5e-7 and 1e-6 with N(0, 2²).
"""
from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.layers._miras import MirasMixer
from rnnlab.layers.registry import register_mixer
from rnnlab.ops.ttt import chunk_memora, fused_recurrent_memora

__all__ = ["Memora"]


@register_mixer("memora", family="ttt", small={"num_heads": 2, "chunk_size": 8})
class Memora(MirasMixer):
    """Memora: x (B, T, D) -> y (B, T, D) (module docstring); options as Yaad's.
    State floats: 3·(W−1)·H·hd + 2·H·2·e·hd² + 1 (e = memory_expansion)."""

    ops = {"chunk": chunk_memora, "recurrent": fused_recurrent_memora}

    def __init__(self, d_model: int, num_heads: int = 4, memory_expansion: int = 4, chunk_size: int = 16, base_lr: float = 0.01,
                 max_grad_norm: float | None = None, conv_size: int = 4):
        super().__init__(d_model, num_heads, memory_expansion, chunk_size, base_lr, max_grad_norm, conv_size)
        with torch.no_grad():  # logits (module docstring)
            self.w1.normal_(0.0, 2.0)
            self.w2.normal_(0.0, 2.0)

    def _gates(self, pre: Tensor) -> dict:
        return {}

    def _decode_rule(self) -> tuple:
        return 0, 2.0, 0.0, -1.0, True
