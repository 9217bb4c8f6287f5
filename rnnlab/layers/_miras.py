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
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import GatedRMSNorm, ShortConv
from rnnlab.ops.delta import l2norm
from rnnlab.ops.ttt import memory_keys

__all__ = ["MirasMixer"]


class MirasMixer(Mixer):
    """x (B, T, D) -> y (B, T, D); a two-layer MLP memory per head trained by the subclass's op (module docstring).

    Subclasses set ``ops`` = (chunk form, recurrent form) and ``n_extra`` (extra per-token gates after η and α,
    e.g. Yaad's δ), and implement ``_gates(pre) -> dict`` of the op's gate keywords from the (B, T, H, 2 + n_extra)
    pre-activations.
    """

    ops: tuple = ()
    n_extra: int = 0

    def __init__(self, d_model: int, num_heads: int, memory_expansion: int, chunk_size: int, base_lr: float, max_grad_norm: float | None,
                 conv_size: int):
        super().__init__(d_model)
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        if not base_lr > 0 or (max_grad_norm is not None and not max_grad_norm > 0):
            raise ValueError(f"base_lr and max_grad_norm must be > 0, got {base_lr}, {max_grad_norm}")
        hd = d_model // num_heads
        self.num_heads, self.head_dim, self.chunk_size, self.base_lr, self.max_grad_norm = num_heads, hd, chunk_size, base_lr, max_grad_norm
        H = num_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d_model, H * hd, bias=False) for _ in range(3))
        self.q_conv, self.k_conv, self.v_conv = (ShortConv(H * hd, conv_size, bias=False, activation="silu") for _ in range(3))
        self.gate_proj = nn.Linear(d_model, (2 + self.n_extra) * H)
        with torch.no_grad():
            self.gate_proj.weight.mul_(0.1)
            self.gate_proj.bias.zero_()
            self.gate_proj.bias[H:2 * H].fill_(math.log(999.0))  # α ≈ 0.999
        hidden = memory_expansion * hd
        self.w1 = nn.Parameter(torch.randn(H, hd, hidden) / math.sqrt(hd))  # unit gain: see the module docstring
        self.w2 = nn.Parameter(torch.randn(H, hidden, hd) / math.sqrt(hidden))
        self.ln_weight = nn.Parameter(torch.ones(H, hd))
        self.ln_bias = nn.Parameter(torch.zeros(H, hd))
        self.g_proj = nn.Linear(d_model, H * hd, bias=False)
        self.o_norm = GatedRMSNorm(hd, activation="sigmoid")
        self.o_proj = nn.Linear(H * hd, d_model, bias=False)
        no_weight_decay(self.gate_proj.bias, self.ln_weight, self.ln_bias)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or torch.float32
        state = {"conv_q": self.q_conv.init_state(batch_size, device, dtype), "conv_k": self.k_conv.init_state(batch_size, device, dtype),
                 "conv_v": self.v_conv.init_state(batch_size, device, dtype)}
        for n in memory_keys(2, False):
            w = getattr(self, n).to(device=device, dtype=dtype)
            state[n] = state["m_" + n] = w.unsqueeze(0).expand(batch_size, *w.shape)
        state["pos"] = torch.zeros(batch_size, device=device, dtype=torch.int64)
        return state

    def state_size(self, seq_len: int) -> int:
        convs = self.q_conv.state_size() + self.k_conv.state_size() + self.v_conv.state_size()
        return convs + 2 * (self.w1.numel() + self.w2.numel()) + 1

    def _gates(self, pre: Tensor) -> dict:
        raise NotImplementedError

    def _mix(self, x: Tensor, state: State, op) -> tuple[Tensor, State]:
        H = self.num_heads
        q, cq = self.q_conv(self.q_proj(x), state["conv_q"])
        k, ck = self.k_conv(self.k_proj(x), state["conv_k"])
        v, cv = self.v_conv(self.v_proj(x), state["conv_v"])
        q = l2norm(rearrange(q, "b t (h d) -> b t h d", h=H)).to(x.dtype)
        k = l2norm(rearrange(k, "b t (h d) -> b t h d", h=H)).to(x.dtype)
        v = rearrange(v, "b t (h d) -> b t h d", h=H)
        pre = rearrange(self.gate_proj(x).float(), "b t (g h) -> b t h g", h=H)
        gates = dict(theta=self.base_lr * torch.sigmoid(pre[..., 0]), log_decay=F.logsigmoid(pre[..., 1]), **self._gates(pre))
        mem = {n: state[n] for n in state if not n.startswith("conv_")}
        o, new = op(q, k, v, **gates, initial_state=mem, ln_weight=self.ln_weight, ln_bias=self.ln_bias, residual=True, activation="gelu",
                    max_grad_norm=self.max_grad_norm, chunk_size=self.chunk_size, output_final_state=True)
        o = self.o_norm(o, rearrange(self.g_proj(x), "b t (h d) -> b t h d", h=H))
        y = self.o_proj(rearrange(o, "b t h d -> b t (h d)").to(x.dtype))
        new = {n: (t.to(state[n].dtype) if t.is_floating_point() else t) for n, t in new.items()}
        new.update(conv_q=cq.to(state["conv_q"].dtype), conv_k=ck.to(state["conv_k"].dtype), conv_v=cv.to(state["conv_v"].dtype))
        return y, new

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y, state): the chunkwise form."""
        return self._mix(x, state, self.ops[0])

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y, state): one token of the recurrence."""
        return self._mix(x, state, self.ops[1])

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, chunk_size={self.chunk_size}, base_lr={self.base_lr}, "
                f"max_grad_norm={self.max_grad_norm}")
