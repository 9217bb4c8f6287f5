"""Causal multi-head softmax attention with rotary positions and a KV cache as its state.

Vaswani et al. 2017 ("Attention is all you need", eq. 1: softmax(QKᵀ/√d)V) with
rotary position embeddings (Su et al. 2021, RoFormer, eq. 34). With ``window=w``
each query sees only the last w keys, itself included (sliding-window attention, as
in Longformer / Mistral / Griffin's local attention), so the cache keeps w-1 tokens.

State: {"k": (B, H, L, dh), "v": (B, H, L, dh), "pos": (B,) int64} — L = tokens cached
(min(T, window-1) with a window, T without), pos = tokens seen per row (its rotary offset). The cache
is kept in SDPA's (B, H, L, dh) layout, so a decode step hands it over without a transposing copy; the state's
tensors are exactly the content (``state_size`` counts it), views into a buffer with spare capacity that a
decode step appends to in place (rnnlab.layers.kv_cache: doubling for full attention, an amortized sliding
buffer for a window; a state stepped twice is never changed).
Rows at different positions share one cache: each row's entries are right-aligned and the last
min(pos, L) of them are real (the rest, zeros from merging shorter rows, are masked out), so
prompts of different lengths decode together with no host sync.

Options for checkpoints (``rnnlab.interop``, e.g. Bamba): ``num_kv_heads`` < num_heads shares each key/value
head among num_heads / num_kv_heads query heads (grouped-query attention, Ainslie et al. 2023; the cache holds
num_kv_heads heads), and ``rotary_dim`` rotates only the first rotary_dim entries of each head (partial rotary, as
GPT-NeoX; its frequencies are those of a rotary_dim-sized head); ``rope_base=None`` uses no positions at all (NoPE:
Jamba's attention layers, whose Mamba layers supply the order). The projection is one matrix whose rows are
[q (H·dh), k (H_kv·dh), v (H_kv·dh)].

More options for checkpoints, each off by default: ``out_bias`` (a bias on the output projection alone:
RecurrentGemma's, whose q, k, v have none), ``head_dim`` (heads of any size, H·dh need not be d_model: Qwen3.5's
256), ``qk_norm`` (an RMSNorm over each head of q and k, before the rotation, eps ``norm_eps``: Qwen3's) and
``output_gate`` (the heads' outputs times sigmoid(W_g x) before the output projection, W_g being H·dh more rows of
the projection: [q, k, v, g]; Qwen3.5's gated attention, Qiu et al. 2025, "Gated Attention for Large Language
Models", its G1 position).

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
from rnnlab.layers.kv_cache import kv_append, kv_commit, kv_reserve
from rnnlab.layers.parts import RMSNorm, param_derived, positions, rotary, rotary_at, rotary_cos_sin, rotary_rows
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode


@register_mixer("attention", family="attention", small={"num_heads": 2})
@register_mixer("sliding_attention", family="attention", defaults={"window": 64}, small={"num_heads": 2, "window": 16})
class Attention(Mixer):
    """x (B, T, D) -> y (B, T, D); causal softmax attention, ``num_heads`` heads of size D/num_heads (or ``head_dim``)."""

    def __init__(self, d_model: int, num_heads: int = 4, window: int | None = None, rope_base: float | None = 10000.0, bias: bool = False,
                 num_kv_heads: int | None = None, rotary_dim: int | None = None, out_bias: bool | None = None,
                 head_dim: int | None = None, qk_norm: bool = False, output_gate: bool = False, norm_eps: float = 1e-6,
                 persistent_tokens: int = 0):
        super().__init__(d_model)
        if head_dim is None and (d_model % num_heads or (d_model // num_heads) % 2):
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads} into an even head size (rotary)")
        if head_dim is not None and (head_dim < 2 or head_dim % 2):
            raise ValueError(f"head_dim must be an even int >= 2 (rotary), got {head_dim}")
        if window is not None and window < 1:
            raise ValueError(f"window must be a positive int or None, got {window}")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
        self.num_heads, self.window, self.rope_base = num_heads, window, rope_base
        self.head_dim = d_model // num_heads if head_dim is None else head_dim
        self.num_kv_heads, self.output_gate = num_kv_heads, output_gate
        self.rotary_dim = self.head_dim if rotary_dim is None else rotary_dim
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
            raise ValueError(f"rotary_dim must be even and in (0, head_dim = {self.head_dim}], got {rotary_dim}")
        inner = num_heads * self.head_dim
        self.qkv = nn.Linear(d_model, (2 if output_gate else 1) * inner + 2 * num_kv_heads * self.head_dim, bias=bias)
        self.out = nn.Linear(inner, d_model, bias=bias if out_bias is None else out_bias)
        self.q_norm = RMSNorm(self.head_dim, norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, norm_eps) if qk_norm else None
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
        hd, hkv, inner = self.head_dim, self.num_kv_heads, self.num_heads * self.head_dim
        q, k, v, *gate = self.qkv(x).split([inner, hkv * hd, hkv * hd] + [inner] * self.output_gate, -1)
        q, k, v = (rearrange(t, "b t (h d) -> b t h d", d=hd) for t in (q, k, v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        pos = state["pos"]
        if self.rope_base is not None:  # None: no positions (NoPE, Jamba's attention layers)
            cos, sin = rotary_cos_sin(positions(pos, T), self.rotary_dim, self.rope_base)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, dh), (B, H_kv, T, dh)
        keep = self._cache_len(state["k"].shape[2] + T)
        k_all, k_kept = kv_append(state["k"], k, keep)  # (B, H, L+T, dh), written in place where it can be
        v_all, v_kept = kv_append(state["v"], v.transpose(1, 2), keep)
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
            pk, pv = (t.expand(B, -1, -1, -1) for t in self._persistent_kv(x.dtype))  # (B, H_kv, N_p, dh)
            k_att, v_att = torch.cat([pk, k_all], 2), torch.cat([pv, v_all], 2)
            if mask is None and causal:
                mask = torch.ones(T, L + T, dtype=torch.bool, device=x.device).tril(L)
            if mask is not None:
                mask = torch.cat([mask.new_ones(*mask.shape[:-1], pk.shape[2]), mask.expand(*mask.shape[:-2], T, L + T)], -1)
            causal = False
        o = F.scaled_dot_product_attention(q, k_att, v_att, attn_mask=mask, is_causal=causal,
                                           enable_gqa=hkv != self.num_heads)  # (B, H, T, dh)
        o = rearrange(o, "b h t d -> b t (h d)")
        y = self.out(o * torch.sigmoid(gate[0]) if gate else o)
        new = {"k": k_kept, "v": v_kept, "pos": pos + T}
        return y, new

    parallel = _attend

    def _persistent_kv(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The persistent tokens' keys and values (H_kv, N_p, dh) each: projected like the inputs (k-normed, not rotated)."""
        hd, hkv, inner = self.head_dim, self.num_kv_heads, self.num_heads * self.head_dim
        _, pk, pv, *_ = self.qkv(self.persistent.to(dtype)).split([inner, hkv * hd, hkv * hd] + [inner] * self.output_gate, -1)
        pk, pv = (rearrange(t, "n (h d) -> n h d", d=hd) for t in (pk, pv))
        if self.k_norm is not None:
            pk = self.k_norm(pk)
        return pk.transpose(0, 1), pv.transpose(0, 1)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D): one token against the cache, ``_attend``'s numbers in about a third of its calls. Where every
        row's cache is all real (no row merged from a shorter one: no mask; pos read on the host, so on CPU only): on
        CPU without autograd the fused kernel (``_decode``, persistent tokens included); otherwise, without persistent
        tokens and with full-width rotary (or none), heads as views of the projection (no transposes at one token), q
        and k rotated together with a cached row of cos/sin (``parts.rotary_rows``), no mask and no angles to compute.
        Anything else runs ``_attend``."""
        pos, L = state["pos"], state["k"].shape[2]
        if x.device.type != "cpu" or min(p := pos.tolist()) < L:
            return self._attend(x, state)
        if decode.usable(x, state["k"], state["v"], self.qkv.weight, *([] if self.persistent is None else [self.persistent]),
                         float64=True):
            return self._decode(x, state, p)
        if self.persistent is not None or self.rotary_dim != self.head_dim:
            return self._attend(x, state)
        B, H, hkv, hd = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        heads = self.qkv(x).view(B, -1, 1, hd)  # (B, H + 2 H_kv (+ H), 1, dh): T = 1, so the heads are a view
        if self.q_norm is None:
            qk, v, *gate = heads.split([H + hkv, hkv] + [H] * self.output_gate, 1)
        else:
            q, k, v, *gate = heads.split([H, hkv, hkv] + [H] * self.output_gate, 1)
            qk = torch.cat([self.q_norm(q), self.k_norm(k)], 1)
        if self.rope_base is not None:
            start, rows = self._rotary_rows(min(p), max(p))
            C, S = (rows[p[0] - start] if B == 1 else rows[pos - start]).unbind(-4)  # (B or 1, 1, 1, dh) each
            qk = rotary_at(qk, C, S)
        q, k = qk.split([H, hkv], 1)
        keep = self._cache_len(L + 1)
        k_all, k_kept = kv_append(state["k"], k, keep)
        v_all, v_kept = kv_append(state["v"], v, keep)
        o = F.scaled_dot_product_attention(q, k_all, v_all, enable_gqa=hkv != H).reshape(B, 1, H * hd)
        y = self.out(o * torch.sigmoid(gate[0].reshape(B, 1, H * hd)) if gate else o)
        return y, {"k": k_kept, "v": v_kept, "pos": pos + 1}

    def _decode(self, x: Tensor, state: State, p: list[int]) -> tuple[Tensor, State]:
        """``step``'s fast case on CPU without autograd in one kernel (rnnlab.ops.decode): the q/k norms, the (partial)
        rotation, the new k and v written into the cache's buffer (``kv_reserve``: in place where the cache may append)
        and the attention, over the persistent tokens' keys and values too (projected once per parameter change)."""
        pos, L = state["pos"], state["k"].shape[2]
        n = self._cache_len(L + 1)
        (kbuf, ks), (vbuf, vs) = kv_reserve(state["k"], 1, n, x), kv_reserve(state["v"], 1, n, x)
        rows, first = None, 0
        if self.rope_base is not None:
            first, table = self._rotary_rows(min(p), max(p))
            rows = table.view(table.shape[0], 2, -1)
        qk_norm = None if self.q_norm is None else (self.q_norm.weight, self.k_norm.weight, self.q_norm.eps)
        persistent = None
        if self.persistent is not None:  # computed once per parameter change
            params = [t for t in (self.persistent, self.qkv.weight, self.qkv.bias, getattr(self.k_norm, "weight", None)) if t is not None]
            persistent = param_derived(self, "_persistent_kv_cache",
                                       lambda *_: tuple(t.contiguous() for t in self._persistent_kv(x.dtype)), *params)
        y = decode.attention_decode(self, x, self.qkv, self.out, rows, pos, first, kbuf, vbuf, ks, vs, L, heads=self.num_heads,
                                    qk_norm=qk_norm, gated=self.output_gate, persistent=persistent)
        return y, {"k": kv_commit(kbuf, ks, L + 1, n)[1], "v": kv_commit(vbuf, vs, L + 1, n)[1], "pos": pos + 1}

    def _rotary_rows(self, lo: int, hi: int) -> tuple[int, Tensor]:
        """(start, ``parts.rotary_rows`` of positions start, start + 1, ...) covering lo..hi (CPU), cached on the
        module and recomputed from lo when outgrown: at least 256 rows, so once per 256 tokens, and never more than
        twice the spread of the rows' positions (a sliding window's memory stays constant however far it decodes)."""
        cache = self.__dict__.get("_rotary_rows_cache")
        if cache is None or not cache[0] <= lo <= hi < cache[0] + cache[1].shape[0]:
            n = max(2 * (hi - lo + 1), 256)
            cache = self.__dict__["_rotary_rows_cache"] = (lo, rotary_rows(n, self.rotary_dim, self.rope_base, start=lo))
        return cache

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, num_kv_heads={self.num_kv_heads}, "
                f"window={self.window}, rotary_dim={self.rotary_dim}, qk_norm={self.q_norm is not None}, output_gate={self.output_gate}"
                + (f", persistent_tokens={self.persistent.shape[0]}" if self.persistent is not None else ""))
