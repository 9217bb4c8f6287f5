"""The body the Miras mixers share (Behrouz, Razaviyayn, Zhong & Mirrokni 2025, "It's All Connected: A Journey
Through Test-Time Memorization, Attentional Bias, Retention, and Online Optimization", §5): `yaad` (yaad.py) and
`moneta` (moneta.py) differ only in their op (rnnlab/ops/ttt.py) and its gates.

    q, k, v = SiLU(ShortConv(W x)) per head;  q, k ℓ2-normalized                     (§5.4, as Titans / Gated DeltaNet)
    memory f(x) = x + LN_{γ,β}(GELU(x W1) W2)  per head, hidden 4·hd, learned W_0, γ, β outer   (§5.3)
    η_t = base_lr · σ(w_η x_t + b_η),  α_t = σ(w_α x_t + b_α)   per token and head (retention α_t, rate η_t)
    y = W_o (RMSNorm_head(o) ⊙ σ(W_g x))                                              (output norm and gate)

Simplifications, said here and in the README: the paper's η_t, α_t (and Yaad's δ_t) are channel-wise through
low-rank projections; here they are one scalar per token and head (the engine's rates are per row). The gate and
memory initializations are ours: η ≈ base_lr/2, α ≈ 0.999; W ~ N(0, 1/fan_in) (unit gain). With TTT-MLP's N(0, 0.02)
and ℓ2-normalized keys the memory's output g has variance ~3e-6, next to the inner LN's eps (1e-6), and float32
rounding was amplified ~10x (packed-vs-separate gradient errors 1.2e-5 against 1.3e-6 with unit gain, measured).

State: conv_q/conv_k/conv_v (B, W−1, H·hd); the memory at the chunk start {"w1", "w2"}, the memory {"m_w1", "m_w2"}
(B, H, ·), float32; "pos" (B,) int64.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import no_weight_decay
from rnnlab.layers.titans import ConvMemoryMixer

__all__ = ["MirasMixer"]


class MirasMixer(ConvMemoryMixer):
    """x (B, T, D) -> y (B, T, D); a two-layer MLP memory per head trained by the subclass's op (module docstring).

    Subclasses set ``ops`` (form -> op) and ``n_extra`` (gates after η and α, e.g. Yaad's δ), and implement
    ``_gates(pre) -> dict`` of the op's further keywords from the (B, T, H, 2 + n_extra) pre-activations.
    """

    carried = ("m_",)
    n_extra: int = 0

    def __init__(self, d_model: int, num_heads: int, memory_expansion: int, chunk_size: int, base_lr: float, max_grad_norm: float | None,
                 conv_size: int):
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        hd = d_model // num_heads
        super().__init__(d_model, num_heads, None, conv_size, 2 + self.n_extra, [hd, memory_expansion * hd, hd], False, chunk_size, base_lr,
                         max_grad_norm, "sigmoid")
        H = num_heads
        with torch.no_grad():
            self.gate_proj.bias.zero_()
            self.gate_proj.bias[H:2 * H].fill_(math.log(999.0))  # α ≈ 0.999
        self.ln_weight = nn.Parameter(torch.ones(H, hd))
        self.ln_bias = nn.Parameter(torch.zeros(H, hd))
        no_weight_decay(self.ln_weight, self.ln_bias)

    def _gates(self, pre: Tensor) -> dict:
        raise NotImplementedError

    def _decode_rule(self) -> tuple:
        """The rule's scalars of ``_decode_numba.miras_decode``: (loss code, p, δ scale, q_norm or −1, softmax)."""
        raise NotImplementedError

    def _decode_spec(self) -> tuple:
        K, F_ = self.head_dim, self.w1.shape[-1]
        H = self.num_heads  # scratch per head: the heads may run on threads of their own
        return ("miras_decode", [self.ln_weight, self.ln_bias], [H * 3 * K, H * 3 * F_, H * (2 * K * F_ + 2 * max(K, F_))],
                (2 + self.n_extra, *self._decode_rule()))

    def _op_inputs(self, pre: Tensor) -> dict:
        return dict(theta=self.base_lr * torch.sigmoid(pre[..., 0]), log_decay=F.logsigmoid(pre[..., 1]), ln_weight=self.ln_weight,
                    ln_bias=self.ln_bias, residual=True, **self._gates(pre))
