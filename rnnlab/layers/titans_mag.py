"""Titans' memory as a gate (MAG; Behrouz, Zhong & Mirrokni 2024, "Titans: Learning to Memorize at Test Time", §4.2):
sliding-window attention and the neural memory read the same input side by side, and the memory's
output gates the attention's,

    y = SWA(x),   m = LMM(x),   o = RMSNorm(y) ⊙ σ(RMSNorm(m))      (normalized with learnable weights, then σ)

built from the existing mixers: `sliding_attention` (rnnlab/layers/attention.py) and `titans` (titans.py).
Persistent memory (§3.3, eq. 26: x̃ = [p_1 … p_{N_p}] ‖ x), ``persistent_tokens`` = N_p (default 4, 0: none): learnable
tokens whose keys and values every attention query sees besides its window (the attention mixer's option; SW-Attn*
of Fig. 3b keeps them visible), so they are parameters, not state, and a packed sequence, a split or a decode step
sees them alike. Choice, said here and in the README: the memory branch does not read them. Run over fixed learned
tokens from a fixed learned M_0, the memory would only reach another fixed state, which a learned initial memory
(titans.py: M_0 is learned) already expresses, bar the momentum and conv states the tokens would leave.
Memory as a layer (MAL: the memory layer, then sliding-window attention) is a model preset of the two mixers in
sequence: rnnlab.models.presets.titans_mal; memory as context (MAC): titans_mac.py.

State: the memory's state under "mem_" and the attention's cache under "attn_".
"""
from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.layers.attention import Attention
from rnnlab.layers.base import Mixer, State
from rnnlab.layers.parts import RMSNorm
from rnnlab.layers.registry import register_mixer
from rnnlab.layers.titans import Titans

__all__ = ["TitansMAG"]


@register_mixer("titans_mag", family="ttt", small={"num_heads": 2, "chunk_size": 8, "window": 16})
class TitansMAG(Mixer):
    """MAG: x (B, T, D) -> y (B, T, D) (module docstring). num_heads: H of both branches; window: the attention's;
    memory_depth, chunk_size: the memory's; persistent_tokens: N_p. State floats: the memory's + the windowed cache's, 2·min(T, w − 1)·D + 1."""

    def __init__(self, d_model: int, num_heads: int = 4, window: int = 64, memory_depth: int = 2, chunk_size: int = 16,
                 persistent_tokens: int = 4):
        super().__init__(d_model)
        self.attn = Attention(d_model, num_heads=num_heads, window=window, persistent_tokens=persistent_tokens)
        self.memory = Titans(d_model, num_heads=num_heads, memory_depth=memory_depth, chunk_size=chunk_size)
        self.attn_norm, self.memory_norm = RMSNorm(d_model), RMSNorm(d_model)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        state = {"attn_" + n: t for n, t in self.attn.init_state(batch_size, device, dtype).items()}
        state.update({"mem_" + n: t for n, t in self.memory.init_state(batch_size, device, dtype).items()})
        return state

    def state_size(self, seq_len: int) -> int:
        return self.attn.state_size(seq_len) + self.memory.state_size(seq_len)

    def _mix(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        part = lambda prefix: {n[len(prefix):]: t for n, t in state.items() if n.startswith(prefix)}  # noqa: E731
        y, sa = getattr(self.attn, form)(x, part("attn_"))
        m, sm = getattr(self.memory, form)(x, part("mem_"))
        o = self.attn_norm(y) * torch.sigmoid(self.memory_norm(m).float()).to(y.dtype)
        return o, {**{"attn_" + n: t for n, t in sa.items()}, **{"mem_" + n: t for n, t in sm.items()}}

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y, state): both branches' parallel forms."""
        return self._mix(x, state, "parallel")

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y, state): both branches' steps."""
        return self._mix(x, state, "step")
