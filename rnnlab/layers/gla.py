"""Gated Linear Attention (Yang, Wang, Shen, Panda & Kim 2024, "Gated Linear Attention
Transformers with Hardware-Efficient Training", ICML; Section 4.1, eqs. 3 and 4).

    q, k, v = x W_Q, x W_K, x W_V                                            per head
    α_t = σ(x_t W_α1 W_α2 + b_α)^{1/τ},  τ = 16,  rank(W_α1 W_α2) = 16       (data-dependent decay)
    S_t = Diag(α_t) S_{t-1} + k_t v_tᵀ,   o_t = S_tᵀ q_t / √d_k              (eq. 3, G_t = α_t 1ᵀ)
    r_t = swish(x_t W_r + b_r),   y_t = (r_t ⊙ RMSNorm_head(o_t)) W_O        (eq. 4)

The decay is carried in log space: g_t = log α_t = logsigmoid(x W_α1 W_α2 + b_α) / τ, never
as a product of α's. Head sizes as the paper's configuration: key dim d/2 (``expand_k=0.5``),
value dim d (``expand_v=1``), split over ``num_heads`` heads. Per-head norm RMSNorm and
Xavier-uniform init with gain 2^-2.5 as flash-linear-attention's GLA layer (the paper writes
LayerNorm).
"""
from __future__ import annotations

from functools import partial
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.parts import GatedRMSNorm, LoRA, fused_linear
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.chunk import cast
from rnnlab.ops.forms import choose
from rnnlab.ops.gla import chunk_gla, fused_recurrent_gla

__all__ = ["GLA"]


@register_mixer("gla", family="matrix", small={"num_heads": 2, "chunk_size": 16})
class GLA(Mixer):
    """x (B, T, D) -> y (B, T, D). State: S (B, H, K, V) float32.

    num_heads: H; expand_k / expand_v: total key / value dims as multiples of D; gate_low_rank:
    rank of the decay projection; gate_logit_normalizer: τ; chunk_size: chunk of the parallel form."""

    def __init__(self, d_model: int, num_heads: int = 4, expand_k: float = 0.5, expand_v: float = 1.0, gate_low_rank: int = 16,
                 gate_logit_normalizer: float = 16.0, chunk_size: int = 64, norm_eps: float = 1e-5):
        super().__init__(d_model)
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        if num_heads < 1 or key_dim % num_heads or value_dim % num_heads or key_dim == 0:
            raise ValueError(f"key dim {key_dim} and value dim {value_dim} must be divisible by num_heads={num_heads}")
        if gate_logit_normalizer <= 0:
            raise ValueError(f"gate_logit_normalizer must be positive, got {gate_logit_normalizer}")
        H = num_heads
        self.num_heads, self.head_k, self.head_v = H, key_dim // H, value_dim // H
        self.tau, self.chunk_size = float(gate_logit_normalizer), chunk_size
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.gk_proj = LoRA(d_model, gate_low_rank, key_dim, activation=None, bias=True)  # x W_α1 W_α2 + b_α
        self.g_proj = nn.Linear(d_model, value_dim, bias=True)  # r_t
        self.o_norm = GatedRMSNorm(self.head_v, eps=norm_eps, activation="silu")
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, gain=2**-2.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"S": torch.zeros(batch_size, self.num_heads, self.head_k, self.head_v, device=device, dtype=dtype or torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.head_k * self.head_v

    def _mix(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        H = self.num_heads
        split = lambda t: t.unflatten(-1, (H, -1))  # (B, T, H·d) -> (B, T, H, d); not einops: a decode step's calls count
        q, k, v, low, og = fused_linear(x, [self.q_proj, self.k_proj, self.v_proj, self.gk_proj.down, self.g_proj])
        q, k, v, og = split(q), split(k), split(v), split(og)
        g = split(F.logsigmoid(cast(self.gk_proj.up_from(low), torch.float32)) / self.tau)  # (B, T, H, K) log α_t <= 0
        kw = dict(initial_state=cast(state["S"], torch.float32), output_final_state=True)  # scale = K^-1/2
        op = choose(form, {"chunk": partial(chunk_gla, chunk_size=self.chunk_size), "recurrent": fused_recurrent_gla}, "gla")
        o, S = op(q, k, v, g, **kw)
        o = self.o_norm(o, og)
        return self.o_proj(o.flatten(-2)), {"S": cast(S, state["S"].dtype)}  # o (B, T, H·d)

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y, state): chunkwise form."""
        return self._mix(x, state, "chunk")

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y, state): one recurrent update (on CPU without autograd the fused decode kernel,
        rnnlab.ops.decode, between the projections)."""
        if decode.usable(x, state["S"], self.o_norm.weight):
            proj = fused_linear(x, [self.q_proj, self.k_proj, self.v_proj, self.gk_proj.down, self.g_proj], whole=True)
            out, (S,) = decode.fused_step("gla_decode", self, proj, [state["S"]],
                                          [self.gk_proj.up.weight, self.gk_proj.up.bias, self.o_norm.weight],
                                          self.num_heads * self.head_v, [self.num_heads * self.head_k], self.tau, self.o_norm.eps)
            return decode.linear(self.o_proj, out), {"S": S}
        return self._mix(x, state, "recurrent")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, head_k={self.head_k}, head_v={self.head_v}"
