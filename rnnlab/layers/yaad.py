"""Yaad (Behrouz, Razaviyayn, Zhong & Mirrokni 2025, "It's All Connected", §5.3, eq. 26): a Miras memory (the shared
body and architecture: _miras.py) with a Huber attentional bias and ℓ2 retention,

    M_t = α_t M_{t−1} − η_t g_t,   g_t the gradient at M_{t'} of the Huber loss of the error e = f(k_t) − v_t,

with the data-dependent threshold δ_t = √hd · softplus(w_δ x_t + b_δ) (ours: δ ≈ 0.7·√hd at initialization, the
scale of ‖v‖), every gradient of a chunk of b tokens taken at the memory M_{t'} the chunk started from (the paper's
parallel form, §5.4; b = 1 is eq. 26 exactly). Two Huber gradients (``huber``):

* "norm" (default): the Huber function of ‖e‖₂ (the paper's eq. 15), g = ∇ℓ₂ · min(1, δ_t / ‖e‖₂), continuous;
* "sign": eq. 16 as eq. 26 writes it, g = ∇ℓ₂ while ‖e‖₂ <= δ_t, else δ_t ∇ℓ₁ (sign(e) ⊗ input), which jumps by up to
  √hd at the threshold.

Why "norm" is the default, measured (d_model 32, 2 heads, random inputs): with "sign" a token whose branch flips
under bfloat16 rounding changes its own output by 16% (the conformance suite's bfloat16 check fails), and the
backward through the memory grows ×5·10⁴ per 1024 tokens at η ≈ 0.005 (|∂y/∂x| 1.3e4, 7.5e8, 8e18 at T = 1024,
2048, 4096: the ℓ1 branch's large gradients times the inner LN's curvature); with "norm" it stays at 1e-4 at
η ≈ 0.005 (base_lr 0.01). "sign" is stable at base_lr 0.001 (3e-4 at T = 4096). Op: rnnlab.ops.ttt.chunk_yaad.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from rnnlab.layers._miras import MirasMixer
from rnnlab.layers.registry import register_mixer
from rnnlab.ops.ttt import chunk_yaad, fused_recurrent_yaad

__all__ = ["Yaad"]


@register_mixer("yaad", family="ttt", small={"num_heads": 2, "chunk_size": 8})
class Yaad(MirasMixer):
    """Yaad: x (B, T, D) -> y (B, T, D) (module docstring). num_heads: H; memory_expansion: the MLP's hidden / hd;
    chunk_size: b; base_lr: η's ceiling; max_grad_norm: per-token gradient clipping (None: off); conv_size: short conv;
    huber: "norm" (eq. 15) or "sign" (eq. 16).
    State floats: 3·(W−1)·H·hd + 2·H·2·e·hd² + 1 (e = memory_expansion)."""

    ops = {"chunk": chunk_yaad, "recurrent": fused_recurrent_yaad}
    n_extra = 1

    def __init__(self, d_model: int, num_heads: int = 4, memory_expansion: int = 4, chunk_size: int = 16, base_lr: float = 0.01,
                 max_grad_norm: float | None = None, conv_size: int = 4, huber: str = "norm"):
        super().__init__(d_model, num_heads, memory_expansion, chunk_size, base_lr, max_grad_norm, conv_size)
        if huber not in ("norm", "sign"):
            raise ValueError(f"huber must be 'norm' or 'sign', got {huber!r}")
        self.huber = huber
        self.delta_scale = math.sqrt(self.head_dim)
        H = num_heads
        self.gate_proj.bias.data[2 * H:].fill_(math.log(math.e - 1))  # softplus⁻¹(1)

    def _gates(self, pre: Tensor) -> dict:
        return {"delta": self.delta_scale * F.softplus(pre[..., 2]), "huber": self.huber}

    def _decode_rule(self) -> tuple:
        return 1 if self.huber == "norm" else 2, 2.0, self.delta_scale, -1.0, False
