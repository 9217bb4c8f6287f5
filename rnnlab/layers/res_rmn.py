"""ResRMN, the Residual Reservoir Memory Network (Pinna, Ceni & Gallicchio 2025, "Residual Reservoir Memory
Networks", IJCNN 2025, arXiv 2508.09925): a linear memory reservoir feeding a residual nonlinear reservoir,

    m_t = C m_{t−1} + V_in x_t                                      (memory: C the cyclic shift, spectral radius 1)
    h_t = α O h_{t−1} + β tanh(W_x x_t + W_m m_t + W h_{t−1} + b)    (nonlinear: O random / cycle / identity)
    y_t = h_t

V_in U(−ω_m, ω_m), W_x U(−ω_x, ω_x), W_m U(−ω_mem, ω_mem), W U(−1, 1) rescaled to spectral radius ρ, b U(−ω_b, ω_b);
defaults are the authors' (ω's = 1, ρ = 1, α = β = 1, no bias); O defaults to the identity, the configuration the
paper finds best most often. Untrained (buffers only): the readout is fitted in closed form (rnnlab.models.reservoir).
The memory reservoir runs without a loop (rnnlab.ops.reservoir.cyclic_memory: rotations and one cumulative sum).
The spectral radius is set exactly (the paper's definition; ``exact_radius=False``: the authors' circular law).
"""
from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.parts import param_derived
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.forms import check_form
from rnnlab.ops.reservoir import orthogonal as orthogonal_matrix
from rnnlab.ops.reservoir import (ORTHOGONAL, cyclic_memory, cyclic_memory_ref, decode_weights, residual_reservoir,
                                  residual_reservoir_ref, spectral_rescale, uniform)

__all__ = ["ResRMN"]
BACKENDS = ("recurrent", "reference")  # rnnlab.ops.forms


@register_mixer("res_rmn", family="nonlinear")
class ResRMN(Mixer):
    """ResRMN mixer: x (B, T, D) -> h (B, T, D) (d_model nonlinear units); state m (B, memory_units), h (B, D).

    memory_units: the linear memory's size (default d_model); orthogonal: O's kind; alpha, beta, rho: as DeepResESN;
    input_scaling: W_x; memory_input_scaling: V_in; memory_scaling: W_m; bias_scaling: b; backend: "recurrent"
    (memory without a loop, input terms hoisted) or "reference" (both updates token by token)."""

    def __init__(self, d_model: int, memory_units: int | None = None, orthogonal: str = "identity", alpha: float = 1.0,
                 beta: float = 1.0, rho: float = 1.0, input_scaling: float = 1.0, memory_input_scaling: float = 1.0,
                 memory_scaling: float = 1.0, bias_scaling: float = 0.0, exact_radius: bool = True, backend: str = "recurrent"):
        super().__init__(d_model)
        self.backend = check_form(backend, BACKENDS, "res_rmn")
        if orthogonal not in ORTHOGONAL:
            raise ValueError(f"res_rmn orthogonal must be one of {ORTHOGONAL}, got {orthogonal!r}")
        N, M = d_model, memory_units or d_model
        self.memory_units, self.orthogonal, self.alpha, self.beta = M, orthogonal, alpha, beta
        self.register_buffer("V_in", uniform((M, d_model), memory_input_scaling))
        self.register_buffer("W_in", torch.cat([uniform((N, d_model), input_scaling), uniform((N, M), memory_scaling)], 1))  # [W_x | W_m]
        self.register_buffer("W", spectral_rescale(uniform((N, N), 1.0), rho, exact_radius))
        self.register_buffer("bias", uniform(N, bias_scaling))
        self.register_buffer("O", orthogonal_matrix(N, orthogonal))

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        f = dtype or torch.float32
        return {"m": torch.zeros(batch_size, self.memory_units, device=device, dtype=f),
                "h": torch.zeros(batch_size, self.d_model, device=device, dtype=f)}

    def state_size(self, seq_len: int) -> int:
        return self.memory_units + self.d_model

    def _run(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        f = torch.float64 if self.W.dtype == torch.float64 else torch.float32
        xf = x.to(f)
        memory, reservoir = (cyclic_memory, residual_reservoir) if form == "recurrent" else (cyclic_memory_ref, residual_reservoir_ref)
        m, mT = memory(xf, self.V_in.to(f), None, state["m"].to(f))
        h, hT = reservoir(torch.cat([xf, m], -1), self.W_in.to(f), self.W.to(f), self.bias.to(f), self.O.to(f), self.alpha,
                          self.beta, state["h"].to(f))
        return h.to(x.dtype), {"m": mT, "h": hT}

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self._run(x, state, self.backend)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One token; on CPU without autograd, in the arrays' dtype, the whole token in the fused decode kernel
        (rnnlab.ops.decode) with [W_in | W] concatenated and O's kind (identity, cycle or dense) found once per update."""
        buffers = (self.V_in, self.W_in, self.W, self.bias, self.O)
        if decode.usable(x, state["m"], state["h"], *buffers, float64=True):
            w_cat, o_kind = param_derived(self, "_decode_params", decode_weights, *buffers[1:3], self.O)
            out, (m, h) = decode.fused_step("res_rmn_decode", self, x, [state["m"], state["h"]],
                                            [self.V_in, w_cat, self.bias, self.O], self.d_model,
                                            [x.shape[-1] + self.memory_units + self.d_model], self.alpha, self.beta, o_kind)
            return out, {"m": m, "h": h}
        return self._run(x, state, "recurrent")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, memory_units={self.memory_units}, O={self.orthogonal}, alpha={self.alpha}, beta={self.beta}"

