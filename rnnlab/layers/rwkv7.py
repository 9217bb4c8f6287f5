"""RWKV-7 "Goose" (Peng et al. 2025, "RWKV-7 "Goose" with Expressive Dynamic State Evolution"):
the time-mix (``rwkv7``, family "delta") and the channel-mix (``rwkv7_channel_mix``, family
"other", for the block's MLP slot).

Time-mix, per token (paper §4, eq. 3-20; parameter names as the authors' code):
    x◇ = x_t + (x_{t-1} − x_t) ⊙ μ◇            token shift, ◇ ∈ {r, w, k, v, a, g}
    r, k, v = W_r x_r, W_k x_k, W_v x_v
    log w = −e^{−0.5} σ(w0 + tanh(x_w W1) W2)   decay in (e^{−e^{−0.5}}, 1), LoRA
    a = σ(a0 + x_a A1 A2)                        in-context learning rate, LoRA
    g = σ(x_g G1) G2                             output gate, LoRA
    κ̂ = normalize(k ⊙ ξ) per head               removal key (ξ = k_k)
    k̃ = k ⊙ (1 + (a − 1) ⊙ α)                   replacement key (α = k_a)
    S_t = S_{t-1}(Diag(w) − κ̂ (a ⊙ κ̂)ᵀ) + v k̃ᵀ,  o = S_t r   (the op, a = −κ̂, b = κ̂ ⊙ a)
    y = W_o ((GroupNorm_head(o) + ((r ⊙ ρ ⊙ k̃)·1) v) ⊙ g)      bonus term (ρ = r_k)

Initialization follows the authors' training code (layer-dependent token-shift and decay
schedules from ``layer_idx``/``num_layers``; LoRA down-projections zero, up-projections
orthogonal × 0.1; W_o zero (``zero_init_output``); GroupNorm eps = head_size · 1e-5).

Simplifications: the value residual (v ← lerp(v, v_first, σ(v0 + x_v V1 V2)) for layers > 0)
needs the first layer's v from the block, which rnnlab's block does not pass: it is disabled
(so there are no v0/V1/V2 parameters). No ``negative_eigenvalues`` option: the paper keeps
a ∈ (0, 1). The parallel form is the chunkwise op ``chunk_rwkv7``, the step the rank-one
``fused_recurrent_rwkv7`` (rnnlab/ops/rwkv7.py).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.parts import LoRA, param_derived
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7

__all__ = ["RWKV7TimeMix", "RWKV7ChannelMix"]


def _lora_dim(d_model: int, factor: float, power: float = 0.5) -> int:
    """The authors' LoRA rank rule: max(32, round(factor · C^power / 32) · 32)."""
    return max(32, int(round(factor * d_model**power / 32) * 32))


def _shift(x: Tensor, prev: Tensor) -> Tensor:
    """x (B, T, D), prev (B, D) -> x_{t-1} (B, T, D), with prev before the first token."""
    return torch.cat([prev.to(x.dtype)[:, None], x[:, :-1]], 1)


def _rwkv_lora(d_model: int, rank: int, activation: str | None, bias: bool) -> LoRA:
    lora = LoRA(d_model, rank, d_model, activation=activation, bias=bias)
    with torch.no_grad():
        nn.init.zeros_(lora.down.weight)
        nn.init.orthogonal_(lora.up.weight, gain=0.1)
        if bias:
            nn.init.zeros_(lora.up.bias)
    return lora


