"""Causal multi-head softmax attention with rotary positions and a KV cache as its state.

Vaswani et al. 2017 ("Attention is all you need", eq. 1: softmax(QKᵀ/√d)V) with
rotary position embeddings (Su et al. 2021, RoFormer, eq. 34). With ``window=w``
each query sees only the last w keys, itself included (sliding-window attention, as
in Longformer / Mistral / Griffin's local attention), so the cache keeps w-1 tokens.

State: {"k": (B, H, L, dh), "v": (B, H, L, dh), "pos": (B,) int64} — L = tokens cached
(min(T, window-1) with a window, T without), pos = tokens seen per row (its rotary offset). The cache
is kept in SDPA's (B, H, L, dh) layout, so a decode step hands it over without a transposing copy.
Rows at different positions share one cache: each row's entries are right-aligned and the last
min(pos, L) of them are real (the rest, zeros from merging shorter rows, are masked out), so
prompts of different lengths decode together with no host sync.

Options for checkpoints (``rnnlab.interop``, e.g. Bamba): ``num_kv_heads`` < num_heads shares each key/value
head among num_heads / num_kv_heads query heads (grouped-query attention, Ainslie et al. 2023; the cache holds
num_kv_heads heads), and ``rotary_dim`` rotates only the first rotary_dim entries of each head (partial rotary, as
GPT-NeoX; its frequencies are those of a rotary_dim-sized head). The projection is one matrix whose rows are
[q (H·dh), k (H_kv·dh), v (H_kv·dh)].

``persistent_tokens`` = N_p > 0 adds N_p learnable tokens (N_p, D) whose keys and values (through the same projection,
not rotated: they have no position) every query sees besides its window — Titans' persistent memory (Behrouz et al.
2024, §3.3) in MAG / MAL's SW-Attn* (§4.2-4.3: prepended to the sequence, they stay visible to every query). They are
parameters, not state: a packed sequence, a split or a decode step sees them alike.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.parts import positions, rotary, rotary_cos_sin
from rnnlab.layers.registry import register_mixer


@register_mixer("attention", family="attention", small={"num_heads": 2})
@register_mixer("sliding_attention", family="attention", defaults={"window": 64}, small={"num_heads": 2, "window": 16})
class Attention(Mixer):
    """x (B, T, D) -> y (B, T, D); causal softmax attention, ``num_heads`` heads of size D/num_heads."""

    def __init__(self, d_model: int, num_heads: int = 4, window: int | None = None, rope_base: float = 10000.0, bias: bool = False,
                 num_kv_heads: int | None = None, rotary_dim: int | None = None, persistent_tokens: int = 0):
        super().__init__(d_model)
        if d_model % num_heads or (d_model // num_heads) % 2:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads} into an even head size (rotary)")
        if window is not None and window < 1:
            raise ValueError(f"window must be a positive int or None, got {window}")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
        self.num_heads, self.head_dim, self.window, self.rope_base = num_heads, d_model // num_heads, window, rope_base
        self.num_kv_heads = num_kv_heads
        self.rotary_dim = self.head_dim if rotary_dim is None else rotary_dim
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
            raise ValueError(f"rotary_dim must be even and in (0, head_dim = {self.head_dim}], got {rotary_dim}")
        self.qkv = nn.Linear(d_model, d_model + 2 * num_kv_heads * self.head_dim, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)
        # unit-scale inputs like the (normalized) x; None: no persistent tokens
        self.persistent = nn.Parameter(torch.randn(persistent_tokens, d_model)) if persistent_tokens else None

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        kv = torch.zeros(batch_size, self.num_kv_heads, 0, self.head_dim, device=device, dtype=dtype or torch.float32)
        return {"k": kv, "v": kv.clone(), "pos": torch.zeros(batch_size, device=device, dtype=torch.int64)}

    def _cache_len(self, seq_len: int) -> int:
        return seq_len if self.window is None else min(seq_len, self.window - 1)

    def state_size(self, seq_len: int) -> int:
        return 2 * self._cache_len(seq_len) * self.num_kv_heads * self.head_dim + 1

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x (B, T, h, dh): rotary positions on the first rotary_dim entries of each head."""
        if self.rotary_dim == self.head_dim:
            return rotary(x, cos, sin)
        return torch.cat([rotary(x[..., : self.rotary_dim], cos, sin), x[..., self.rotary_dim :]], -1)

    def _attend(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        B, T, _ = x.shape
        hd, hkv = self.head_dim, self.num_kv_heads
        q, k, v = (rearrange(t, "b t (h d) -> b t h d", d=hd) for t in self.qkv(x).split([self.d_model, hkv * hd, hkv * hd], -1))
        pos = state["pos"]
        cos, sin = rotary_cos_sin(positions(pos, T), self.rotary_dim, self.rope_base)
        q, k = self._rotate(q, cos, sin).transpose(1, 2), self._rotate(k, cos, sin).transpose(1, 2)  # (B, H, T, dh), (B, H_kv, T, dh)
        k_all = torch.cat([state["k"].to(k.dtype), k], 2)  # (B, H, L+T, dh)
        v_all = torch.cat([state["v"].to(v.dtype), v.transpose(1, 2)], 2)
        L = k_all.shape[2] - T
        mask, causal = None, T > 1
        # every row's cache all real (no row merged from a shorter one): no mask. Read on the host only on CPU,
        # where it costs no device sync; an accelerator always takes the mask
        full = T == 1 and L > 0 and x.device.type == "cpu" and bool((pos >= L).all())
        if not full and (L > 0 or (T > 1 and self.window is not None)):
            # query i (slot L+i) sees slot j iff j is a real entry of its row (the cache's last min(pos, L) entries
            # and the new keys), j <= L+i and L+i-j < window; one query sees the whole cache (<= window-1 entries)
            j = torch.arange(L + T, device=x.device)
            mask = (j >= L - pos.clamp(max=L)[:, None])[:, None, None]  # (B, 1, 1, L+T)
            if T > 1:
                i = torch.arange(T, device=x.device)[:, None] + L
                mask = mask & ((j <= i) & ((i - j) < self.window if self.window is not None else True))
            causal = False
        k_att, v_att = k_all, v_all
        if self.persistent is not None:  # a prefix every query sees: its keys/values first, the mask's columns all True
            _, pk, pv = (rearrange(t, "n (h d) -> h n d", d=hd).expand(B, -1, -1, -1)
                         for t in self.qkv(self.persistent.to(x.dtype)).split([self.d_model, hkv * hd, hkv * hd], -1))
            k_att, v_att = torch.cat([pk, k_all], 2), torch.cat([pv, v_all], 2)
            if mask is None and causal:
                mask = torch.ones(T, L + T, dtype=torch.bool, device=x.device).tril(L)
            if mask is not None:
                mask = torch.cat([mask.new_ones(*mask.shape[:-1], pk.shape[2]), mask.expand(*mask.shape[:-2], T, L + T)], -1)
            causal = False
        o = F.scaled_dot_product_attention(q, k_att, v_att, attn_mask=mask, is_causal=causal,
                                           enable_gqa=hkv != self.num_heads)  # (B, H, T, dh)
        y = self.out(rearrange(o, "b h t d -> b t (h d)"))
        keep = self._cache_len(L + T)
        new = {"k": k_all[:, :, L + T - keep :], "v": v_all[:, :, L + T - keep :], "pos": pos + T}
        return y, new

    parallel = _attend
    step = _attend  # one token against the cache: the same computation, no separate form

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, window={self.window}, "
                f"rotary_dim={self.rotary_dim}" + (f", persistent_tokens={self.persistent.shape[0]}" if self.persistent is not None else ""))
