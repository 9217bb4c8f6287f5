"""Log-linear Mamba-2 and log-linear Gated DeltaNet (Guo, Yang, Goel, Xing, Dao & Kim 2025, "Log-Linear Attention",
arXiv 2506.04761, §3.3 / §4: the two case studies).

The layer is its base (Mamba-2: rnnlab/layers/mamba2.py; Gated DeltaNet: rnnlab/layers/gated_deltanet.py) with the
single matrix state replaced by the Fenwick hierarchy of ``rnnlab.ops.log_linear`` (one state per level, O(log T)
of them, o_t = Σ_ℓ λ_t^(ℓ) S_t^(ℓ)ᵀ q_t) and level weights made from the token:

    λ_t^(ℓ) = softplus(L_hℓ · (W_λ x_t)_hℓ)     per head h and level ℓ = 0 .. num_levels − 1, L initialized to 1

The paper makes λ a data-dependent function of x_t (a linear projection); the softplus with the per-(head, level)
scale L (no weight decay) is the authors' code (github.com/HanGuo97/log-linear-attention, ``lambda_mode
"positive"``), followed here. Mamba-2's W_λ rows are part of its input projection, after dt (the authors' layout:
z, xBC, dt, dλ); Gated DeltaNet's is a separate ``l_proj`` (the authors' too). ``num_levels`` is the capacity of
λ: positions up to 2^(num_levels − 1) − 1 (default 15: 16384 tokens, the authors' MAX_NUM_LEVELS); a longer
sequence is a ValueError from the op. Everything else (gates, convs, norms, initializations) is the base layer's.

State: the base's conv buffers, "S" (B, n, H, K, V) the level states (highest first; n = bit_length(tokens seen),
so ``state_size`` grows as log2 T) and "pos" (B,) int64. Simplifications: none in the math; the chunked form is
autograd-differentiated torch (no hand-written backward) and Gated DeltaNet's variant has one Householder step.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import State, no_weight_decay
from rnnlab.layers.gated_deltanet import GatedDeltaNet
from rnnlab.layers.mamba2 import Mamba2
from rnnlab.layers.parts import fused_linear
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.forms import choose
from rnnlab.ops.log_linear import (chunk_log_linear_gated_delta_rule, chunk_log_linear_simple_gla, fused_recurrent_log_linear_gated_delta_rule,
                                   fused_recurrent_log_linear_simple_gla, level_count, levels_for_token,
                                   log_linear_state)

__all__ = ["LogLinearMamba2", "LogLinearGatedDeltaNet"]


def _check_levels(num_levels: int, chunk_size: int) -> None:
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two (chunks sit on the Fenwick tree's grid), got {chunk_size}")
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2 (level 0 is the token itself), got {num_levels}")


def _level_scales(L: Tensor, dl: Tensor) -> Tensor:
    """λ = softplus(L ⊙ dl): L (H, NL), dl (B, T, H·NL) -> (B, T, H, NL) float32 (float64 for a float64 module)."""
    acc = torch.float64 if dl.dtype == torch.float64 else torch.float32
    return F.softplus(L.to(acc) * dl.to(acc).unflatten(-1, L.shape))


@register_mixer("log_linear_mamba2", family="matrix", small={"headdim": 16, "d_state": 16, "ngroups": 2, "chunk_size": 16})
class LogLinearMamba2(Mamba2):
    """x (B, T, D) -> y (B, T, D): Mamba-2 with the Fenwick hierarchy of states. Options as ``mamba2``, plus
    num_levels: the level weights per head (capacity 2^(num_levels − 1) positions); chunk_size a power of two."""

    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, expand: int = 2, headdim: int = 64, ngroups: int = 1,
                 chunk_size: int = 64, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 A_init_range: tuple[float, float] = (1.0, 16.0), norm_eps: float = 1e-5, bias: bool = False, conv_bias: bool = True,
                 num_levels: int = 15):
        _check_levels(num_levels, chunk_size)
        super().__init__(d_model, d_state, d_conv, expand, headdim, ngroups, chunk_size, dt_min, dt_max, dt_init_floor, A_init_range,
                         norm_eps, bias, conv_bias)
        self.num_levels = num_levels
        self.in_proj = nn.Linear(d_model, self.in_proj.out_features + self.num_heads * num_levels, bias=bias)  # + W_λ rows
        self.L = nn.Parameter(torch.ones(self.num_heads, num_levels))
        no_weight_decay(self.L)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"conv": self.conv.init_state(batch_size, device, dtype),
                **log_linear_state(batch_size, self.num_heads, self.d_state, self.headdim, device, dtype)}

    def state_size(self, seq_len: int) -> int:
        return self.conv.state_size() + level_count(seq_len) * self.num_heads * self.d_state * self.headdim + 1

    def _ssd(self, Cm: Tensor, Bm: Tensor, v: Tensor, g: Tensor, extra: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        rep = self.num_heads // self.ngroups  # the op takes one q, k per head
        q, k = Cm.repeat_interleave(rep, 2), Bm.repeat_interleave(rep, 2)
        s0 = {"S": state["S"].to(g.dtype), "pos": state["pos"]}
        op = choose(form, {"chunk": partial(chunk_log_linear_simple_gla, chunk_size=self.chunk_size),
                           "recurrent": fused_recurrent_log_linear_simple_gla}, "log_linear_mamba2")
        y, s = op(q, k, v, g, _level_scales(self.L, extra), scale=1.0, initial_state=s0, output_final_state=True)
        return y, {"S": s["S"].to(state["S"].dtype), "pos": s["pos"]}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One token; on CPU without autograd the whole middle of the layer in one fused decode kernel
        (``log_linear_ssd_decode``: Mamba-2's conv and gates, the level weights, the levels, the gated norm); otherwise
        Mamba-2's torch step around the op's token."""
        params = (self.in_proj.weight, self.L, self.A_log, self.dt_bias, self.norm_weight)
        if decode.usable(x, *(t for t in state.values() if t.is_floating_point()), *params):
            keys = ["conv", "S", "pos"]
            S = levels_for_token(state["S"], state["pos"], self.num_levels)
            w = self.norm_weight  # the stand-in for the conv's bias when it has none (never read then)
            out, new = decode.fused_step(
                "log_linear_ssd_decode", self, decode.linear(self.in_proj, x), [state["conv"], S, state["pos"]],
                [self.conv.weight, w if self.conv.bias is None else self.conv.bias, self.dt_bias, self._A(x.dtype), self.D, self.L, w],
                self.d_inner, [state["conv"].shape[-1], self.num_heads * self.num_levels, 3 * self.d_inner], self.conv.bias is not None,
                self.ngroups, self.norm_eps)
            return decode.linear(self.out_proj, out), dict(zip(keys, new))
        return self._mix(x, state, "recurrent")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_levels={self.num_levels}"