@register_mixer("rwkv7", family="delta", small={"head_size": 16, "zero_init_output": False})
class RWKV7TimeMix(Mixer):
    """RWKV-7 time-mix: x (B, T, D) -> y (B, T, D). State: shift (B, D), the previous token's input,
    and S (B, H, K, K) float32 (stored as Sᵀ, see rnnlab/ops/rwkv7.py).

    head_size: K (D must be a multiple); layer_idx, num_layers: for the layer-dependent init;
    chunk_size: chunk of the chunkwise op; zero_init_output: W_o = 0 as the authors do (the output is then zero until trained; the small
    conformance instance turns it off so that its outputs are informative).
    """

    def __init__(self, d_model: int, head_size: int = 64, layer_idx: int = 0, num_layers: int = 12, zero_init_output: bool = True,
                 chunk_size: int = 16):
        super().__init__(d_model)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        if head_size < 1 or d_model % head_size:
            raise ValueError(f"d_model ({d_model}) must be a positive multiple of head_size, got head_size={head_size}")
        if num_layers < 1 or not 0 <= layer_idx < num_layers:
            raise ValueError(f"need 0 <= layer_idx < num_layers, got layer_idx={layer_idx}, num_layers={num_layers}")
        C, N = d_model, head_size
        H = C // N
        self.num_heads, self.head_size = H, N
        ratio_0_to_1 = layer_idx / max(num_layers - 1, 1)
        ratio_1_to_almost0 = 1.0 - layer_idx / num_layers
        ddd = torch.arange(C, dtype=torch.float32) / C
        self.x_r = nn.Parameter(1.0 - ddd.pow(0.2 * ratio_1_to_almost0))
        self.x_w = nn.Parameter(1.0 - ddd.pow(0.9 * ratio_1_to_almost0))
        self.x_k = nn.Parameter(1.0 - ddd.pow(0.7 * ratio_1_to_almost0))
        self.x_v = nn.Parameter(1.0 - ddd.pow(0.7 * ratio_1_to_almost0))
        self.x_a = nn.Parameter(1.0 - ddd.pow(0.9 * ratio_1_to_almost0))
        self.x_g = nn.Parameter(1.0 - ddd.pow(0.2 * ratio_1_to_almost0))
        n = torch.arange(C, dtype=torch.float32)
        decay_speed = -7 + 5 * (n / max(C - 1, 1)) ** (0.85 + 1.0 * ratio_0_to_1**0.5)
        self.w_lora = _rwkv_lora(C, _lora_dim(C, 1.8), "tanh", bias=True)
        self.a_lora = _rwkv_lora(C, _lora_dim(C, 1.8), None, bias=True)
        self.g_lora = _rwkv_lora(C, _lora_dim(C, 0.6, 0.8), "sigmoid", bias=False)
        with torch.no_grad():
            self.w_lora.up.bias.copy_(decay_speed + 0.5)  # w0
        self.k_k = nn.Parameter(torch.full((C,), 0.85))
        self.k_a = nn.Parameter(torch.ones(C))
        self.r_k = nn.Parameter(torch.zeros(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        with torch.no_grad():
            nn.init.uniform_(self.receptance.weight, -0.5 / C**0.5, 0.5 / C**0.5)
            nn.init.uniform_(self.key.weight, -0.05 / C**0.5, 0.05 / C**0.5)
            nn.init.uniform_(self.value.weight, -0.5 / C**0.5, 0.5 / C**0.5)
            if zero_init_output:
                nn.init.zeros_(self.output.weight)
        self.ln_x = nn.GroupNorm(H, C, eps=N * 1e-5)
        with torch.no_grad():
            self.ln_x.weight.fill_(((1 + layer_idx) / num_layers) ** 0.7)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or torch.float32
        N = self.head_size
        return {"shift": torch.zeros(batch_size, self.d_model, device=device, dtype=dtype),
                "S": torch.zeros(batch_size, self.num_heads, N, N, device=device, dtype=dtype)}

    def state_size(self, seq_len: int) -> int:
        return self.d_model + self.num_heads * self.head_size**2

    def _mix(self, x: Tensor, state: State, op) -> tuple[Tensor, State]:
        B, T, C = x.shape
        H = self.num_heads
        xx = _shift(x, state["shift"]) - x
        xr, xw, xk, xv, xa, xg = (x + xx * mu.to(x.dtype) for mu in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        log_w = -math.exp(-0.5) * torch.sigmoid(self.w_lora(xw).float())  # (B, T, C), in (−e^{−1/2}, 0)
        a = torch.sigmoid(self.a_lora(xa).float())
        g = self.g_lora(xg)
        heads = lambda t: rearrange(t, "b t (h n) -> b t h n", h=H)  # noqa: E731
        kk = F.normalize(heads(k.float() * self.k_k.float()), dim=-1)  # removal key κ̂
        k = k.float() * (1 + (a - 1) * self.k_a.float())  # replacement key k̃
        r, k, v, a, log_w = heads(r.float()), heads(k), heads(v.float()), heads(a), heads(log_w)
        o, S = op(r, k, v, log_w, -kk, kk * a, scale=1.0, initial_state=state["S"].float(), output_final_state=True)
        o = F.group_norm(rearrange(o, "b t h n -> (b t) (h n)"), H, self.ln_x.weight.float(), self.ln_x.bias.float(), self.ln_x.eps).view(B, T, C)
        bonus = ((r * k * self.r_k.float()).sum(-1, keepdim=True) * v).reshape(B, T, C)
        y = self.output(((o + bonus) * g.float()).to(x.dtype))
        return y, {"shift": x[:, -1].to(state["shift"].dtype), "S": S.to(state["S"].dtype)}

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y (B, T, D), state): chunkwise form of the op."""
        return self._mix(x, state, functools.partial(chunk_rwkv7, chunk_size=self.chunk_size))

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y (B, 1, D), state): one diagonal-plus-rank-one update (on CPU without autograd the fused
        decode kernel, rnnlab.ops.decode, up to the output projection)."""
        if decode.usable(x, *state.values(), self.x_r, max_batch=8):  # projections row by row: B <= 8
            return self._decode(x, state)
        return self._mix(x, state, fused_recurrent_rwkv7)

    def _decode(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        mu = param_derived(self, "_decode_mu", lambda *m: torch.stack(m), self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g)
        w, a, g = self.w_lora, self.a_lora, self.g_lora
        D, N = self.d_model, self.head_size
        out, (shift, S) = decode.fused_step(
            "rwkv7_decode", self, x, [state["shift"], state["S"]],
            [mu, self.receptance.weight, self.key.weight, self.value.weight, w.down.weight, w.up.weight, w.up.bias,
             a.down.weight, a.up.weight, a.up.bias, g.down.weight, g.up.weight, self.k_k, self.k_a, self.r_k, self.ln_x.weight,
             self.ln_x.bias], D, [6 * D] + [D] * 6 + [max(w.down.out_features, a.down.out_features, g.down.out_features), N],
            self.ln_x.eps)
        return decode.linear(self.output, out), {"shift": shift, "S": S}

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, head_size={self.head_size}"


@register_mixer("rwkv7_channel_mix", family="other", small={"hidden_ratio": 2, "zero_init_output": False})
class RWKV7ChannelMix(Mixer):
    """RWKV-7 channel-mix (paper §4, eq. 21-22): k = ReLU(W_k (x + (x_{t-1} − x) ⊙ μ_k))², y = W_v k.
    x (B, T, D) -> y (B, T, D). State: shift (B, D), the previous token's input.

    hidden_ratio: hidden size = hidden_ratio · D (4 in the paper); layer_idx, num_layers: init schedule;
    zero_init_output: W_v = 0 as the authors do (off in the small conformance instance).
    """

    def __init__(self, d_model: int, hidden_ratio: float = 4.0, layer_idx: int = 0, num_layers: int = 12, zero_init_output: bool = True):
        super().__init__(d_model)
        if num_layers < 1 or not 0 <= layer_idx < num_layers:
            raise ValueError(f"need 0 <= layer_idx < num_layers, got layer_idx={layer_idx}, num_layers={num_layers}")
        hidden = int(hidden_ratio * d_model)
        if hidden < 1:
            raise ValueError(f"hidden_ratio * d_model must be >= 1, got {hidden_ratio} * {d_model}")
        ratio_1_to_almost0 = 1.0 - layer_idx / num_layers
        ddd = torch.arange(d_model, dtype=torch.float32) / d_model
        self.x_k = nn.Parameter(1.0 - ddd.pow(ratio_1_to_almost0**4))
        self.key = nn.Linear(d_model, hidden, bias=False)
        self.value = nn.Linear(hidden, d_model, bias=False)
        with torch.no_grad():
            nn.init.uniform_(self.key.weight, -0.5 / d_model**0.5, 0.5 / d_model**0.5)
            if zero_init_output:
                nn.init.zeros_(self.value.weight)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"shift": torch.zeros(batch_size, self.d_model, device=device, dtype=dtype or torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return self.d_model

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y (B, T, D), state)."""
        k = x + (_shift(x, state["shift"]) - x) * self.x_k.to(x.dtype)
        y = decode.linear(self.value, torch.relu(decode.linear(self.key, k)).square())  # the modules but at T = 1
        return y, {"shift": x[:, -1].to(state["shift"].dtype)}

    step = parallel  # the same computation for one token
