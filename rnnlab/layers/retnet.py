"""RetNet's multi-scale retention (Sun, Dong, Huang, Ma, Xia, Xue, Wang & Wei 2023, "Retentive
Network: A Successor to Transformer for Large Language Models", eqs. 5-8).

    Q = (X W_Q) ⊙ Θ,  K = (X W_K) ⊙ Θ̄   (xPos-style rotation e^{inθ}, eq. 3)          per head
    S_n = γ_h S_{n-1} + K_nᵀ V_n,  head_h = Q_n S_n             (recurrent retention, eq. 6)
    γ_h = 1 − 2^(−5−h),  h = 0..H−1                             (multi-scale decays, eq. 8)
    Y = GroupNorm_H(Concat(head_1..head_H))
    MSR(X) = (swish(X W_G) ⊙ Y) W_O                              (eq. 8)

Head sizes as the paper: key dim d/H, value dim 2d/H (``value_factor=2``). K is scaled by
K^-1/2 and the weights use Xavier-uniform with gain 2^-2.5 (W_O: 2^-1), as the authors'
torchscale code. The rotation is rotary (Su et al. 2021) over half-split pairs with base
10000 (torchscale rotates interleaved pairs with a linspace frequency schedule: the same
family of position rotations, a different fixed assignment of frequencies to dims). The
decay γ enters the chunkwise op as a constant log-decay (``chunk_simple_gla``). State: the
matrix memory S (B, H, K, V) and the per-row token count pos (B,) int64 for the rotation.
"""
from __future__ import annotations

from functools import partial
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.parts import fused_linear, param_derived, positions, rotary, rotary_cos_sin, rotary_inv_freq
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.forms import choose
from rnnlab.ops.gla import chunk_simple_gla, fused_recurrent_simple_gla

__all__ = ["RetNet"]


@register_mixer("retnet", family="matrix", small={"num_heads": 2, "chunk_size": 16})
class RetNet(Mixer):
    """x (B, T, D) -> y (B, T, D). num_heads: H (key dim D/H, value dim value_factor·D/H);
    chunk_size: chunk of the parallel form; norm_eps: GroupNorm epsilon."""

    def __init__(self, d_model: int, num_heads: int = 4, value_factor: int = 2, chunk_size: int = 64, norm_eps: float = 1e-6, rope_base: float = 10000.0):
        super().__init__(d_model)
        if num_heads < 1 or d_model % num_heads or (d_model // num_heads) % 2:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads} into an even head size (rotation)")
        H = num_heads
        self.num_heads, self.head_k, self.head_v = H, d_model // H, value_factor * d_model // H
        self.chunk_size, self.rope_base = chunk_size, rope_base
        self.q_proj = nn.Linear(d_model, H * self.head_k, bias=False)
        self.k_proj = nn.Linear(d_model, H * self.head_k, bias=False)
        self.v_proj = nn.Linear(d_model, H * self.head_v, bias=False)
        self.g_proj = nn.Linear(d_model, H * self.head_v, bias=False)
        self.o_proj = nn.Linear(H * self.head_v, d_model, bias=False)
        self.group_norm = nn.GroupNorm(H, H * self.head_v, eps=norm_eps)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.g_proj):
            nn.init.xavier_uniform_(lin.weight, gain=2**-2.5)
        nn.init.xavier_uniform_(self.o_proj.weight, gain=2**-1)
        # γ_h = 1 − 2^(−5−h): fixed, not a parameter (eq. 8)
        self.register_buffer("log_gamma", torch.log1p(-(2.0 ** (-5.0 - torch.arange(H, dtype=torch.float64)))).float(), persistent=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or torch.float32
        return {"S": torch.zeros(batch_size, self.num_heads, self.head_k, self.head_v, device=device, dtype=dtype),
                "pos": torch.zeros(batch_size, device=device, dtype=torch.int64)}

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.head_k * self.head_v + 1

    def _mix(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        B, T, _ = x.shape
        H = self.num_heads
        q = rearrange(self.q_proj(x), "b t (h d) -> b t h d", h=H)
        k = rearrange(self.k_proj(x), "b t (h d) -> b t h d", h=H)
        v = rearrange(self.v_proj(x), "b t (h d) -> b t h d", h=H)
        cos, sin = rotary_cos_sin(positions(state["pos"], T), self.head_k, self.rope_base)
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        g = self.log_gamma.to(x.device).expand(B, T, H)  # (B, T, H) constant log-decay
        kw = dict(initial_state=state["S"].float(), output_final_state=True)  # scale = K^-1/2
        op = choose(form, {"chunk": partial(chunk_simple_gla, chunk_size=self.chunk_size), "recurrent": fused_recurrent_simple_gla}, "retnet")
        o, S = op(q, k, v, g, **kw)
        y = self.group_norm(rearrange(o, "b t h d -> (b t) (h d)")).view(B, T, -1)
        y = self.o_proj(F.silu(self.g_proj(x)) * y)
        return y, {"S": S.to(state["S"].dtype), "pos": state["pos"] + T}

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y, state): chunkwise retention (eq. 7's chunkwise form)."""
        return self._mix(x, state, "chunk")

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y, state): recurrent retention (eq. 6); on CPU without autograd the fused decode kernel
        (rnnlab.ops.decode) between the projections."""
        if decode.usable(x, state["S"], self.q_proj.weight):
            inv_freq = param_derived(self, "_inv_freq", lambda: rotary_inv_freq(self.head_k, self.rope_base))  # a constant
            proj = fused_linear(x, [self.q_proj, self.k_proj, self.v_proj, self.g_proj], whole=True)
            out, (S, pos) = decode.fused_step("retnet_decode", self, proj, [state["S"], state["pos"]],
                                              [inv_freq, self.log_gamma, self.group_norm.weight, self.group_norm.bias],
                                              self.num_heads * self.head_v, [2 * self.head_k], self.group_norm.eps)
            return decode.linear(self.o_proj, out), {"S": S, "pos": pos}
        return self._mix(x, state, "recurrent")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, head_k={self.head_k}, head_v={self.head_v}"
