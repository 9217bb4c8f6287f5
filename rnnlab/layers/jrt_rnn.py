"""JRT-RNN: prefix linear attention (Arora, Timalsina, Singhal, Spector, Eyuboglu, Zhao, Rao, Rudra & Ré 2024,
"Just read twice: closing the recall gap for recurrent language models", §5, the prefix-linear-attention layer).

A declared prompt prefix of ``prefix_len`` tokens (the authors' ``enc_length``) is read by a non-causal encoder with
its own key and value projections; every position then decodes causally from the encoder's summary plus the causal
linear attention over the tokens so far:

    y_i = φ(q_i)ᵀ (Σ_{j<M} φ(k^e_j) v^e_jᵀ + Σ_{j<=i} φ(k_j) v_jᵀ) / (φ(q_i)ᵀ (Σ_{j<M} φ(k^e_j) + Σ_{j<=i} φ(k_j)) + eps)

with φ Based's 2nd-order Taylor map (rnnlab/layers/based.py), M = prefix_len, and every i — inside the prefix too
(positions i < M see the whole prefix through the encoder: the non-causal part) — reading the same encoder summary.

Inputs and ``step`` under the streaming contract: the prefix length is a fixed option (the authors' layer takes a
fixed ``enc_length``; rnnlab's contract has no per-row prompt metadata), counted from each sequence's first token
(``pos`` in the state; packed sequences each have their own). The state is S = (encoder summary) + (causal memory),
z alike, and pos: the authors' decode cache, which adds the encoder's kv-state to the decoder's after the prompt. A
call that holds prefix tokens adds all of them to the summary before any of its outputs is read (the encoder is
non-causal within the call), so the paper's model is exactly: the whole prompt in one call (the prefill), then
``step`` per token — ``step`` after the prefix is linear attention continuing from S. A step inside the prefix (or a
prompt cut across calls) sees the prefix tokens given so far: parallel == step and split == full hold once the
prompt has been given whole (the conformance suite feeds the first ``prompt_len`` tokens in one call).

Simplifications: the mixer is the prefix-linear-attention layer only; the authors' JRT-RNN stack interleaves it
with sliding-window attention and gated convolutions (a model preset, not built here).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.based import taylor_feature_map, taylor_linear_attention
from rnnlab.layers.registry import register_mixer
from rnnlab.ops.varlen import Packing, cu_seqlens_from_lengths, run_packed

__all__ = ["JRTRNN"]


@register_mixer("jrt_rnn", family="matrix", small={"num_heads": 2, "feature_dim": 4, "prefix_len": 5, "chunk_size": 16})
class JRTRNN(Mixer):
    """x (B, T, D) -> y (B, T, D). num_heads: H; feature_dim: d of the Taylor map (state 1 + d + d² features per head);
    prefix_len: M, the prompt tokens read by the non-causal encoder; chunk_size: chunk of the causal part; eps: added
    to the denominator. State: S (B, H, 1+d+d², D/H), z (B, H, 1+d+d²), pos (B,) int64."""

    def __init__(self, d_model: int, num_heads: int = 4, feature_dim: int = 16, prefix_len: int = 64, chunk_size: int = 64,
                 eps: float = 1e-12):
        super().__init__(d_model)
        if num_heads < 1 or d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        H = num_heads
        self.num_heads, self.feature_dim, self.head_dim = H, feature_dim, d_model // H
        self.prefix_len, self.chunk_size, self.eps = prefix_len, chunk_size, eps
        self.num_features = 1 + feature_dim + feature_dim**2
        self.q_proj = nn.Linear(d_model, H * feature_dim, bias=False)
        self.k_proj = nn.Linear(d_model, H * feature_dim, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_enc_proj = nn.Linear(d_model, H * feature_dim, bias=False)  # the encoder's own keys and values
        self.v_enc_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    @property
    def prompt_len(self) -> int:
        """Tokens that must arrive in one call for the paper's semantics (the conformance suite reads it)."""
        return self.prefix_len

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or torch.float32
        H, F_ = self.num_heads, self.num_features
        return {"S": torch.zeros(batch_size, H, F_, self.head_dim, device=device, dtype=dtype),
                "z": torch.zeros(batch_size, H, F_, device=device, dtype=dtype),
                "pos": torch.zeros(batch_size, dtype=torch.int64, device=device)}

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.num_features * (self.head_dim + 1) + 1

    def _heads(self, t: Tensor) -> Tensor:
        return rearrange(t, "b t (h d) -> b t h d", h=self.num_heads)

    def _encode(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder's terms of x (B, T, D) at absolute positions (B, T): φ(k^e_j) (B, T, H, F), zero outside the
        prefix, and v^e_j (B, T, H, V), float32."""
        ke = taylor_feature_map(self._heads(self.k_enc_proj(x)).float()) * (positions < self.prefix_len)[..., None, None]
        return ke, self._heads(self.v_enc_proj(x)).float()

    def _decode(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        """Causal linear attention from the state (the encoder's sum already in it)."""
        o, new = taylor_linear_attention(self, x, state["S"].float(), state["z"].float(), form)
        y = self.o_proj(rearrange(o, "b t h d -> b t (h d)").to(x.dtype))
        return y, {"S": new["S"].to(state["S"].dtype), "z": new["z"].to(state["z"].dtype), "pos": state["pos"] + x.shape[1]}

    def _with_prefix(self, state: State, S: Tensor, z: Tensor) -> State:
        return {"S": state["S"].float() + S, "z": state["z"].float() + z, "pos": state["pos"]}

    def _mix(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        """The call's prefix tokens enter the state before any output is read (non-causal within the call)."""
        positions = state["pos"][:, None] + torch.arange(x.shape[1], device=x.device)[None]
        ke, ve = self._encode(x, positions)
        return self._decode(x, self._with_prefix(state, torch.einsum("bthf,bthv->bhfv", ke, ve), ke.sum(1)), form)

    def packed(self, x: Tensor, state: State, packing: Packing) -> tuple[Tensor, State]:
        """Each sequence's prefix tokens are summed first, over the whole sequence as this call holds it (the
        default schedule cuts sequences into time segments, which would make the encoder causal across them);
        then the causal part runs on the default schedule."""
        seq = torch.repeat_interleave(torch.arange(len(packing.lengths), device=x.device),
                                      torch.tensor(packing.lengths, device=x.device))  # (T,) the sequence of each token
        starts = cu_seqlens_from_lengths(packing.lengths, device=x.device)[:-1]
        positions = state["pos"][seq] + torch.arange(x.shape[1], device=x.device) - starts[seq]
        ke, ve = (t[0] for t in self._encode(x, positions[None]))  # x is (1, T, D): summed per sequence, not per row
        S = torch.zeros_like(state["S"], dtype=torch.float32).index_add_(0, seq, torch.einsum("thf,thv->thfv", ke, ve))
        z = torch.zeros_like(state["z"], dtype=torch.float32).index_add_(0, seq, ke)
        return run_packed(lambda xs, s: self._decode(xs[0], s, "recurrent" if xs[0].shape[1] == 1 else "chunk"), (x,),
                          self._with_prefix(state, S, z), packing)

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y, state): the encoder's sum, then chunkwise causal linear attention."""
        return self._mix(x, state, "chunk")

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y, state): after the prefix, one step of linear attention from S (module docstring)."""
        # past every row's prefix the encoder's terms are zero; pos read on the host on CPU only (no device sync)
        if x.device.type == "cpu" and bool((state["pos"] >= self.prefix_len).all()):
            return self._decode(x, state, "recurrent")
        return self._mix(x, state, "recurrent")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, feature_dim={self.feature_dim}, prefix_len={self.prefix_len}"
