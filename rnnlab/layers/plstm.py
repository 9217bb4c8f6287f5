"""pLSTM on sequences (Pöppel, Freinschlag, Schmied, Lin & Hochreiter 2025, "pLSTM: parallelizable Linear Source
Transition Mark networks", Sec. 3, the Source-Transition-Mark recurrence on the chain graph). Per head h:

    c = SiLU(causal_conv4(x))                                   (the code's additional convolution)
    q, k = W_q c, W_k c ;  v = W_v x                            (K = V = D / H per head)
    S = σ(w_S c + b_S),  M = σ(w_M c + b_M),  D = σ(w_D c + b_D)   source, mark, direct gates (logsigmoid-activated)
    T = tanh(5 (w_T c + b_T))                                   transition: signed, |T| < 1 (P-mode)
    C_t = T_t C_{t-1} + S_t k_t v_tᵀ,  o_t = M_t q_tᵀ C_{t-1} / √K + D_t (q_t·k_t) v_t / √K    (rnnlab.ops.plstm)
    y = W_o (MultiHeadRMSNorm(o)) + p ⊙ c                       (output projection, passthrough)

**Modes.** The paper's P-mode (directed propagation: transitions norm-bounded, |T| ≤ 1, so one path neither
explodes nor has to vanish) and D-mode (diffusive distribution: on a 2-D grid many paths join two nodes, so the
transitions are scalars whose sums over paths are bounded) are conditions on the line graph of a DAG; on a
chain there is one path between two tokens and both reduce to |T_t| ≤ 1. ``transition`` picks the code's
representation of T: "tanh" (signed, in (−1, 1), the code's default: negative eigenvalues let a head flip
sign, as for state tracking) or "logsigmoid" (T = σ(·)^5 in (0, 1): a decay, no sign flips).

The paper's text could not be read from this machine; the parameterization follows the authors' released code
(github.com/ml-jku/plstm, ``pLSTM1DLayer`` and its config defaults), read as the specification: the gates'
state-tracking dims J = 1 (scalars per head), T's bias 1 and weight 0 at init (T ≈ 1), S, M, D with bias −5 and
weight 0 at init (the code's defaults; its gate weights are off by default, here they are on, zero-initialized,
so the gates are input-dependent as the paper's "gates"), the query/key scale K^-1/2, a multi-head RMS norm,
an output projection with small init (std √(2 / 5D)), a learned passthrough of c (init 1).
Simplifications: q, k, v are full linear maps (the code's are head-wise blocks), the conv is the project's
ShortConv (width 4, SiLU).
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.parts import RMSNorm, ShortConv, fused_linear
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.forms import check_form
from rnnlab.ops.plstm import BACKENDS, plstm

__all__ = ["PLSTM"]

_TRANSITIONS = {"tanh": lambda z: torch.tanh(5 * z), "logsigmoid": lambda z: torch.exp(5 * nn.functional.logsigmoid(z))}


@register_mixer("plstm", family="expressive", small={"num_heads": 2, "chunk_size": 16})
class PLSTM(Mixer):
    """x (B, T, D) -> y (B, T, D). State: conv (B, 3, D), C (B, H, D/H, D/H) float32.

    num_heads: H; transition: "tanh" (signed, P-mode) | "logsigmoid" (positive); conv_size: causal conv width;
    chunk_size: the parallel form's chunk; backend: rnnlab.ops.plstm's form for the parallel pass."""

    def __init__(self, d_model: int, num_heads: int = 4, transition: str = "tanh", conv_size: int = 4, chunk_size: int = 64,
                 backend: str = "chunk"):
        super().__init__(d_model)
        if num_heads < 1 or d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        if transition not in _TRANSITIONS:
            raise ValueError(f"transition must be one of {tuple(_TRANSITIONS)}, got {transition!r}")
        D, H = d_model, num_heads
        self.num_heads, self.head_dim, self.transition, self.chunk_size = H, D // H, transition, chunk_size
        self.backend = check_form(backend, BACKENDS, "plstm")
        self.conv = ShortConv(D, conv_size, bias=True, activation="silu")
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(D, D, bias=False) for _ in range(3))
        self.gates = nn.Linear(D, 4 * H)  # S, T, M, D per head
        nn.init.zeros_(self.gates.weight)
        with torch.no_grad():
            self.gates.bias.copy_(torch.tensor([-5.0, 1.0, -5.0, -5.0]).repeat_interleave(H))
        self.norm = RMSNorm(self.head_dim, eps=1e-5, elementwise_affine=False)
        self.norm_weight = nn.Parameter(torch.ones(D))
        self.o_proj = nn.Linear(D, D, bias=False)
        nn.init.normal_(self.o_proj.weight, std=math.sqrt(2 / (5 * D)))
        self.passthrough = nn.Parameter(torch.ones(D))

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        H, d = self.num_heads, self.head_dim
        return {"conv": self.conv.init_state(batch_size, device, dtype),
                "C": torch.zeros(batch_size, H, d, d, device=device, dtype=torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return self.conv.state_size() + self.num_heads * self.head_dim ** 2

    def _mix(self, x: Tensor, state: State, backend: str) -> tuple[Tensor, State]:
        c, conv_state = self.conv(x, state["conv"])
        heads = lambda t: rearrange(t, "b t (h d) -> b t h d", h=self.num_heads)  # noqa: E731
        S, T, M, D = rearrange(self.gates(c).float(), "b t (g h) -> g b t h", g=4)
        o, C = plstm(heads(self.q_proj(c)), heads(self.k_proj(c)), heads(self.v_proj(x)), torch.sigmoid(S),
                     _TRANSITIONS[self.transition](T), torch.sigmoid(M), torch.sigmoid(D), state["C"], backend=backend,
                     chunk_size=self.chunk_size)
        o = rearrange(self.norm(o), "b t h d -> b t (h d)") * self.norm_weight
        y = self.o_proj(o.to(x.dtype)) + self.passthrough * c
        return y, {"conv": conv_state, "C": C.to(state["C"].dtype)}

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self._mix(x, state, self.backend)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if decode.usable(x, *state.values(), *self.parameters()):  # one token: the fused kernel (rnnlab.ops.decode)
            c, conv_state = self.conv(x, state["conv"])
            o, (C,) = decode.fused_step("plstm_decode", self, [fused_linear(c, [self.q_proj, self.k_proj, self.gates], whole=True),
                                                              decode.linear(self.v_proj, x)], [state["C"]], [self.norm_weight], self.d_model,
                                        [self.d_model], self.num_heads, self.transition == "tanh", self.norm.eps)
            return decode.linear(self.o_proj, o) + self.passthrough * c, {"conv": conv_state, "C": C}
        return self._mix(x, state, "recurrent")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, transition={self.transition!r}, backend={self.backend!r}"
