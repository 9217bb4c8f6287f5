"""Moneta (Behrouz, Razaviyayn, Zhong & Mirrokni 2025, "It's All Connected", §5.3, eqs. 24-25): a Miras memory (the
shared body and architecture: _miras.py) with the ℓ_p attentional bias and ℓ_q retention, p = 3, q = 4,

    A_t = α_t A_{t−1} − η_t ∇‖f(k_t) − v_t‖_p^p (at W_{t'}),    W_t = A_t / ‖A_t‖_q^{q−2}  (per weight matrix)

Every gradient of a chunk of b tokens is taken at W_{t'}, the memory the chunk started from, and the normalization
is applied at chunk boundaries (the paper's parallel form, §5.4): inside a chunk W_t = A_t / ‖A_{t'}‖_q^{q−2}, the
token that ends a chunk reads the exact W = A / ‖A‖_q^{q−2}, so b = 1 is eq. 24 exactly. The exact ℓ_p gradient
p·e·|e|^{p−2} is used (smooth for p >= 2; the paper's smooth sign/abs approximations are for p < 2). The memory has no
biases (the normalization is over weight matrices). Op: rnnlab.ops.ttt.chunk_moneta.

At q = 4, ‖W‖_4 = 1 / ‖A‖_4: where retention shrinks A faster than the gradients rebuild it, the memory's weights
grow. Measured at initialization (α ≈ 0.999), d_model 32, T = 8192: |W| 0.25 → 154, outputs and gradients finite
(the inner LN makes f invariant to the output layer's scale); the ℓ_q norms are taken scaled by the largest entry, so
|W|^q neither under- nor overflows.
"""
from __future__ import annotations

from torch import Tensor

from rnnlab.layers._miras import MirasMixer
from rnnlab.layers.registry import register_mixer
from rnnlab.ops.ttt import chunk_moneta, fused_recurrent_moneta

__all__ = ["Moneta"]


@register_mixer("moneta", family="ttt", small={"num_heads": 2, "chunk_size": 8})
class Moneta(MirasMixer):
    """Moneta: x (B, T, D) -> y (B, T, D) (module docstring). p: the attentional bias's exponent; q_norm: the retention's
    norm; the other options as Yaad's. State floats: 3·(W−1)·H·hd + 2·H·2·e·hd² + 1 (e = memory_expansion)."""

    ops = {"chunk": chunk_moneta, "recurrent": fused_recurrent_moneta}

    def __init__(self, d_model: int, num_heads: int = 4, memory_expansion: int = 4, chunk_size: int = 16, base_lr: float = 0.01,
                 max_grad_norm: float | None = None, conv_size: int = 4, p: float = 3.0, q_norm: float = 4.0):
        super().__init__(d_model, num_heads, memory_expansion, chunk_size, base_lr, max_grad_norm, conv_size)
        if not p >= 2 or not (q_norm >= 2 and q_norm != 3):
            raise ValueError(f"p must be >= 2 and q_norm >= 2 other than 3, got p={p}, q_norm={q_norm}")
        self.p, self.q_norm = p, q_norm

    def _gates(self, pre: Tensor) -> dict:
        return {"p": self.p, "q_norm": self.q_norm}

    def _decode_rule(self) -> tuple:
        return 3, float(self.p), 0.0, float(self.q_norm), False