@register_mixer("log_linear_gated_deltanet", family="delta", small={"num_heads": 2, "chunk_size": 16})
class LogLinearGatedDeltaNet(GatedDeltaNet):
    """x (B, T, D) -> y (B, T, D): Gated DeltaNet with the Fenwick hierarchy of states. Options as ``gated_deltanet``,
    plus num_levels: the level weights per head (capacity 2^(num_levels − 1) positions); chunk_size a power of two."""

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None, expand_v: float = 2.0, conv_size: int = 4,
                 chunk_size: int = 64, negative_eigenvalues: bool = False, norm_eps: float = 1e-5, num_levels: int = 15):
        _check_levels(num_levels, chunk_size)
        super().__init__(d_model, num_heads, head_dim, expand_v, conv_size, chunk_size, negative_eigenvalues, norm_eps)
        self.num_levels = num_levels
        self.l_proj = nn.Linear(d_model, num_heads * num_levels, bias=False)
        self.L = nn.Parameter(torch.ones(num_heads, num_levels))
        no_weight_decay(self.L)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        st = super().init_state(batch_size, device, dtype)
        del st["S"]
        return {**st, **log_linear_state(batch_size, self.num_heads, self.head_k, self.head_v, device, dtype)}

    def state_size(self, seq_len: int) -> int:
        convs = self.q_conv.state_size() + self.k_conv.state_size() + self.v_conv.state_size()
        return convs + level_count(seq_len) * self.num_heads * self.head_k * self.head_v + 1

    def _core(self, q, k, v, g, beta, x, state, form):
        s0 = {"S": state["S"].float(), "pos": state["pos"]}
        op = choose(form, {"chunk": partial(chunk_log_linear_gated_delta_rule, chunk_size=self.chunk_size),
                           "recurrent": fused_recurrent_log_linear_gated_delta_rule}, "log_linear_gated_deltanet")
        lam = _level_scales(self.L, decode.linear(self.l_proj, x))
        o, s = op(q, k[:, :, :, 0], v[:, :, :, 0], g, beta[..., 0], lam, initial_state=s0, output_final_state=True)
        return o, {"S": s["S"].to(state["S"].dtype), "pos": s["pos"]}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One token; on CPU without autograd the whole middle of the layer in one fused decode kernel
        (``log_linear_delta_decode``: the convs, gates and level weights, the levels, the gated norm); otherwise Gated
        DeltaNet's torch step around the op's token."""
        params = (self.o_proj.weight, self.L, self.A_log, self.dt_bias)
        if decode.usable(x, *(t for t in state.values() if t.is_floating_point()), *params):
            return self._decode_levels(x, state)
        return self._mix(x, state, "recurrent")

    def _decode_levels(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        H, K, V = self.num_heads, self.head_k, self.head_v
        keys = ["conv_q", "conv_k", "conv_v", "S", "pos"]
        S = levels_for_token(state["S"], state["pos"], self.num_levels)
        out, new = decode.fused_step(
            "log_linear_delta_decode", self, fused_linear(x, self._in_layers() + [self.l_proj], whole=True),
            [state["conv_q"], state["conv_k"], state["conv_v"], S, state["pos"]],
            [self.q_conv.weight, self.k_conv.weight, self.v_conv.weight, self._A().to(x.dtype), self.dt_bias, self.L, self.o_norm.weight],
            H * V, [H * K, H * K, H * V, H * self.num_levels, 3 * H * V], H, self.o_norm.eps, 2.0 if self.negative_eigenvalues else 1.0)
        return decode.linear(self.o_proj, out), dict(zip(keys, new))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_levels={self.num_levels}"
