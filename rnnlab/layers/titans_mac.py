"""Titans' memory as a context (MAC; Behrouz, Zhong & Mirrokni 2024, "Titans: Learning to Memorize at Test Time", §4.1,
eqs. 21-25 of arXiv 2501.00663v1), as a token mixer. The sequence is cut into segments S^(n) of C tokens; per segment

    h = M*_{n−1}(q),  q = SiLU(ShortConv(S W_Q)) ℓ2-normalized per head   (eq. 21: retrieve, the memory not updated)
    S̃ = [p_1 … p_{N_p}] ‖ h ‖ S                                           (eq. 22: persistent ‖ retrieved ‖ segment)
    y = Attn(S̃)                                                           (eq. 23: causal inside the segment)
    M_n = M_{n−1} updated with y                                           (eq. 24: the `titans` memory fed with y)
    o = RMSNorm(y) ⊙ σ(RMSNorm(M*_n(y)))                                   (eq. 25: ⊗ as MAG's normalized gate)

Causal reading, said here: token i of a segment attends to the N_p persistent tokens, the retrieved h_j and the tokens
x_j of its segment with j <= i (h_j depends on x_j: a later h would leak the future), with rotary positions j within
the segment (persistent keys unrotated; the paper specifies no positional scheme); only the segment tokens' outputs
are used (the paper's y of S^(n)). The memory is Titans' neural memory (titans.py) fed with y, its gradients of a
segment all taken at the segment's starting memory M_{n−1} (its chunk size = C: eq. 24 updates the memory once per
segment, the paper's parallel form), read after the update with each token (eq. 25's M*_n(y_t) read causally as
M_t(y_t), the memory after token t). So M_{n−1}, the memory's chunk anchor, is what the next segment retrieves from.

Recurrent contract: the state is the memory's (anchor M_{n−1}, memory, momentum, convs, position in the segment, under
"mem_"), the retrieval conv "ret_conv", and the current segment's buffered rotated keys and values of the attention,
"seg_k", "seg_v" (B, H, 2(C − 1), hd): the pairs (h_j, x_j) of the segment's earlier tokens, left-aligned (the first
2·pos entries are real, the rest zero); a segment's end clears them. Persistent tokens are parameters, not state. A
packed sequence starts from a fresh state (the base class runs each sequence whole). ``step`` is one token; ``parallel``
runs a segment at a time: one batched retrieval, one attention over the segment, one chunk call of the memory.

Guard, measured: the memory's gradients of a whole segment share one anchor, so at C = 64 (with `titans`' gate
initializations) the unguarded memory overflows to NaN within the first 1024 tokens of random input (d_model 32); so
``max_grad_norm`` (titans.py: each token's inner gradient clipped to that norm, titans-pytorch's guard; the paper
specifies none) is 1.0 by default here, which kept |M| <= 5 and the output finite over T = 8192 (None: off).

State floats: the memory's (titans.py) + (W − 1)·D (retrieval conv) + 4·(C − 1)·D (segment keys and values).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.parts import RMSNorm, ShortConv, at_least_float32, param_derived, positions, rotary, rotary_cos_sin
from rnnlab.layers.registry import register_mixer
from rnnlab.layers.titans import Titans
from rnnlab.ops import decode
from rnnlab.ops.delta import l2norm
from rnnlab.ops.ttt import _Memory, _model, memory_keys

__all__ = ["TitansMAC", "segment_attention"]


def segment_attention(q: Tensor, k: Tensor, v: Tensor, buf_k: Tensor, buf_v: Tensor, pos: Tensor, pk: Tensor | None,
                      pv: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Causal attention of L tokens of one segment: q (B, H, L, hd) the tokens' queries; k, v (B, H, 2L, hd) their keys
    and values as pairs (h_i, x_i) interleaved; buf_k, buf_v (B, H, 2(C−1), hd) the segment's earlier pairs, the first
    2·pos[b] real; pk, pv (H, N_p, hd) the persistent tokens' or None ->
    (o (B, H, L, hd), the buffers after the L tokens (a row whose segment ends is cleared), pos + L).
    Query i sees the persistent keys, the buffer's real entries and the pairs j <= i."""
    B, H, L2, hd = k.shape
    L, P = L2 // 2, buf_k.shape[2]
    C = P // 2 + 1
    keys, vals = [buf_k.to(k.dtype), k], [buf_v.to(v.dtype), v]
    j = torch.arange(P, device=q.device)
    see = [(j < 2 * pos[:, None])[:, None, :].expand(B, L, P),  # (B, L, P)
           (torch.arange(L2, device=q.device) // 2 <= torch.arange(L, device=q.device)[:, None]).expand(B, L, L2)]
    if pk is not None:
        keys.insert(0, pk.to(k.dtype).expand(B, -1, -1, -1))
        vals.insert(0, pv.to(v.dtype).expand(B, -1, -1, -1))
        see.insert(0, torch.ones(B, L, pk.shape[1], dtype=torch.bool, device=q.device))
    o = F.scaled_dot_product_attention(q, torch.cat(keys, 2), torch.cat(vals, 2), attn_mask=torch.cat(see, 2)[:, None])
    # new buffer: entry e is the old e (e < 2 pos) or the new pair entry e − 2 pos; real while e < 2 (pos + L) < 2C
    new_pos = pos + L
    e = torch.arange(P, device=q.device)[None, :]
    src = torch.where(e < 2 * pos[:, None], e, P + e - 2 * pos[:, None]).clamp(max=P + L2 - 1)
    keep = ((e < 2 * new_pos[:, None]) & (new_pos[:, None] < C))[:, None, :, None]
    idx = src[:, None, :, None].expand(B, H, P, hd)
    full_k, full_v = torch.cat([buf_k.to(k.dtype), k], 2), torch.cat([buf_v.to(v.dtype), v], 2)
    new_k = torch.where(keep, full_k.gather(2, idx), 0.0).to(buf_k.dtype)
    new_v = torch.where(keep, full_v.gather(2, idx), 0.0).to(buf_v.dtype)
    return o, (new_k, new_v), new_pos % C


@register_mixer("titans_mac", family="ttt", small={"num_heads": 2, "segment_size": 8, "persistent_tokens": 2})
class TitansMAC(Mixer):
    """MAC: x (B, T, D) -> y (B, T, D) (module docstring). num_heads: H of the attention and the memory (hd = D / H);
    segment_size: C (also the memory's chunk); persistent_tokens: N_p (0: none); memory_depth: 1 or 2; max_grad_norm:
    the memory's per-token gradient clipping; conv_size: the short convs'.
    State floats: the `titans` memory's + (W − 1)·D + 4·(C − 1)·D."""

    def __init__(self, d_model: int, num_heads: int = 4, segment_size: int = 64, persistent_tokens: int = 4, memory_depth: int = 2,
                 max_grad_norm: float | None = 1.0, conv_size: int = 4, rope_base: float = 10000.0):
        super().__init__(d_model)
        if d_model % num_heads or (d_model // num_heads) % 2:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads} into an even head size (rotary)")
        if segment_size < 1 or persistent_tokens < 0:
            raise ValueError(f"segment_size must be >= 1 and persistent_tokens >= 0, got {segment_size}, {persistent_tokens}")
        self.num_heads, self.head_dim, self.segment_size, self.rope_base = num_heads, d_model // num_heads, segment_size, rope_base
        self.memory = Titans(d_model, num_heads=num_heads, memory_depth=memory_depth, chunk_size=segment_size,
                             max_grad_norm=max_grad_norm, conv_size=conv_size)
        self._spec = _Memory(self.memory.depth, False, "gelu", False, False, "l2")  # the memory as titans.py runs it
        self.retrieve_proj = nn.Linear(d_model, d_model, bias=False)
        self.retrieve_conv = ShortConv(d_model, conv_size, bias=False, activation="silu")
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        # persistent tokens: inputs like the (normalized) x, unit scale; they pass through the attention's projection
        self.persistent = nn.Parameter(torch.randn(persistent_tokens, d_model)) if persistent_tokens else None
        self.attn_norm, self.memory_norm = RMSNorm(d_model), RMSNorm(d_model)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        state = {"mem_" + n: t for n, t in self.memory.init_state(batch_size, device, dtype).items()}
        state["ret_conv"] = self.retrieve_conv.init_state(batch_size, device, dtype)
        buf = torch.zeros(batch_size, self.num_heads, 2 * (self.segment_size - 1), self.head_dim, device=device, dtype=dtype or torch.float32)
        state.update(seg_k=buf, seg_v=buf.clone())
        return state

    def state_size(self, seq_len: int) -> int:
        return self.memory.state_size(seq_len) + self.retrieve_conv.state_size() + 4 * (self.segment_size - 1) * self.d_model

    def _heads(self, t: Tensor) -> Tensor:
        return rearrange(t, "b t (h d) -> b t h d", h=self.num_heads)

    def _retrieve(self, q: Tensor, state: State) -> Tensor:
        """q (B, L, H, hd) -> h = M*(q) (B, L, D), the memory at the segment's start (the memory's chunk anchor)."""
        B, L, H, hd = q.shape
        dt = state["mem_w1"].dtype if q.dtype == torch.float64 else torch.float32
        p = {n: rearrange(state["mem_" + n].to(dt), "b h i o -> (b h) i o") for n in memory_keys(self.memory.depth, False)}
        h = _model(p, rearrange(q.to(dt), "b l h d -> (b h) l d"), self._spec, None)
        return rearrange(h, "(b h) l d -> b l (h d)", b=B).to(q.dtype)

    def _persistent_kv(self, x: Tensor) -> tuple[Tensor, Tensor] | tuple[None, None]:
        """The persistent tokens' keys and values (H, N_p, hd) in x's dtype (None without them); where no gradient is
        wanted and the projection has no hooks, derived once per parameter update (a decode step would otherwise
        project them every token)."""
        if self.persistent is None:
            return None, None
        project = lambda kv: tuple(rearrange(t, "n (h d) -> h n d", h=self.num_heads) for t in kv.chunk(3, -1)[1:])  # noqa: E731
        if decode.usable(x, self.persistent, self.qkv.weight) and not decode.hooked(self.qkv):
            return param_derived(self, "_persistent_cache", lambda p, w: project(F.linear(p, w)), self.persistent, self.qkv.weight)
        return project(self.qkv(self.persistent.to(x.dtype)))

    def _segment(self, x: Tensor, q_ret: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        """L tokens that do not cross a segment end (every row at its own pos): x (B, L, D), q_ret (B, L, H, hd)."""
        B, L, D = x.shape
        pos = state["mem_pos"]
        h = self._retrieve(q_ret, state)
        pk, pv = self._persistent_kv(x)
        if L == 1:
            o, seg_k, seg_v = self._token_attention(x, h, pos, state["seg_k"], state["seg_v"], pk, pv)
        else:
            xq, xk, xv = map(self._heads, self.qkv(x).chunk(3, -1))
            _, hk, hv = map(self._heads, self.qkv(h).chunk(3, -1))
            cos, sin = rotary_cos_sin(positions(pos, L), self.head_dim, self.rope_base)
            rot = lambda t: rotary(t, cos, sin).to(x.dtype)  # noqa: E731
            pair = lambda a, b: rearrange(torch.stack([a, b], 2), "b l two h d -> b h (l two) d")  # noqa: E731  (h_i, x_i)
            o, (seg_k, seg_v), _ = segment_attention(rot(xq).transpose(1, 2), pair(rot(hk), rot(xk)), pair(hv, xv), state["seg_k"],
                                                     state["seg_v"], pos, pk, pv)
        y = decode.linear(self.out, rearrange(o, "b h l d -> b l (h d)"))
        mem = {n[4:]: t for n, t in state.items() if n.startswith("mem_")}
        m, mem = getattr(self.memory, form)(y, mem)
        out = self.attn_norm(y) * torch.sigmoid(at_least_float32(self.memory_norm(m))).to(y.dtype)
        return out, {**{"mem_" + n: t for n, t in mem.items()}, "ret_conv": state["ret_conv"], "seg_k": seg_k, "seg_v": seg_v}

    def _token_attention(self, x: Tensor, h: Tensor, pos: Tensor, buf_k: Tensor, buf_v: Tensor, pk: Tensor | None,
                         pv: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``segment_attention`` of one token (the step): x, h (B, 1, D) -> (o (B, H, 1, hd), the new buffers). x's and
        h's projections in one call, and the token's pair (h, x) written at entries 2·pos, 2·pos + 1 of copies of the
        buffers (entries past 2·pos are zero: the state's invariant), which a row ending its segment clears."""
        B, _, D = x.shape
        H, hd, P = self.num_heads, self.head_dim, buf_k.shape[2]
        qkv = decode.linear(self.qkv, torch.cat([x, h], 0)).view(2, B, 3, H, hd)  # a decode token: the kernel
        (xq, xk, xv), (hk, hv) = qkv[0].unbind(1), qkv[1, :, 1:].unbind(1)  # (B, H, hd) each
        cos, sin = rotary_cos_sin(pos[:, None], hd, self.rope_base)
        q, k = rotary(torch.stack([xq, hk, xk], 1), cos, sin).to(x.dtype).split([1, 2], 1)  # (B, 1 | 2, H, hd)
        new_k, new_v = k.transpose(1, 2), torch.stack([hv, xv], 2)  # (B, H, 2, hd): the pair (h, x)
        keys, vals = [buf_k.to(x.dtype), new_k], [buf_v.to(x.dtype), new_v]
        see = [torch.arange(P, device=x.device) < 2 * pos[:, None], pos.new_ones(B, 2, dtype=torch.bool)]
        if pk is not None:
            keys.insert(0, pk.expand(B, -1, -1, -1))
            vals.insert(0, pv.expand(B, -1, -1, -1))
            see.insert(0, pos.new_ones(B, pk.shape[1], dtype=torch.bool))
        o = F.scaled_dot_product_attention(q.transpose(1, 2), torch.cat(keys, 2), torch.cat(vals, 2),
                                           attn_mask=torch.cat(see, 1)[:, None, None])
        if not P:  # a segment of one token: no buffer
            return o, buf_k, buf_v
        rows, at = torch.arange(B, device=x.device), (2 * pos).clamp(max=P - 2)
        ends = (pos + 1 >= self.segment_size)[:, None, None, None]
        bufs = []
        for buf, pair in ((buf_k, new_k), (buf_v, new_v)):
            buf = buf.clone()
            buf[rows, :, at], buf[rows, :, at + 1] = pair[:, :, 0].to(buf.dtype), pair[:, :, 1].to(buf.dtype)
            bufs.append(buf.masked_fill_(ends, 0.0))
        return o, *bufs

    def _run(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        pos = state["mem_pos"]
        if x.shape[1] > 1 and pos.numel() > 1 and not bool((pos == pos[0]).all()):  # rows at different places: group them
            return self._by_position(x, state)
        q, conv = self.retrieve_conv(decode.linear(self.retrieve_proj, x), state["ret_conv"])
        q = l2norm(self._heads(q)).to(x.dtype)
        state = dict(state, ret_conv=conv.to(state["ret_conv"].dtype))
        if x.shape[1] == 1:
            return self._segment(x, q, state, "step")
        C, outs, t, T = self.segment_size, [], 0, x.shape[1]
        first = C - int(pos[0]) if pos.numel() else C
        while t < T:
            L = min(T - t, first if t == 0 else C)
            y, state = self._segment(x[:, t:t + L], q[:, t:t + L], state, "parallel" if L > 1 else "step")
            outs.append(y)
            t += L
        return torch.cat(outs, 1), state

    def _by_position(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Rows at different positions in their segments: one run per position, reassembled in row order."""
        y, new = torch.empty_like(x), {}
        for p in state["mem_pos"].unique():
            rows = (state["mem_pos"] == p).nonzero()[:, 0]
            yr, sr = self.parallel(x[rows], {n: t[rows] for n, t in state.items()})
            y = y.index_copy(0, rows, yr)
            for n, t in sr.items():
                new[n] = (new[n] if n in new else torch.zeros((x.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)).index_copy(0, rows, t)
        return y, new

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y, state): a segment at a time (one attention, one chunk call of the memory per segment)."""
        return self._run(x, state)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y, state): one token against the segment's buffered keys, the memory's recurrent step."""
        return self._run(x, state)

    def extra_repr(self) -> str:
        n = 0 if self.persistent is None else self.persistent.shape[0]
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, segment_size={self.segment_size}, persistent_tokens={n}, "
                f"memory_depth={self.memory.depth}")
