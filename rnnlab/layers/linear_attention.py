"""Linear attention (Katharopoulos, Vyas, Pappas & Fleuret 2020, "Transformers are RNNs: Fast
Autoregressive Transformers with Linear Attention", eqs. 6-7 and the causal form eqs. 8-12).

    q, k = φ(W_q x), φ(W_k x),  φ(z) = elu(z) + 1  (eq. 7);   v = W_v x          per head
    S_t = S_{t-1} + k_t v_tᵀ,   z_t = z_{t-1} + k_t                          (eqs. 10-11)
    o_t = S_tᵀ q_t / (z_tᵀ q_t)   (normalize=True, eq. 6)   or   S_tᵀ q_t   (normalize=False)
    y = W_o o

No scaling of q (the paper has none). The normalizer z is carried in the state, so a sequence
split across calls gives the result of one call; it is computed by the same op by appending a
column of ones to v (S and z share one (K, V+1) matrix inside the op).
"""
from __future__ import annotations

from functools import partial
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.forms import choose
from rnnlab.ops.gla import chunk_linear_attn, fused_recurrent_linear_attn

__all__ = ["LinearAttention", "linear_attention_heads"]


def linear_attention_heads(q: Tensor, k: Tensor, v: Tensor, state: State, form: str, chunk_size: int, eps: float) -> tuple[Tensor, State]:
    """Feature-mapped q, k (B, T, H, F), v (B, T, H, V) -> (o (B, T, H, V), {"S", and "z" if in state}).

    o_t = S_tᵀ q_t (/ (z_tᵀ q_t + eps) when the state has a normalizer "z"), scale 1, continuing from
    ``state``; chunkwise (``chunk_linear_attn``) or the fused recurrence. The normalizer z_t = Σ k_s rides
    along as an extra value column of ones, so S and z share one (F, V+1) matrix inside the op.
    Shared by ``linear_attention`` and ``based``."""
    normalize = "z" in state
    if form == "recurrent" and decode.usable(q, k, v, *state.values()):  # one token: the fused kernel (rnnlab.ops.decode)
        z = state["z"] if normalize else state["S"].new_zeros(state["S"].shape[:-1])
        o, (S, z) = decode.fused_step("linear_attn_decode", None, [q, k, v], [state["S"], z], [], v.shape[2] * v.shape[3], [],
                                      normalize, eps)
        return o.view(v.shape), {"S": S, "z": z} if normalize else {"S": S}
    S0 = state["S"].float()
    if normalize:
        v = torch.cat([v, torch.ones_like(v[..., :1])], -1)
        S0 = torch.cat([S0, state["z"].float()[..., None]], -1)
    kw = dict(scale=1.0, initial_state=S0, output_final_state=True)
    op = choose(form, {"chunk": partial(chunk_linear_attn, chunk_size=chunk_size), "recurrent": fused_recurrent_linear_attn}, "linear_attention")
    o, S = op(q, k, v, **kw)
    new = {}
    if normalize:
        o = (o[..., :-1].float() / (o[..., -1:].float() + eps)).to(q.dtype)
        S, new["z"] = S[..., :-1], S[..., -1].to(state["z"].dtype)
    new["S"] = S.to(state["S"].dtype)
    return o, new


@register_mixer("linear_attention", family="matrix", small={"num_heads": 2, "chunk_size": 16})
class LinearAttention(Mixer):
    """x (B, T, D) -> y (B, T, D). State: S (B, H, K, V) and, with ``normalize``, z (B, H, K); float32.

    num_heads: H, head size K = V = D / H; normalize: divide by φ(q)ᵀ Σ φ(k) (the paper's form);
    eps: added to that denominator; chunk_size: chunk of the parallel form."""

    def __init__(self, d_model: int, num_heads: int = 4, normalize: bool = True, eps: float = 1e-6, chunk_size: int = 64):
        super().__init__(d_model)
        if num_heads < 1 or d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim, self.normalize, self.eps, self.chunk_size = num_heads, d_model // num_heads, normalize, eps, chunk_size
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        H, K = self.num_heads, self.head_dim
        st = {"S": torch.zeros(batch_size, H, K, K, device=device, dtype=dtype or torch.float32)}
        if self.normalize:
            st["z"] = torch.zeros(batch_size, H, K, device=device, dtype=dtype or torch.float32)
        return st

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.head_dim * (self.head_dim + int(self.normalize))

    def _mix(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        q, k, v = rearrange(decode.linear(self.qkv, x), "b t (three h d) -> three b t h d", three=3, h=self.num_heads)
        o, new = linear_attention_heads(F.elu(q) + 1, F.elu(k) + 1, v, state, form, self.chunk_size, self.eps)  # φ, eq. 7
        return decode.linear(self.out, rearrange(o, "b t h d -> b t (h d)")), new

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y, state): chunkwise form."""
        return self._mix(x, state, "chunk")

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y, state): one recurrent update."""
        return self._mix(x, state, "recurrent")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, normalize={self.normalize}"
