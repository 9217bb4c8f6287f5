"""RAT (Wei, Yadav, Pascanu & Gulcehre 2025, "RAT: Bridging RNN Efficiency and Attention Accuracy in Language
Modeling", arXiv 2507.04416; equations from the authors' post, PDF numbering unchecked): a gated recurrence
inside chunks of L tokens, softmax attention across them.

    z, v, f, q, k = x W                                  q, k: ``ngroups`` heads shared by the num_heads heads
    g = σ(f + b_g),  b_g = log u, u ~ U(1, L − 1)        per channel; g(0) = u / (1 + u) ∈ (1/2, (L − 1)/L)
    k̃, ṽ = g ⊙ k̃ + (1 − g) ⊙ (k, v)                      (intra-chunk RNN, reset at every chunk start)
    o = softmax([q K̃ᵀ_{<c}, q k̃ᵀ_t] / √d_h) [Ṽ_{<c}; ṽ_t]  (inter-chunk attention; RoPE by chunk index)
    y = (σ(z) ⊙ o) W_O                                    (output gate)

The op (rnnlab/ops/rat.py) holds the math; L = 1 is softmax attention over (1 − g)-scaled keys and values, L ≥ T
the gated recurrence alone. Parameterization from the authors' code (github.com/CLAIRE-Labo/RAT, layer ``rat``): one
input projection to [z, v, f, q, k] with q and k of ``ngroups`` heads (head h reads group h mod ngroups), one gate
per channel shared by k̃ and ṽ, the gate bias above, inter-chunk RoPE (``rope_base=None``: NoPE, which the paper
also trains), linear weights N(0, 0.02) (their runs' ``fixed`` init). Left out: the layer's own input RMSNorm and
residual, which the rnnlab block already applies around every mixer.

State: the op's dict, {"k", "v": (B, H, d_h) the running k̃, ṽ; "sk", "sv": (B, H, C, d_h) the summaries of the
C = pos // L completed chunks; "pos": (B,)}: 2 H d_h (1 + ⌊T / L⌋) + 1 floats after T tokens, L times fewer than
attention's KV cache.
"""
from __future__ import annotations

from functools import partial

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import param_derived, rotary, rotary_cos_sin, rotary_inv_freq
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.forms import check_form
from rnnlab.ops.rat import chunk_rat, fused_recurrent_rat, naive_recurrent_rat, rat_state

__all__ = ["RAT"]

FORMS = {"auto": chunk_rat, "chunk": chunk_rat, "recurrent": fused_recurrent_rat, "reference": naive_recurrent_rat}


@register_mixer("rat", family="attention", small={"num_heads": 2, "ngroups": 2, "chunk_size": 4})
class RAT(Mixer):
    """x (B, T, D) -> y (B, T, D). num_heads: H (head size D / H); chunk_size: L; ngroups: query/key heads shared by
    the H heads; rope_base: inter-chunk RoPE base (None: no positions); backend: the parallel form (decode steps
    always run the recurrent one)."""

    def __init__(self, d_model: int, num_heads: int = 4, chunk_size: int = 16, ngroups: int = 2,
                 rope_base: float | None = 10000.0, init_std: float = 0.02, backend: str = "auto"):
        super().__init__(d_model)
        if d_model % num_heads or (d_model // num_heads) % 2:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads} into an even head size (rotary)")
        if num_heads % ngroups:
            raise ValueError(f"num_heads={num_heads} must be a multiple of ngroups={ngroups}")
        self.backend = check_form(backend, tuple(FORMS), "rat")
        self.num_heads, self.head_dim, self.chunk_size, self.ngroups, self.rope_base = num_heads, d_model // num_heads, chunk_size, ngroups, rope_base
        qk = ngroups * self.head_dim
        self.in_proj = nn.Linear(d_model, 3 * d_model + 2 * qk, bias=False)  # [z, v, f, q, k]
        # g starts in (1/2, (L − 1)/L), a memory of about a chunk (the authors' init; for L <= 2 the bias is 0)
        u = torch.empty(d_model).uniform_(1, chunk_size - 1) if chunk_size > 2 else torch.ones(d_model)
        self.gate_bias = nn.Parameter(u.log())
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        for w in (self.in_proj.weight, self.out_proj.weight):
            nn.init.normal_(w, std=init_std)
        no_weight_decay(self.gate_bias)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return rat_state(batch_size, self.num_heads, self.head_dim, device, dtype)

    def state_size(self, seq_len: int) -> int:
        return 2 * self.num_heads * self.head_dim * (1 + seq_len // self.chunk_size) + 1

    def _rope(self, x: Tensor, index: Tensor) -> Tensor:
        return rotary(x, *rotary_cos_sin(index, self.head_dim, self.rope_base))

    def _mix(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        D, qk = self.d_model, self.ngroups * self.head_dim
        z, v, f, q, k = self.in_proj(x).split([D, D, D, qk, qk], -1)
        g = torch.sigmoid(f.float() + self.gate_bias.float()).to(torch.promote_types(f.dtype, torch.float32))
        heads = partial(rearrange, pattern="b t (h d) -> b t h d", d=self.head_dim)
        share = partial(repeat, pattern="b t (n d) -> b t (r n) d", d=self.head_dim, r=self.num_heads // self.ngroups)
        o, new = FORMS[form](share(q), share(k), heads(v), heads(g), self.chunk_size, scale=self.head_dim ** -0.5,
                             initial_state=state, output_final_state=True, rope=None if self.rope_base is None else self._rope)
        y = self.out_proj(torch.sigmoid(z) * rearrange(o.to(z.dtype), "b t h d -> b t (h d)"))
        return y, new

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self._mix(x, state, self.backend)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if decode.usable(x, *(t for n, t in state.items() if n != "pos"), *self.parameters()):  # the fused kernel
            inv_freq = None
            if self.rope_base is not None:  # computed once
                inv_freq = param_derived(self, "_inv_freq", lambda: rotary_inv_freq(self.head_dim, self.rope_base))
            o, new = decode.rat_decode(self, decode.linear(self.in_proj, x), state, self.gate_bias, inv_freq, heads=self.num_heads,
                                       ngroups=self.ngroups, chunk_size=self.chunk_size, scale=self.head_dim ** -0.5)
            return decode.linear(self.out_proj, o), new
        return self._mix(x, state, "recurrent")

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, chunk_size={self.chunk_size}, ngroups={self.ngroups}, "
                f"rope_base={self.rope_base}, backend={self.backend!r}")
