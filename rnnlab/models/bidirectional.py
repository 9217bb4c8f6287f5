"""Birdie's bidirectional prefix (Blouir et al. 2024, "Birdie: Advancing State Space Models with Reward-Driven
Objectives and Curricula", §3.1 and App. A.3), for any mixer of the contract.

The paper splits a layer's recurrent state channels in two halves: the forward half runs causally over the whole
sequence; the reverse half runs right to left over the prompt prefix, and in the suffix its forget gate is zeroed,
h^rev_t = x^rev_t, so it carries nothing backwards from the answer; the halves are concatenated (same state size and
parameters as a causal layer). Half of the layers are bidirectional.

What rnnlab does (``ModelConfig.bidirectional_every``; ``SequenceModel.forward(prefix_len=P)``): a bidirectional
layer holds a second mixer ``rev`` of the same kind and options, and its mixer output is

    y_t = mixer(h)_t + rev_t,   rev_t = rev(h_{P-1}, ..., h_0) at t's place   (t < P: the prefix read right to left)
                                rev_t = rev(h_t) from rev's initial state    (t >= P: the token alone, causal)

with h the block's normed input. ``rev`` is any registered mixer run through its own contract (the reversed prefixes
and the single suffix tokens as one packed batch, cu_seqlens), so no mixer changes; it keeps no state between calls
(every suffix token starts it afresh), and the model state is the forward mixers' alone.

Differences from the paper: (1) the reverse branch is a whole second mixer whose output is added, not half of the
layer's state channels concatenated before its output projection: a bidirectional layer has twice the mixer
parameters and, over the prefix, twice the state (the paper is parameter- and state-matched); (2) in the suffix the
reverse branch sees the current token from its initial state, the contract's form of the paper's zeroed forget gate
(h = x_t), which for a mixer with a short conv or token shift also drops those taps; (3) which layers: i % k == 0
(the first is bidirectional), the paper says only "half". The prefix must lie within one call (like JRT's prompt):
a later call, and every ``step``, is suffix; ``prefix_len`` with packed inputs (cu_seqlens) is not supported.
Positions t < P - 1 see the token after them, so a prefix must hold no scored target but its last (Birdie's prompt,
MQAR's context).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from rnnlab.layers.base import Mixer
from rnnlab.ops.varlen import cu_seqlens_from_lengths

__all__ = ["reverse_prefix", "check_prefix_len"]


def check_prefix_len(prefix_len, batch: int, T: int, device) -> Tensor:
    """An int or a (B,) integer tensor in [0, T] -> (B,) int64 on ``device``."""
    if isinstance(prefix_len, int) and not isinstance(prefix_len, bool):
        prefix_len = torch.full((batch,), prefix_len, dtype=torch.int64)
    if (not isinstance(prefix_len, Tensor) or prefix_len.shape != (batch,) or prefix_len.is_floating_point()
            or bool(((prefix_len < 0) | (prefix_len > T)).any())):
        raise ValueError(f"prefix_len must be an int or a (B,) = ({batch},) integer tensor with values in [0, T = {T}], "
                         f"got {prefix_len!r}")
    return prefix_len.to(device=device, dtype=torch.int64)


def reverse_prefix(rev: Mixer, h: Tensor, prefix_len: Tensor | None) -> Tensor:
    """h (B, T, D), prefix_len (B,) int64 or None (no prefix) -> (B, T, D): ``rev`` over each row's prefix read right
    to left, at the prefix's places, and over each later token alone from its initial state (module docstring)."""
    B, T, D = h.shape
    lengths = [0] * B if prefix_len is None else prefix_len.tolist()
    if not any(lengths):  # every token alone: one batch of B * T one-token sequences
        y, _ = rev(rearrange(h, "b t d -> (b t) 1 d"))
        return rearrange(y, "(b t) 1 d -> b t d", b=B)
    t = torch.arange(T, device=h.device)
    P = prefix_len[:, None]
    order = rearrange(torch.where(t < P, P - 1 - t, t), "b t -> b t 1").expand(B, T, D)  # an involution per row
    seqs = [n for p in lengths for n in ([p] if p else []) + [1] * (T - p)]  # each row: its prefix, then one per token
    y, _ = rev(rearrange(h.gather(1, order), "b t d -> 1 (b t) d"), cu_seqlens=cu_seqlens_from_lengths(torch.tensor(seqs)))
    return rearrange(y, "1 (b t) d -> b t d", b=B).gather(1, order)
