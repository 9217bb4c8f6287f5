"""LaCT (Zhang et al. 2025, "Test-Time Training Done Right"): large-chunk test-time training with SwiGLU fast weights,
plus sliding-window attention for the context inside a chunk, as the paper's language models combine them (§4).

    q, k, v = SiLU(W x) per head; q, k ℓ2-normalized;  lr_t = base_lr · softplus(w_lr x_t + b_lr) per head
    fast weights per head: f_W(x) = (SiLU(x W1) ⊙ (x W3)) W2, hidden ``fast_expansion`` · hd, learned W_0
    o_t = f_{W_c}(q_t): the weights the chunks before t's chunk left (apply, then update; rnnlab/ops/lact.py)
    at each chunk's end: g = Σ lr_s ∇(−f_W(k_s) · v_s), [Newton–Schulz on g], momentum β, W ← renorm(W − M)
    y = W_o RMSNorm_head(o) + SWA(x),   SWA = the `sliding_attention` mixer with window = chunk_size

Choices, said here and in the README: ``newton_schulz`` "none" (the default: the issue lists it as optional),
"muon" (Muon's quintic coefficients, as the authors' code) or "cubic" (the classic (1.5, −0.5, 0)). Muon's quintic
has slope 3.4445 at 0 per step, so its 5 steps amplify rounding in the chunk's gradient sum up to ~480x: the chunk
form and the token loop then disagree at 1.2e-5 to 1.7e-5 in float32 (measured on the conformance suite's inputs,
4.5e-7 without it), above the suite's 1e-5; both are exact in float64 (tests/ops/test_lact.py). ``beta`` the
momentum (0.5 by default); the chunk default is 256 tokens (the paper uses 2048 and more; the CPU benchmarks here run
T <= 8192). The learning rate is one scalar per token and head; with Newton–Schulz, which normalizes g first, only
the rates' ratios within a chunk matter (their common scale cancels). Row-norm renormalization keeps every output unit's
weight vector at its norm.

State: the fast weights {"w1", "w2", "w3"}, the gradient of the current chunk {"g_w1", ...}, the momentum
{"m_w1", ...} (B, H, ·) float32, "pos" (B,) int64 tokens into the chunk; the attention's cache "attn_k", "attn_v"
(B, H, min(T, w − 1), hd), "attn_pos" (B,).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.attention import Attention
from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import RMSNorm, fused_linear
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.delta import l2norm
from rnnlab.ops.lact import LACT_KEYS, NEWTON_SCHULZ, chunk_lact, fused_recurrent_lact

__all__ = ["LaCT"]


@register_mixer("lact", family="ttt", small={"num_heads": 2, "chunk_size": 8})
class LaCT(Mixer):
    """LaCT: x (B, T, D) -> y (B, T, D) (module docstring). num_heads: H (hd = D / H); chunk_size: b (also the
    attention window); fast_expansion: the SwiGLU's hidden / hd; base_lr; beta: momentum; newton_schulz: "muon",
    "cubic" or "none". State floats: 3·H·3·e·hd² + 1 + 2·min(T, b − 1)·D + 1 (e = fast_expansion)."""

    def __init__(self, d_model: int, num_heads: int = 4, chunk_size: int = 256, fast_expansion: int = 2, base_lr: float = 0.1,
                 beta: float = 0.5, newton_schulz: str = "none"):
        super().__init__(d_model)
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        if newton_schulz not in NEWTON_SCHULZ:
            raise ValueError(f"newton_schulz must be one of {tuple(NEWTON_SCHULZ)}, got {newton_schulz!r}")
        if not 0 <= beta < 1 or not base_lr > 0:
            raise ValueError(f"beta must be in [0, 1) and base_lr > 0, got {beta}, {base_lr}")
        hd = d_model // num_heads
        self.num_heads, self.head_dim, self.chunk_size, self.base_lr, self.beta, self.ns = num_heads, hd, chunk_size, base_lr, beta, newton_schulz
        H, Fh = num_heads, fast_expansion * hd
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.lr_proj = nn.Linear(d_model, H)
        self.w1 = nn.Parameter(torch.randn(H, hd, Fh) / math.sqrt(hd))
        self.w3 = nn.Parameter(torch.randn(H, hd, Fh) / math.sqrt(hd))
        self.w2 = nn.Parameter(torch.randn(H, Fh, hd) / math.sqrt(Fh))
        self.o_norm = RMSNorm(hd)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.attn = Attention(d_model, num_heads=num_heads, window=chunk_size)
        no_weight_decay(self.lr_proj.bias)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or torch.float32
        state = {}
        for n in LACT_KEYS:
            w = getattr(self, n).to(device=device, dtype=dtype)
            state[n] = w.unsqueeze(0).expand(batch_size, *w.shape)
            state["g_" + n] = torch.zeros(batch_size, *w.shape, device=device, dtype=dtype)
            state["m_" + n] = torch.zeros(batch_size, *w.shape, device=device, dtype=dtype)
        state["pos"] = torch.zeros(batch_size, device=device, dtype=torch.int64)
        state.update({"attn_" + n: t for n, t in self.attn.init_state(batch_size, device, dtype).items()})
        return state

    def state_size(self, seq_len: int) -> int:
        return 3 * sum(getattr(self, n).numel() for n in LACT_KEYS) + 1 + self.attn.state_size(seq_len)

    def _mix(self, x: Tensor, state: State, op, attend) -> tuple[Tensor, State]:
        H = self.num_heads
        q, k, v = rearrange(F.silu(self.qkv(x)), "b t (three h d) -> three b t h d", three=3, h=H)
        q, k = l2norm(q).to(x.dtype), l2norm(k).to(x.dtype)
        lr = self.base_lr * F.softplus(self.lr_proj(x).float())
        mem = {n: t for n, t in state.items() if not n.startswith("attn_")}
        o, new = op(q, k, v, lr, mem, chunk_size=self.chunk_size, beta=self.beta, newton_schulz=self.ns, output_final_state=True)
        y_attn, attn_state = attend({n[5:]: t for n, t in state.items() if n.startswith("attn_")})
        y = self.o_proj(rearrange(self.o_norm(o), "b t h d -> b t (h d)").to(x.dtype)) + y_attn
        new = {n: (t.to(state[n].dtype) if t.is_floating_point() else t) for n, t in new.items()}
        new.update({"attn_" + n: t for n, t in attn_state.items()})
        return y, new

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y, state): the chunk form and the windowed attention over the call."""
        return self._mix(x, state, chunk_lact, lambda s: self.attn.parallel(x, s))

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y, state): one token of the fast-weight recurrence and one attention step. Without
        Newton–Schulz, on CPU without autograd, the fast weights' part is one fused decode kernel (rnnlab.ops.decode)."""
        keys = [c + n for c in ("", "g_", "m_") for n in LACT_KEYS] + ["pos"]
        if self.ns != "none" or not decode.usable(x, *(state[k] for k in keys[:-1]), self.w1):
            return self._mix(x, state, fused_recurrent_lact, lambda s: self.attn.step(x, s))
        qkv, lrp = fused_linear(x, [self.qkv, self.lr_proj])
        Fh = self.w1.shape[-1]
        hold = decode.chunk_continues(state["pos"], self.chunk_size)  # the weights and momentum pass through
        out, new = decode.fused_step("lact_decode", self, [qkv, lrp], [state[k] for k in keys], [self.o_norm.weight], self.d_model,
                                     [3 * self.d_model, self.num_heads * 5 * Fh], self.base_lr, self.beta, self.chunk_size,
                                     self.o_norm.eps, hold, held=(0, 1, 2, 6, 7, 8) if hold else ())
        y_attn, attn_state = self.attn.step(x, {n[5:]: t for n, t in state.items() if n.startswith("attn_")})
        new = dict(zip(keys, new))
        new.update({"attn_" + n: t for n, t in attn_state.items()})
        return decode.linear(self.o_proj, out) + y_attn, new

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, chunk_size={self.chunk_size}, beta={self.beta}, "
                f"newton_schulz={self.ns!r}")
