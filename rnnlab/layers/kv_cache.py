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
    buf, start = getattr(cache, "_kv_buf", None), getattr(cache, "_kv_start", 0)
    if not (buf is not None and buf._kv_tail == start + L and start + total <= buf.shape[2]
            and buf.dtype == new.dtype and buf.device == new.device):
        capacity = max(2 * (n if keep is not None else total), n + T, MIN_CAPACITY)
        buf = new.new_empty(*new.shape[:2], capacity, new.shape[3])
        buf[:, :, :L] = cache
        start = 0
    buf.narrow(2, start + L, T).copy_(new)  # narrow: one call where indexing with slices takes two or three
    buf._kv_tail = start + total
    full = buf.narrow(2, start, total)
    kept = full if n == total else buf.narrow(2, start + total - n, n)
    kept._kv_buf, kept._kv_start = buf, start + total - n
    return full, kept
