"""Bilinear RNN (Ebrahimi & Memisevic 2025, "Revisiting Bi-Linear State Transitions in Recurrent Neural Networks",
NeurIPS; Section 3 (the bilinear update and its factorizations)).

The hidden state is transformed, not just stored: the transition is a linear function of the input and the
update is linear, not affine, in the state (no additive input or bias term):

    h_{t,i} = Σ_{j,k} W_ijk h_{t-1,j} x_{t,k},   i.e.   h_t = A(x_t) h_{t-1},   A(x)_ij = Σ_k W_ijk x_k

The factorizations of W are the paper's hierarchy, from the most to the least expressive:

    full    A(x) = reshape(W x), an n×n matrix per token (any finite-state machine, S5 included)
    cp      A(x) = U diag(W_x x) V, W_ijk = Σ_r U_ir V_rj W_rk (CP / "factored" three-way tensor of rank R)
    block   A(x) = diag(A_1(x), ..., A_{n/b}(x)), each b×b block a full bilinear map of x
    diag    A(x) = diag(W x), real entries of either sign (parity; the Mamba end of the hierarchy)

Because the update is linear in h, only its direction carries information and the state is normalized to unit
norm, h_t ← h_t / ‖h_t‖ (scale invariance, the paper's stabilization: a pure product of input-dependent
matrices would otherwise grow or vanish exponentially). The readout is y_t = W_o h_t. h_0 is a learned unit-scale
vector (a purely multiplicative update needs a non-zero start).

The paper's full text could not be consulted from this machine; the equations above are from its abstract and
summaries. Choices of ours, each measured or stated:

- ``identity=True`` (default): A(x) = I + W x (diag: 1 + W x), W initialized at N(0, (0.25)²/(D·m)) so that W x
  has spectral norm ~0.5 and the products start near the identity. The paper's A(x) = W x (``identity=False``)
  is the limit of large W under normalization, and a model whose input has a constant component (an embedding
  through RMSNorm) can express the same set of per-token transitions either way. Why: at random init, products
  of pure Gaussian n×n transitions have top Lyapunov exponents only ~0.08 apart (n = 8), so the normalized state
  amplifies roundoff: float32 packed-vs-separate runs of the conformance suite differed by 1.3e-5 (limit 1e-5),
  bf16 weights moved outputs by 17% at T = 37.
- h_0 ~ N(0, 1/n), learned; PyTorch's default initialization elsewhere; U ~ N(0, 1/R), V ~ N(0, 1/n) for CP.
- The norm is over the whole state (all blocks together, which keeps the relative scale of the blocks).
- No rotation-parameterized (R₂) variant. The recurrence is
``rnnlab.ops.matrix_scan`` with ``normalize=True`` (exact under rescaling, so long products never overflow).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.parts import learned_initial_state
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.chunk import acc_dtype
from rnnlab.ops.forms import check_form
from rnnlab.ops.matrix_scan import BACKENDS, matrix_scan

__all__ = ["Bilinear", "FACTORIZATIONS"]

FACTORIZATIONS = ("full", "cp", "block", "diag")


@register_mixer("bilinear_diag", family="expressive", defaults={"factorization": "diag"}, small={"d_state": 8})
@register_mixer("bilinear", family="expressive", small={"d_state": 8, "block_size": 4, "rank": 8})
class Bilinear(Mixer):
    """x (B, T, D) -> y (B, T, D). State: h (B, H, m) float32, unit norm (H·m = d_state; H = 1 except ``block``).

    factorization: "full" | "cp" | "block" | "diag"; d_state: n; block_size: b ("block"); rank: R ("cp");
    identity: A(x) = I + W x, W initialized small (default; False: the paper's pure W x, see the module doc);
    backend: matrix_scan's form for the parallel pass (the step is one matmul)."""

    def __init__(self, d_model: int, factorization: str = "full", d_state: int = 64, block_size: int = 8, rank: int = 64,
                 identity: bool = True, backend: str = "auto"):
        super().__init__(d_model)
        if factorization not in FACTORIZATIONS:
            raise ValueError(f"factorization must be one of {FACTORIZATIONS}, got {factorization!r}")
        if factorization == "block" and d_state % block_size:
            raise ValueError(f"d_state={d_state} must be divisible by block_size={block_size}")
        n = d_state
        self.factorization, self.d_state, self.identity = factorization, n, identity
        self.backend = check_form(backend, BACKENDS, "bilinear")
        H, m = (n // block_size, block_size) if factorization == "block" else (1, n)
        self.heads, self.head_dim = H, m
        outputs = {"full": n * n, "block": H * m * m, "diag": n, "cp": rank}[factorization]
        self.W = nn.Linear(d_model, outputs, bias=False)  # W_ijk (or the CP factor W_rk) as a map of x
        if factorization == "cp":
            self.U = nn.Parameter(torch.randn(n, rank) / math.sqrt(rank))
            self.V = nn.Parameter(torch.randn(rank, n) / math.sqrt(n))
        if identity:  # W x of spectral norm ~0.5 for an RMS-normalized x (|x| = √D): I + W x starts near I
            nn.init.normal_(self.W.weight, std=0.25 / math.sqrt(d_model * (1 if factorization in ("diag", "cp") else m)))
        self.h0 = nn.Parameter(torch.randn(H, m) / math.sqrt(n))
        self.out_proj = nn.Linear(n, d_model, bias=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"h": learned_initial_state(self.h0, batch_size, device, dtype)}

    def state_size(self, seq_len: int) -> int:
        return self.d_state

    def transitions(self, x: Tensor) -> Tensor:
        """x (B, T, D) -> A(x): (B, T, H, m, m) matrices, or (B, T, 1, n) diagonals; float32 (float64 for float64 x),
        also under autocast: the transition is multiplied into the state at every step, and bf16 rounding of it
        compounds (at random init, full 8×8 transitions turned a 0.4% rounding into 15% at T = 37)."""
        dt = acc_dtype(x)
        with torch.autocast(x.device.type, enabled=False):  # a decode row of a plain W: one matrix-vector kernel
            xd = x.to(dt)
            w = decode.linear(self.W, xd) if self.W.weight.dtype == dt else F.linear(xd, self.W.weight.to(dt))
        if self.factorization == "diag":
            A = w.unsqueeze(2)
        elif self.factorization == "cp":
            A = torch.einsum("ir,btr,rj->btij", self.U.to(w.dtype), w, self.V.to(w.dtype)).unsqueeze(2)
        else:
            A = rearrange(w, "b t (h i j) -> b t h i j", h=self.heads, i=self.head_dim)
        if not self.identity:
            return A
        return A + 1 if self.factorization == "diag" else A + torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)

    def _mix(self, x: Tensor, state: State, backend: str) -> tuple[Tensor, State]:
        A = self.transitions(x)
        h, h_last = matrix_scan(A, None, state["h"].to(A.dtype), normalize=True, backend=backend)
        y = decode.linear(self.out_proj, rearrange(h, "b t h i -> b t (h i)").to(x.dtype))
        return y, {"h": h_last.to(state["h"].dtype)}

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self._mix(x, state, self.backend)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self._mix(x, state, "recurrent")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, factorization={self.factorization!r}, d_state={self.d_state}, heads={self.heads}x{self.head_dim}"
