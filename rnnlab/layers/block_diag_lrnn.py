"""Block-diagonal input-dependent linear RNN (Fan, Chi & Rudnicky 2024, "Advancing Regular Language Reasoning in
Linear Recurrent Neural Networks", NAACL; Section 4, the proposed LRNN, and its Parallel Scan).

    A(u_t) = diag(A_1(u_t), ..., A_h(u_t)),  A_i(u_t) ∈ R^{b×b}          (block-diagonal, input-dependent)
    x_t = A(u_t) x_{t-1} + B(u_t),   y_t = x_t,   x_0 learned              (the linear recurrence; state D = h·b)

with every block's columns bounded in p-norm (p = 1.2), which keeps the recurrence from blowing up over lengths
never seen in training while leaving it able to rotate, reflect and permute (sum, even pair and modular
arithmetic extrapolate, where diagonal and input-independent LRNNs do not).

The paper's text could not be consulted from this machine; the transition follows the authors' released code
(github.com/tinghanf/RegluarLRNN, ``block_model.py``), which we read as the specification:

    M = W_2 ReLU(W_1 u_t + c_1) + c_2  reshaped to h blocks (b, b)      (W_1: D → D·b, W_2: D·b → D·b)
    M ← M − mean over each column's rows                                 (columns centred)
    A_i = M_i / max_j ‖M_i[:, j]‖_p                                      (the largest column p-norm becomes 1)
    B(u_t) = V_2 ReLU(V_1 u_t + e_1) + e_2                               (V_1, V_2: D → D)

PyTorch's default Linear initialization, x_0 ~ N(0, 1), as the code. Simplification: the divisor is floored at
1e-12 (the code divides by zero when a block's columns are all equal). In a model the layer sits in the
pre-norm residual block (the code's layers: LayerNorm → LRNN → residual, no MLP; use ``model.mlp=None`` for
that). The recurrence is ``rnnlab.ops.matrix_scan`` (the code's log-depth Parallel Scan is its ``scan`` form).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.parts import learned_initial_state
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.chunk import acc_dtype
from rnnlab.ops.forms import check_form
from rnnlab.ops.matrix_scan import BACKENDS, matrix_scan

__all__ = ["BlockDiagLRNN"]


@register_mixer("block_diag_lrnn", family="expressive", small={"block_size": 4})
class BlockDiagLRNN(Mixer):
    """x (B, T, D) -> y (B, T, D). State: h (B, D / b, b) float32, starting from the learned x_0.

    block_size: b (D divisible by b; the code's ``block_dim``, 8 in its experiments); p: the column norm
    (1.2); backend: matrix_scan's form for the parallel pass (the step is one matmul)."""

    def __init__(self, d_model: int, block_size: int = 8, p: float = 1.2, backend: str = "auto"):
        super().__init__(d_model)
        if d_model % block_size:
            raise ValueError(f"d_model={d_model} must be divisible by block_size={block_size}")
        if p < 1:
            raise ValueError(f"p must be >= 1 (a norm), got {p}")
        D, b = d_model, block_size
        self.block_size, self.num_blocks, self.p = b, D // b, float(p)
        self.backend = check_form(backend, BACKENDS, "block_diag_lrnn")
        self.gen_block = nn.Sequential(nn.Linear(D, D * b), nn.ReLU(), nn.Linear(D * b, D * b))
        self.gen_value = nn.Sequential(nn.Linear(D, D), nn.ReLU(), nn.Linear(D, D))
        self.x0 = nn.Parameter(torch.randn(self.num_blocks, b))

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"h": learned_initial_state(self.x0, batch_size, device, dtype)}

    def state_size(self, seq_len: int) -> int:
        return self.d_model

    def transitions(self, x: Tensor) -> Tensor:
        """x (B, T, D) -> A (B, T, h, b, b) in float32 (float64 for float64 x): centred columns, the largest column p-norm 1 per block."""
        M = decode.sequential(self.gen_block, x).to(acc_dtype(x))  # the generator: most of a decode token (16.8 MB at d_model 256)
        M = rearrange(M, "b t (h i j) -> b t h i j", i=self.block_size, j=self.block_size)
        M = M - M.mean(-2, keepdim=True)
        scale = torch.linalg.vector_norm(M, ord=self.p, dim=-2, keepdim=True).amax(-1, keepdim=True)
        return M / scale.clamp_min(1e-12)

    def _mix(self, x: Tensor, state: State, backend: str) -> tuple[Tensor, State]:
        A = self.transitions(x)
        v = rearrange(decode.sequential(self.gen_value, x).to(A.dtype), "b t (h i) -> b t h i", i=self.block_size)
        h, h_last = matrix_scan(A, v, state["h"].to(A.dtype), backend=backend)
        return rearrange(h, "b t h i -> b t (h i)").to(x.dtype), {"h": h_last.to(state["h"].dtype)}

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self._mix(x, state, self.backend)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self._mix(x, state, "recurrent")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, blocks={self.num_blocks}x{self.block_size}, p={self.p}, backend={self.backend!r}"
