"""pLSTM on 2-D grids (Pöppel, Freinschlag, Schmied, Lin & Hochreiter 2025, "pLSTM: parallelizable Linear Source
Transition Mark networks", Sec. 3-4): an image-like layer x (B, X, Y, D) -> (B, X, Y, D), not a token mixer (it
reads the whole grid, in four directions). Per head h and orientation o (the grid flipped along none / x / y / both
axes, so that each of the four corners is a source of the line-graph DAG):

    c = SiLU(depthwise_conv3x3(x))
    q, k = W_q c, W_k c ;  v = W_v x                              (K = V = D / H per head, shared by orientations)
    S = σ(w_S c + b_S), M = σ(w_M c + b_M), D = σ(w_D c + b_D)      source, mark, direct (logsigmoid-activated)
    T = tanh(5 (w_T c + b_T))  or  σ(·)^5                          transition magnitude, |T| < 1
    y_o = MultiHeadRMSNorm(plstm2d(q, k, v, S, T, M, D) on the grid of orientation o)      (rnnlab.ops.plstm2d)
    y = W_o (mean_o y_o ⊙ w) + p ⊙ x                               (output projection, passthrough of x)

**Modes** (the paper's two ways to keep long-range propagation on a DAG bounded, Sec. 4):

- ``mode="P"`` (directed propagation): for every incoming edge, the absolute transitions to the outgoing edges sum
  to at most 1. An orientation ρ = σ(w_ρ c + b_ρ) per head splits the cell's transition between the two outgoing
  edges: T^rl = T^ru = ρ T, T^dl = T^du = (1 − ρ) T (so |T^rl| + |T^dl| = |T| ≤ 1, the bound), and the source the
  same way (S^r = ρ S, S^d = (1 − ρ) S); one mark for both incoming edges. A state then travels along the
  direction ρ picks (a binomial spread around it) without exploding, whatever the grid's size.
- ``mode="D"`` (diffusive distribution): the line graph is cut to a multitree, so at most one path joins two edges
  and each |T| ≤ 1 is enough: the d-edges only continue d-edges (T^dl = 0), the r-edges take both (T^rl, T^ru,
  independent gates), the code's chirality "L"; sources S^r, S^d and marks M^l, M^u are separate gates.

Initialization and parameterization follow the authors' code (github.com/ml-jku/plstm, ``pLSTM2DLayer``), read as
the specification where the paper's text could not be read from this machine: T's bias 1 and weight 0 (T ≈ 1), S,
M, D bias −5 and weight 0 (the code's gate weights are off by default; here they are on and zero-initialized, as in
rnnlab.layers.plstm), ρ's bias spread over heads from −2 to 2 (each head a different direction), weight 0, the four
orientations' outputs normed per head and averaged, an output projection with small init (std √(2 / 5D)), a learned
passthrough of x (init 1). **Where this departs from the code** (said so in the README row): the code's P-mode uses
T^dl = T^du = 1 − ρT and S^d = 1 − ρS, which meets the paper's bound only for T ≥ 0 (and S^d ≈ 1 at init); here
both outgoing edges share the magnitude, which meets it for signed T (the paper's constraint, followed). The code
lists orientations as [0, 1, 2, 3] but flips the y axis on bit 2, so its four orientations are two, each twice;
here they are the four corners. ρ's input scale (the code's 0.5 / D factor on w_ρ) is left out. q, k, v are full
linear maps (the code's are head-wise blocks).
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.parts import RMSNorm
from rnnlab.ops.chunk import acc_dtype
from rnnlab.ops.forms import check_form
from rnnlab.ops.plstm2d import BACKENDS, plstm2d

__all__ = ["PLSTM2D"]

_TRANSITIONS = {"tanh": lambda z: torch.tanh(5 * z), "logsigmoid": lambda z: torch.exp(5 * nn.functional.logsigmoid(z))}
_FLIPS = ((), (1,), (2,), (1, 2))  # the four orientations: flipped grid axes of (B, X, Y, ...)
# gates per (orientation, head): P: S, T, M, ρ; D: S^r, S^d, T^rl, T^du, T^ru, M^l, M^u
_GATES = {"P": ("S", "T", "M", "rho"), "D": ("Sr", "Sd", "Trl", "Tdu", "Tru", "Ml", "Mu")}
_BIAS = {"S": -5.0, "Sr": -5.0, "Sd": -5.0, "M": -5.0, "Ml": -5.0, "Mu": -5.0, "T": 1.0, "Trl": 1.0, "Tdu": 1.0, "Tru": 1.0}


def _into_op(C: Tensor, axis: int) -> Tensor:
    """A layer's boundary state (B, 4, n, ...), indexed in the unflipped grid -> the op's (4B, n, ...), indexed in
    each orientation's flipped grid (n runs along ``axis`` of the grid: 1 = x, 2 = y)."""
    return torch.cat([C[:, o].flip(1) if axis in f else C[:, o] for o, f in enumerate(_FLIPS)])


