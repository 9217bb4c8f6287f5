"""DeepResESN, the Deep Residual Echo State Network (Pinna, Ceni & Gallicchio 2025, "Deep Residual Echo State
Networks: exploring residual orthogonal connections in untrained Recurrent Neural Networks", arXiv 2508.21172):
a stack of untrained residual reservoirs, layer l driven by the states of layer l − 1,

    h_t^(1) = α O h_{t−1}^(1) + β tanh(W_in^(1) x_t + W^(1) h_{t−1}^(1) + b^(1))
    h_t^(l) = α O h_{t−1}^(l) + β tanh(W_in^(l) h_t^(l−1) + W^(l) h_{t−1}^(l) + b^(l)),   l = 2, …, L

with O orthogonal: "random" (R), "cycle" (C) or "identity" (I); W U(−1, 1) rescaled to spectral radius ρ, W_in
U(−ω, ω) (ω = ``input_scaling`` for the first layer, ``inter_scaling`` for the deeper ones), b U(−ω_b, ω_b). Every
weight is a buffer: nothing here is trained; the readout is fitted in closed form (ModelConfig readout="ridge",
rnnlab.models.reservoir). Output: the layers' states concatenated (the DeepESN readout), the d_model units split
evenly across the layers (the first takes the remainder), as the authors' ``concat`` mode; concat=False gives every
layer d_model units and outputs the last layer's states. Defaults are the authors' (α = β = 1, ρ = 0.9, ω = 1,
no bias, random O). The spectral radius is set exactly (the paper's definition); the authors' code uses the
circular-law approximation, ``exact_radius=False``. Inputs narrower than d_model (a model's raw features, zero-padded
by rnnlab.models.reservoir) leave W_in's extra columns unused.
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
from rnnlab.ops.reservoir import (ORTHOGONAL, decode_weights, residual_reservoir, residual_reservoir_ref, spectral_rescale,
                                  uniform)

__all__ = ["DeepResESN"]
BACKENDS = ("recurrent", "reference")  # rnnlab.ops.forms


@register_mixer("deep_res_esn", family="nonlinear")
class DeepResESN(Mixer):
    """DeepResESN mixer: x (B, T, D) -> the layers' states (B, T, D) (concat) ; state h (B, D) (the same units).

    layers: L; orthogonal: O's kind; alpha, beta: the residual and nonlinear branches' scalings; rho: W's spectral
    radius; input_scaling / inter_scaling: W_in's range for the first / deeper layers; bias_scaling: b's range;
    concat: split the units across layers and output them all (else d_model units per layer, the last one out);
    exact_radius: eigenvalue rescaling (else the circular law); backend: "recurrent" or "reference"."""

    def __init__(self, d_model: int, layers: int = 2, orthogonal: str = "random", alpha: float = 1.0, beta: float = 1.0,
                 rho: float = 0.9, input_scaling: float = 1.0, inter_scaling: float = 1.0, bias_scaling: float = 0.0,
                 concat: bool = True, exact_radius: bool = True, backend: str = "recurrent"):
        super().__init__(d_model)
        self.backend = check_form(backend, BACKENDS, "deep_res_esn")
        if orthogonal not in ORTHOGONAL:
            raise ValueError(f"deep_res_esn orthogonal must be one of {ORTHOGONAL}, got {orthogonal!r}")
        if concat and layers > d_model:
            raise ValueError(f"deep_res_esn: concat splits d_model = {d_model} units across layers = {layers}: need layers <= d_model")
        self.layers, self.concat, self.alpha, self.beta = layers, concat, alpha, beta
        self.units = [d_model // layers + (d_model % layers if i == 0 else 0) for i in range(layers)] if concat else [d_model] * layers
        fan_in = d_model
        for i, n in enumerate(self.units):
            self.register_buffer(f"W_in{i}", uniform((n, fan_in), input_scaling if i == 0 else inter_scaling))
            self.register_buffer(f"W{i}", spectral_rescale(uniform((n, n), 1.0), rho, exact_radius))
            self.register_buffer(f"bias{i}", uniform(n, bias_scaling))
            self.register_buffer(f"O{i}", orthogonal_matrix(n, orthogonal))
            fan_in = n
        self.orthogonal = orthogonal

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"h": torch.zeros(batch_size, sum(self.units), device=device, dtype=dtype or torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return sum(self.units)

    def _run(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        f = torch.float64 if self.W0.dtype == torch.float64 else torch.float32
        op = residual_reservoir if form == "recurrent" else residual_reservoir_ref
        u, outs, finals = x.to(f), [], []
        for i, h0 in enumerate(state["h"].to(f).split(self.units, -1)):
            w = [getattr(self, f"{n}{i}").to(f) for n in ("W_in", "W", "bias", "O")]
            u, hT = op(u, *w, self.alpha, self.beta, h0)
            outs.append(u)
            finals.append(hT)
        y = torch.cat(outs, -1) if self.concat else outs[-1]
        return y.to(x.dtype), {"h": torch.cat(finals, -1)}

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self._run(x, state, self.backend)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One token; on CPU without autograd, in the buffers' dtype, each layer's update in the fused decode kernel
        (rnnlab.ops.decode), [W_in | W] and O's kind found once per update."""
        names = [f"{n}{i}" for i in range(self.layers) for n in ("W_in", "W", "bias", "O")]
        buffers = [getattr(self, n) for n in names]
        if not decode.usable(x, state["h"], *buffers, float64=True):
            return self._run(x, state, "recurrent")
        packed = param_derived(self, "_decode_params", lambda *b: [decode_weights(*b[i:i + 2], b[i + 3]) for i in range(0, len(b), 4)],
                               *buffers)
        u, outs, finals = x, [], []
        for i, (h0, (w_cat, kind)) in enumerate(zip(state["h"].split(self.units, -1), packed)):
            u, (h,) = decode.fused_step("reservoir_decode", self, u, [h0], [w_cat, buffers[4 * i + 2], buffers[4 * i + 3]], self.units[i],
                                        [u.shape[-1] + self.units[i]], self.alpha, self.beta, kind)
            outs.append(u)
            finals.append(h)
        return (torch.cat(outs, -1) if self.concat else u), {"h": torch.cat(finals, -1)}

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, layers={self.layers} x {self.units[-1]} units, O={self.orthogonal}, alpha={self.alpha}, "
                f"beta={self.beta}, concat={self.concat}")
