"""RWKV-6 "Finch" (Peng, Goldstein, Anthony, Albalak, Alcaide, Biderman, ... & Zhu 2024, "Eagle and
Finch: RWKV with Matrix-Valued States and Dynamic Recurrence", Section 4, eqs. 10-20): the time-mix
(``rwkv6``, family "matrix") and the channel-mix (``rwkv6_channel_mix``, family "other", for the
block's MLP slot: ``ModelConfig(mixer="rwkv6", mlp="rwkv6_channel_mix")`` is the paper's block).

Time-mix, per token (names as the authors' x060 code):
    lora◇(x) = λ◇ + tanh(x A◇) B◇                                         (eq. 10)
    ddlerp◇(a, b) = a + (b − a) ⊙ lora◇(a + (b − a) ⊙ μ_x)                (eq. 11, data-dependent token shift)
    ◇_t = ddlerp◇(x_t, x_{t−1}) W◇,  ◇ ∈ {r, k, v, g}                    (eq. 12-15; g = SiLU(·))
    d_t = lora_d(ddlerp_d(x_t, x_{t−1})),  w_t = exp(−exp(d_t))           (eq. 16-17, LoRA decay)
    wkv_t = diag(u) k_tᵀ v_t + Σ_{i<t} diag(⊙_{j=i+1}^{t−1} w_j) k_iᵀ v_i  (eq. 18, bonus u)
    o_t = W_o (GroupNorm_head(r_t · wkv_t) ⊙ g_t)                          (eq. 19-20)
The recurrence runs through ``rnnlab.ops.rwkv6`` with log-decay −exp(d_t) and scale 1 (the paper has no
1/sqrt(K)). Channel-mix (eqs. 21-23): k' = ReLU(W_k' lerp_k)², y = σ(W_r' lerp_r) ⊙ W_v' k'.

Initialization as the authors' x060 code (``layer_idx``, ``num_layers``): μ and λ schedules over the
channels, decay speeds −6 + 5 (n / (D−1))^{0.7 + 1.3 r}, bonus u from the same ratio with a zigzag,
LoRA up-matrices U(±0.01), W_r, W_v orthogonal, W_k, W_g orthogonal × 0.1, W_o zero (``zero_init``;
the small conformance instance turns it off so that outputs are informative), GroupNorm ε = 1e-5·8².
The LoRA down-matrices are U(±1e-4) (the first x060 release has them at zero, which gives their
up-matrices no gradient at the first step; later releases draw them small, as here).

The channel-mix is RWKV-4's (``rwkv4_channel_mix``: same token shift, squared-ReLU key and receptance
gate, same initialization), with the hidden size 3.5·D rounded down to a multiple of 32 as Finch uses.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import param_derived
from rnnlab.layers.registry import register_mixer
from rnnlab.layers.rwkv4 import RWKV4ChannelMix, _rwkv_linear
from rnnlab.ops import decode
from rnnlab.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6

__all__ = ["RWKV6TimeMix", "RWKV6ChannelMix"]

_MIX = ("w", "k", "v", "r", "g")  # the five data-dependent interpolations, in the authors' order


def _check_layer(layer_idx: int, num_layers: int) -> tuple[float, float]:
    if not (isinstance(layer_idx, int) and isinstance(num_layers, int) and 0 <= layer_idx < num_layers):
        raise ValueError(f"need 0 <= layer_idx < num_layers (ints), got layer_idx={layer_idx!r}, num_layers={num_layers!r}")
    return layer_idx / max(num_layers - 1, 1), 1.0 - layer_idx / num_layers  # ratio_0_to_1, ratio_1_to_almost0


@register_mixer("rwkv6", family="matrix", small={"head_size": 16, "mix_rank": 8, "decay_rank": 8, "zero_init": False, "chunk_size": 16})
class RWKV6TimeMix(Mixer):
    """RWKV-6 time-mix: x (B, T, D) -> y (B, T, D). State: shift (B, D), the previous token's input, and
    S (B, H, K, K) float32.

    head_size: K (D a multiple of it); layer_idx, num_layers: the layer-dependent init; mix_rank /
    decay_rank: LoRA ranks of the token shift (32) and the decay (64); zero_init: W_o = 0 as the authors;
    chunk_size: chunk of the parallel form (<= 16 or a multiple of 16)."""

    def __init__(self, d_model: int, head_size: int = 64, layer_idx: int = 0, num_layers: int = 12, mix_rank: int = 32,
                 decay_rank: int = 64, zero_init: bool = True, chunk_size: int = 64):
        super().__init__(d_model)
        if head_size < 1 or d_model % head_size:
            raise ValueError(f"d_model={d_model} must be a positive multiple of head_size={head_size}")
        r01, r10 = _check_layer(layer_idx, num_layers)
        C, N = d_model, head_size
        H = C // N
        self.num_heads, self.head_size, self.chunk_size = H, N, chunk_size
        ddd = torch.arange(C, dtype=torch.float64) / C
        n = torch.arange(C, dtype=torch.float64) / max(C - 1, 1)
        self.maa_x = nn.Parameter((1 - ddd**r10).float())  # μ_x
        self.maa = nn.Parameter(torch.stack([1 - ddd**r10, 1 - ddd**r10, 1 - (ddd**r10 + 0.3 * r01), 1 - ddd ** (0.5 * r10),
                                             1 - ddd ** (0.5 * r10)]).float())  # λ_w, λ_k, λ_v, λ_r, λ_g
        self.maa_w1 = nn.Parameter(torch.empty(C, len(_MIX) * mix_rank).uniform_(-1e-4, 1e-4))
        self.maa_w2 = nn.Parameter(torch.empty(len(_MIX), mix_rank, C).uniform_(-0.01, 0.01))
        self.time_decay = nn.Parameter((-6 + 5 * n ** (0.7 + 1.3 * r01)).float())
        self.decay_w1 = nn.Parameter(torch.empty(C, decay_rank).uniform_(-1e-4, 1e-4))
        self.decay_w2 = nn.Parameter(torch.empty(decay_rank, C).uniform_(-0.01, 0.01))
        zigzag = (torch.arange(C) + 1) % 3 - 1
        self.time_first = nn.Parameter((r01 * (1 - n) + 0.1 * zigzag).float().view(H, N))  # u
        self.receptance = _rwkv_linear(C, C, False)
        self.key = _rwkv_linear(C, C, False)
        self.value = _rwkv_linear(C, C, False)
        self.gate = _rwkv_linear(C, C, False)
        self.output = _rwkv_linear(C, C, zero_init)
        with torch.no_grad():
            self.key.weight.mul_(0.1)
            self.gate.weight.mul_(0.1)
        self.ln_x = nn.GroupNorm(H, C, eps=1e-5 * 8**2)
        no_weight_decay(self.maa_x, self.maa, self.time_decay, self.time_first)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or torch.float32
        N = self.head_size
        return {"shift": torch.zeros(batch_size, self.d_model, device=device, dtype=dtype),
                "S": torch.zeros(batch_size, self.num_heads, N, N, device=device, dtype=dtype)}

    def state_size(self, seq_len: int) -> int:
        return self.d_model + self.num_heads * self.head_size**2

    def _mix(self, x: Tensor, state: State, op) -> tuple[Tensor, State]:
        B, T, C = x.shape
        xx = torch.cat([state["shift"].to(x.dtype)[:, None], x[:, :-1]], 1) - x  # x_{t-1} - x_t
        xxx = x + xx * self.maa_x.to(x.dtype)
        lora = torch.tanh(xxx @ self.maa_w1.to(x.dtype)).unflatten(-1, (len(_MIX), -1))  # (B, T, 5, rank)
        mix = torch.einsum("btfr,frc->fbtc", lora, self.maa_w2.to(x.dtype)) + self.maa.to(x.dtype)[:, None, None]  # (5, B, T, C)
        xw, xk, xv, xr, xg = (x + xx * m for m in mix)
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        g = F.silu(self.gate(xg))
        d = self.time_decay.float() + torch.tanh(xw.float() @ self.decay_w1.float()) @ self.decay_w2.float()
        heads = lambda t: rearrange(t, "b t (h n) -> b t h n", h=self.num_heads)  # noqa: E731
        o, S = op(heads(r), heads(k), heads(v), heads(-torch.exp(d)), self.time_first.float(), scale=1.0,
                  initial_state=state["S"].float(), output_final_state=True)
        o = F.group_norm(rearrange(o.float(), "b t h n -> (b t) (h n)"), self.num_heads, self.ln_x.weight.float(),
                         self.ln_x.bias.float(), self.ln_x.eps).view(B, T, C)
        y = self.output((o * g.float()).to(x.dtype))
        return y, {"shift": x[:, -1].to(state["shift"].dtype), "S": S.to(state["S"].dtype)}

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y, state): chunkwise form of the op."""
        return self._mix(x, state, functools.partial(chunk_rwkv6, chunk_size=self.chunk_size))

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y, state): one recurrent update (on CPU without autograd the fused decode kernel,
        rnnlab.ops.decode, up to the output projection)."""
        if decode.usable(x, *state.values(), self.maa_x, max_batch=8):  # projections row by row: B <= 8
            return self._decode(x, state)
        return self._mix(x, state, fused_recurrent_rwkv6)

    def _decode(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        # the LoRAs' input-major factors transposed to (out, in) rows, kept while the parameters are unchanged
        w1t, w2t, dw1t, dw2t = param_derived(self, "_decode_loras", lambda w1, w2, d1, d2: (
            w1.t().contiguous(), w2.transpose(1, 2).contiguous(), d1.t().contiguous(), d2.t().contiguous()),
            self.maa_w1, self.maa_w2, self.decay_w1, self.decay_w2)
        D = self.d_model
        out, (shift, S) = decode.fused_step(
            "rwkv6_decode", self, x, [state["shift"], state["S"]],
            [self.maa_x, self.maa, w1t, w2t, self.receptance.weight, self.key.weight, self.value.weight, self.gate.weight,
             self.time_decay, dw1t, dw2t, self.time_first, self.ln_x.weight, self.ln_x.bias], D,
            [5 * D, self.maa_w1.shape[1], D, D, D, D, D, self.decay_w1.shape[1]], self.ln_x.eps)
        return decode.linear(self.output, out), {"shift": shift, "S": S}

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, head_size={self.head_size}"


@register_mixer("rwkv6_channel_mix", family="other", small={"zero_init": False})
class RWKV6ChannelMix(RWKV4ChannelMix):
    """RWKV-6 channel-mix (the block's MLP): x (B, T, D) -> y (B, T, D); state shift (B, D). RWKV-4's
    channel-mix with Finch's hidden size, int(3.5·D) rounded down to a multiple of 32 (at least 32)."""

    def __init__(self, d_model: int, hidden_ratio: float = 3.5, layer_idx: int = 0, num_layers: int = 12, zero_init: bool = True):
        _check_layer(layer_idx, num_layers)
        super().__init__(d_model, expansion=1, layer_id=layer_idx, num_layers=num_layers, zero_init=zero_init)
        self.d_hidden = max(32, int(hidden_ratio * d_model) // 32 * 32)
        self.key = _rwkv_linear(d_model, self.d_hidden, False)
        self.value = _rwkv_linear(self.d_hidden, d_model, zero_init)
