"""Based (Arora, Eyuboglu, Zhang, Timalsina, Alberti, Zinsley, Zou, Rudra & Ré 2024, "Simple linear
attention language models balance the recall-throughput tradeoff", ICML; Section 4, eq. 3 and the
Taylor feature map of Section 4.1): linear attention with a 2nd-order Taylor feature map, for global
recall with a fixed-size state, combined with small sliding-window softmax attention for precise local
token interactions.

    q, k = x W_q, x W_k  (H heads of feature_dim d = 16),  v = x W_v  (H heads of D/H)
    φ(x) = [1, x / d^{1/4}, vec(x xᵀ) / (√2 · √d)]      so  φ(q)ᵀφ(k) = 1 + qᵀk/√d + (qᵀk)²/(2d)
                                                        (the Taylor expansion of exp(qᵀk/√d), eq. 3)
    o_t = Σ_{s<=t} φ(q_t)ᵀφ(k_s) v_s / Σ_{s<=t} φ(q_t)ᵀφ(k_s)        (normalized; the denominator is >= 1/2 per term)
    y = o W_o + SWA_w(x)                               SWA: causal softmax attention over the last ``window`` tokens

State: the linear-attention memory S (B, H, 1+d+d², D/H) and normalizer z (B, H, 1+d+d²), and the
window's KV cache (at most window−1 tokens) of the ``sliding_attention`` mixer it composes.

Simplification: in the paper the two primitives are separate layers of the stack (linear-attention
layers and sliding-window layers interleaved with gated-convolution layers). Here one mixer applies
both to the same input and adds their outputs, so that ``mixer="based"`` gives the combination in
every layer; ``window=None`` keeps only the Taylor linear attention (flash-linear-attention's
``BasedLinearAttention``), and a per-layer mixer list (``["based", "sliding_attention", ...]`` with
``window=None`` in the based layers) gives the paper's layout.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.attention import Attention
from rnnlab.layers.base import Mixer, State
from rnnlab.layers.parts import fused_linear
from rnnlab.layers.linear_attention import linear_attention_heads
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode

__all__ = ["Based", "taylor_feature_map", "taylor_linear_attention"]

_SWA = "swa_"  # prefix of the sliding-window attention's state keys


def taylor_feature_map(x: Tensor) -> Tensor:
    """x (..., d) -> φ(x) (..., 1 + d + d²) with φ(x)ᵀφ(y) = 1 + xᵀy/√d + (xᵀy)²/(2d)."""
    d = x.shape[-1]
    x2 = (x[..., :, None] * x[..., None, :]).flatten(-2) / math.sqrt(2 * d)
    return torch.cat([torch.ones_like(x[..., :1]), x / d**0.25, x2], -1)


def taylor_linear_attention(owner: Mixer, x: Tensor, S: Tensor, z: Tensor, form: str) -> tuple[Tensor, State]:
    """The Taylor linear attention of Based and JRT-RNN: ``owner``'s q_proj, k_proj (H·d), v_proj (H·V) of x (B, T, D),
    φ of q and k, then normalized linear attention continuing from S (B, H, F, V), z (B, H, F) ->
    (o (B, T, H, V), {"S", "z"}); ``form``: "chunk" or "recurrent" (a decode token: one fused kernel, rnnlab.ops.decode)."""
    H, d = owner.num_heads, owner.feature_dim
    projs = [owner.q_proj, owner.k_proj, owner.v_proj]
    if form == "recurrent" and decode.usable(x, S, z, *(p.weight for p in projs)):
        o, (S, z) = decode.fused_step("taylor_attn_decode", owner, fused_linear(x, projs, whole=True), [S, z], [], S.shape[1] * S.shape[3],
                                      [S.shape[2]] * 2, d, owner.eps)
        return o.view(x.shape[0], 1, H, S.shape[3]), {"S": S, "z": z}
    heads = lambda t: rearrange(t, "b t (h d) -> b t h d", h=H)  # noqa: E731
    q, k = (taylor_feature_map(heads(proj(x)).float()).to(x.dtype) for proj in projs[:2])  # (B, T, H, 1+d+d²)
    return linear_attention_heads(q, k, heads(owner.v_proj(x)), {"S": S, "z": z}, form, owner.chunk_size, owner.eps)


@register_mixer("based", family="matrix", small={"num_heads": 2, "feature_dim": 4, "window": 8, "chunk_size": 16})
class Based(Mixer):
    """x (B, T, D) -> y (B, T, D). num_heads: H (also the window attention's heads); feature_dim: d of
    the Taylor map (state 1 + d + d² per head); window: sliding-window size (None: no window branch);
    chunk_size: chunk of the linear attention's parallel form; eps: added to its denominator."""

    def __init__(self, d_model: int, num_heads: int = 4, feature_dim: int = 16, window: int | None = 64, chunk_size: int = 64,
                 eps: float = 1e-12):
        super().__init__(d_model)
        if num_heads < 1 or d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive int, got {feature_dim!r}")
        H = num_heads
        self.num_heads, self.feature_dim, self.head_dim, self.chunk_size, self.eps = H, feature_dim, d_model // H, chunk_size, eps
        self.num_features = 1 + feature_dim + feature_dim**2
        self.q_proj = nn.Linear(d_model, H * feature_dim, bias=False)
        self.k_proj = nn.Linear(d_model, H * feature_dim, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.swa = Attention(d_model, num_heads=H, window=window) if window is not None else None

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or torch.float32
        H, F_ = self.num_heads, self.num_features
        st = {"S": torch.zeros(batch_size, H, F_, self.head_dim, device=device, dtype=dtype),
              "z": torch.zeros(batch_size, H, F_, device=device, dtype=dtype)}
        if self.swa is not None:
            st.update({_SWA + key: t for key, t in self.swa.init_state(batch_size, device, dtype).items()})
        return st

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.num_features * (self.head_dim + 1) + (self.swa.state_size(seq_len) if self.swa is not None else 0)

    def _mix(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        o, new = taylor_linear_attention(self, x, state["S"], state["z"], form)
        y = decode.linear(self.o_proj, rearrange(o, "b t h d -> b t (h d)"))
        if self.swa is not None:
            y_swa, swa_state = self.swa(x, {key[len(_SWA):]: t for key, t in state.items() if key.startswith(_SWA)})
            y = y + y_swa
            new.update({_SWA + key: t for key, t in swa_state.items()})
        return y, new

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y, state): chunkwise linear attention + windowed SDPA."""
        return self._mix(x, state, "chunk")

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y, state): one recurrent update + one query against the window's cache."""
        return self._mix(x, state, "recurrent")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, feature_dim={self.feature_dim}, window={self.swa.window if self.swa else None}"