def _out_of_op(C: Tensor, axis: int) -> Tensor:
    """The inverse of _into_op: (4B, n, ...) -> (B, 4, n, ...)."""
    return torch.stack([c.flip(1) if axis in f else c for c, f in zip(C.chunk(len(_FLIPS)), _FLIPS)], 1)


class PLSTM2D(nn.Module):
    """x (B, X, Y, D) -> y (B, X, Y, D): pLSTM over the grid in four orientations (module doc).

    num_heads: H; mode: "P" | "D"; transition: "tanh" (signed) | "logsigmoid" (positive); conv_size: the
    depthwise conv's width (odd); backend: rnnlab.ops.plstm2d's form; block: its hierarchical form's block side.

    Boundary state (optional; ``forward(x, initial_state, return_state=True)``): per orientation o (the grid flipped
    along ``_FLIPS[o]``: none, x, y, both), the op's edge states entering the grid on o's two source sides and
    leaving it on the two far sides, indexed in the unflipped grid's coordinates:
    initial_state = (C_in_x (B, 4, Y, H, K, V): the edges crossing the x-side where o enters (x = 0, or x = X - 1
    where o flips x), C_in_y (B, 4, X, H, K, V): likewise the y-side), None: zeros; the final state (C_out_x, C_out_y)
    the same shapes on the opposite sides. A grid cut in two along x (A then B) is the whole grid when each half
    gets, for the orientations crossing the cut towards it, the other half's C_out_x there (A's for o = 0, 2; B's
    for o = 1, 3). Only the recurrence's state crosses: the depthwise conv's window (conv_size // 2 cells) does not,
    so a cut grid equals the whole only with conv_size = 1."""

    def __init__(self, d_model: int, num_heads: int = 4, mode: str = "P", transition: str = "tanh", conv_size: int = 3,
                 backend: str = "auto", block: int = 4):
        super().__init__()
        if num_heads < 1 or d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        if mode not in _GATES:
            raise ValueError(f'mode must be "P" or "D", got {mode!r}')
        if transition not in _TRANSITIONS:
            raise ValueError(f"transition must be one of {tuple(_TRANSITIONS)}, got {transition!r}")
        if conv_size < 1 or conv_size % 2 == 0:
            raise ValueError(f"conv_size must be odd and >= 1 (a centred window), got {conv_size}")
        D, H, O = d_model, num_heads, len(_FLIPS)
        self.d_model, self.num_heads, self.head_dim, self.mode, self.transition = D, H, D // H, mode, transition
        self.backend = check_form(backend, BACKENDS, "plstm2d")
        if block < 1 or block & (block - 1):
            raise ValueError(f"block must be a power of two >= 1, got {block}")
        self.block = block
        self.conv = nn.Conv2d(D, D, conv_size, padding=conv_size // 2, groups=D)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(D, D, bias=False) for _ in range(3))
        names = _GATES[mode]
        self.gates = nn.Linear(D, len(names) * O * H)  # (gate, orientation, head)
        self.direct = nn.Linear(D, H)
        nn.init.zeros_(self.gates.weight), nn.init.zeros_(self.direct.weight)
        with torch.no_grad():
            spread = torch.linspace(-2.0, 2.0, H).repeat(O)  # ρ: each head its own direction
            self.gates.bias.copy_(torch.cat([spread if n == "rho" else torch.full((O * H,), _BIAS[n]) for n in names]))
            self.direct.bias.fill_(-5.0)
        self.norm = RMSNorm(self.head_dim, eps=1e-5, elementwise_affine=False)
        self.norm_weight = nn.Parameter(torch.ones(D))
        self.o_proj = nn.Linear(D, D, bias=False)
        nn.init.normal_(self.o_proj.weight, std=math.sqrt(2 / (5 * D)))
        self.passthrough = nn.Parameter(torch.ones(D))

    def _transitions(self, g: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Gate pre-activations (.., O, H) -> S (.., 2), T (.., 2, 2) [out r/d, in l/u], M (.., 2) for the op."""
        act = _TRANSITIONS[self.transition]
        if self.mode == "P":
            rho, S, T, M = torch.sigmoid(g["rho"]), torch.sigmoid(g["S"]), act(g["T"]), torch.sigmoid(g["M"])
            split = torch.stack([rho, 1 - rho], -1)  # (r, d)
            return split * S[..., None], (split * T[..., None])[..., None].expand(*T.shape, 2, 2), M[..., None].expand(*M.shape, 2)
        Trl, Tdu, Tru = act(g["Trl"]), act(g["Tdu"]), act(g["Tru"])
        T = torch.stack([torch.stack([Trl, Tru], -1), torch.stack([torch.zeros_like(Tdu), Tdu], -1)], -2)
        return (torch.sigmoid(torch.stack([g["Sr"], g["Sd"]], -1)), T, torch.sigmoid(torch.stack([g["Ml"], g["Mu"]], -1)))

    def forward(self, x: Tensor, initial_state: tuple[Tensor, Tensor] | None = None, return_state: bool = False):
        """x (B, X, Y, D) -> y (B, X, Y, D), or (y, final boundary state) with return_state (class doc)."""
        if x.dim() != 4 or x.shape[-1] != self.d_model or x.shape[1] == 0 or x.shape[2] == 0:
            raise ValueError(f"PLSTM2D expects x of shape (B, X, Y, D) = (batch, X >= 1, Y >= 1, {self.d_model}), got {tuple(x.shape)}")
        B, O, H = x.shape[0], len(_FLIPS), self.num_heads
        h0 = None
        if initial_state is not None:
            want = [(B, O, n, H, self.head_dim, self.head_dim) for n in (x.shape[2], x.shape[1])]
            if len(initial_state) != 2 or [tuple(C.shape) for C in initial_state] != want:
                raise ValueError(f"PLSTM2D: initial_state must be (C_in_x {want[0]}, C_in_y {want[1]}), got "
                                 f"{[tuple(C.shape) for C in initial_state]}")
            h0 = (_into_op(initial_state[0], 2), _into_op(initial_state[1], 1))
        c = nn.functional.silu(rearrange(self.conv(rearrange(x, "b x y d -> b d x y")), "b d x y -> b x y d"))
        heads = lambda t: rearrange(t, "b x y (h d) -> b x y h d", h=H)  # noqa: E731
        acc = acc_dtype(x)  # gates in float32 at least (float64 stays float64)
        gates = rearrange(self.gates(c).to(acc), "b x y (g o h) -> g o b x y h", g=len(_GATES[self.mode]), o=O)
        S, T, M = self._transitions(dict(zip(_GATES[self.mode], gates)))  # (O, B, X, Y, H, ...)
        shared = (heads(self.q_proj(c)), heads(self.k_proj(c)), heads(self.v_proj(x)), torch.sigmoid(self.direct(c).to(acc)))
        flip = lambda t, f: t.flip(f) if f else t  # noqa: E731
        # the four orientations run as one batch of 4B grids, each flipped so its source corner is (0, 0)
        per = lambda t: torch.cat([flip(t, f) for f in _FLIPS])  # noqa: E731
        along = lambda t: torch.cat([flip(t[o], f) for o, f in enumerate(_FLIPS)])  # noqa: E731
        q, k, v, Dg = map(per, shared)
        y, (C_x, C_y) = plstm2d(q, k, v, along(S), along(T), along(M), Dg, initial_state=h0, backend=self.backend,
                                block=self.block)
        y = self.norm(y).chunk(O)
        y = torch.stack([flip(t, f) for t, f in zip(y, _FLIPS)]).mean(0)
        y = rearrange(y, "b x y h d -> b x y (h d)") * self.norm_weight
        y = self.o_proj(y.to(x.dtype)) + self.passthrough * x
        return (y, (_out_of_op(C_x, 2), _out_of_op(C_y, 1))) if return_state else y

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, mode={self.mode!r}, transition={self.transition!r}"
