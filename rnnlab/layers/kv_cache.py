"""A KV cache that grows with capacity and writes in place, behind attention's exact-size state.

The attention state holds the cache as (B, H, L, d) tensors of exactly the L entries that are content, so
``state_size``, ``state_numel``, saving, indexing rows and merging rows of different lengths
(rnnlab.ops.varlen.cat_rows) see only content. Under the hood each of them is a *view* into a larger buffer
(B, H, capacity, d): appending a token writes the next free slot in place and returns a view one entry longer,
instead of copying the whole cache every step (``torch.cat``, O(L) per token).

Capacity: a new buffer holds twice the content (at least ``MIN_CAPACITY``), so full attention reallocates
O(log T) times; a sliding window of w keeps its last w - 1 entries and, when its view reaches the buffer's end,
moves to a fresh buffer of 2 (w - 1) + T slots: one copy per w - 1 tokens, O(1) amortized, with the entries
kept contiguous and in time order (what SDPA reads; a ring buffer would need a gather or a rotated mask).

Safety: a state may be stepped twice (beam search, branching from a stored state). A buffer records its tail
(the end of the longest view handed out); a view may append in place only if it ends at that tail, i.e. no
other view has written past it. Otherwise, and whenever autograd needs the cache (a step under grad), the
append copies into a fresh buffer, so no state a caller holds ever changes.
"""
from __future__ import annotations

import torch
from torch import Tensor

MIN_CAPACITY = 64


def kv_append(cache: Tensor, new: Tensor, keep: int | None = None) -> tuple[Tensor, Tensor]:
    """cache (B, H, L, d), new (B, H, T, d) -> (full (B, H, L + T, d), kept (B, H, n, d)): ``full`` is cache ++ new
    along dim 2 (what this call attends over), ``kept`` its last n = min(keep, L + T) entries (None: all), the
    cache to store in the state. Both are views of one buffer when no autograd is involved (module docstring)."""
    L, T = cache.shape[2], new.shape[2]
    total = L + T
    n = total if keep is None else min(keep, total)
    if cache.dtype != new.dtype:
        cache = cache.to(new.dtype)
    if torch.is_grad_enabled() and (cache.requires_grad or new.requires_grad):
        full = torch.cat([cache, new], 2)
        return full, full[:, :, total - n:]
    buf, start = kv_reserve(cache, T, n, new)
    buf.narrow(2, start + L, T).copy_(new)  # narrow: one call where indexing with slices takes two or three
    return kv_commit(buf, start, total, n)


def kv_reserve(cache: Tensor, T: int, n: int, like: Tensor) -> tuple[Tensor, int]:
    """(buf, start): a buffer (B, H, capacity, d) holding ``cache``'s L entries at [start, start + L) with room for T
    more at start + L, for the caller to write (in ``like``'s dtype and device; no autograd); n: the entries the
    state will keep. The cache's own buffer when it may append in place (module docstring), else a fresh one."""
    L = cache.shape[2]
    buf, start = getattr(cache, "_kv_buf", None), getattr(cache, "_kv_start", 0)
    if not (buf is not None and buf._kv_tail == start + L and start + L + T <= buf.shape[2]
            and buf.dtype == like.dtype and buf.device == like.device):
        capacity = max(2 * n, n + T, MIN_CAPACITY)
        buf = like.new_empty(*cache.shape[:2], capacity, cache.shape[3])
        buf[:, :, :L] = cache
        start = 0
    return buf, start


def kv_commit(buf: Tensor, start: int, total: int, n: int) -> tuple[Tensor, Tensor]:
    """After the write of ``kv_reserve``'s slots: (full, kept), the views of the total = L + T entries from start
    and of the last n of them; the buffer's tail moves to their end."""
    buf._kv_tail = start + total
    full = buf.narrow(2, start, total)
    kept = full if n == total else buf.narrow(2, start + total - n, n)
    kept._kv_buf, kept._kv_start = buf, start + total - n
    return full, kept
