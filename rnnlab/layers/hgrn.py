"""HGRN, the Hierarchically Gated Recurrent Network (Qin et al. 2023, "Hierarchically Gated
Recurrent Neural Network for Sequence Modeling", NeurIPS; Sec. 3.1, the HGRU token mixer).

    x (B, T, D) -> y (B, T, D);  state {"h": (B, D, 2)} float32 (real and imaginary part of h)

    c_t = SiLU(x_t W_cr + b_cr) + i SiLU(x_t W_ci + b_ci)      complex input
    mu_t = sigmoid(x_t W_mu + b_mu),  f_t = gamma + (1 - gamma) mu_t   forget gate with lower bound gamma
    lambda_t = f_t exp(i theta)                                 theta learnable, data-independent
    h_t = lambda_t ⊙ h_{t-1} + (1 - f_t) ⊙ c_t                 input gate tied to the forget gate
    g_t = SiLU(x_t W_g + b_g),  y_t = LayerNorm(g_t ⊙ [Re h_t, Im h_t]) W_o + b_o   output gate

theta starts at 10000^(-2j/D) as in the authors' hgru-pytorch code.  The lower bound: in the
paper gamma^k is learned per layer and channel as a cumulative softmax over the layers,
gamma^k = sum_{j=1..k} softmax_j(P) (so it increases with depth and is exactly 0 in the first
layer); P starts at ones, i.e. gamma^k = k / n_layers.  A mixer does not see the other layers, so
here each mixer learns its own floor per channel, gamma = sigmoid(lower_bound_logit), initialized
at ``lower_bound`` (``hgrn_lower_bounds(n_layers)[k]`` is the paper's initial schedule; pass it
per layer through the model's per-layer ``mixer_kwargs``); ``lower_bound=0`` is the paper's first
layer, gamma = 0 fixed.  Simplification: the floors of different layers are learned independently
(the cumulative softmax that keeps them increasing with depth couples the layers of a model).
Training runs the complex diagonal recurrence through ``rnnlab.ops.scan.linear_scan``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import fused_linear, param_derived
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.forms import check_form
from rnnlab.ops.scan import BACKENDS, linear_scan

__all__ = ["HGRN", "hgrn_lower_bounds"]


def hgrn_lower_bounds(n_layers: int) -> list[float]:
    """The paper's initial per-layer lower bounds: cumsum(softmax(ones)) minus the first = k / n_layers."""
    return [k / n_layers for k in range(n_layers)]


@register_mixer("hgrn", family="diagonal", small={"lower_bound": 0.5})
class HGRN(Mixer):
    """HGRU with complex diagonal state of size D; ``lower_bound``: initial forget-gate floor gamma in [0, 1)
    (learned per channel when > 0, fixed at 0 otherwise)."""

    def __init__(self, d_model: int, lower_bound: float = 0.0, backend: str = "auto"):
        super().__init__(d_model)
        if not (isinstance(lower_bound, (int, float)) and 0.0 <= lower_bound < 1.0):
            raise ValueError(f"lower_bound must be a float in [0, 1), got {lower_bound!r}")
        backend = check_form(backend, BACKENDS, "hgrn")
        D = d_model
        self.lower_bound, self.backend = float(lower_bound), backend
        self.input_proj = nn.Linear(D, 2 * D)  # real | imaginary part of c_t
        self.forget_proj = nn.Linear(D, D)  # mu_t
        self.theta = nn.Parameter(10000 ** (-2 / D * torch.arange(D, dtype=torch.float32)))
        self.gate_proj = nn.Linear(D, 2 * D)
        self.norm = nn.LayerNorm(2 * D)
        self.out_proj = nn.Linear(2 * D, D)
        self.lower_bound_logit = None
        if lower_bound > 0:
            self.lower_bound_logit = nn.Parameter(torch.full((D,), math.log(lower_bound / (1 - lower_bound))))
            no_weight_decay(self.lower_bound_logit)

    def floor(self) -> Tensor | float:
        """gamma (D,) float32 in (0, 1), or 0.0 for the first-layer setting lower_bound=0."""
        return 0.0 if self.lower_bound_logit is None else torch.sigmoid(self.lower_bound_logit.float())

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"h": torch.zeros(batch_size, self.d_model, 2, device=device, dtype=dtype or torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return 2 * self.d_model

    def _coeffs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> lambda_t, (1 - f_t) c_t, both (B, T, D) complex64."""
        c_re, c_im = F.silu(decode.linear(self.input_proj, x).float()).chunk(2, dim=-1)
        gamma = self.floor()
        f = gamma + (1 - gamma) * torch.sigmoid(decode.linear(self.forget_proj, x).float())
        theta = self.theta.float()
        lam = torch.complex(f * torch.cos(theta), f * torch.sin(theta))
        return lam, torch.complex((1 - f) * c_re, (1 - f) * c_im)

    def _out(self, h: Tensor, x: Tensor) -> Tensor:
        g = F.silu(decode.linear(self.gate_proj, x).float())
        o = F.layer_norm(g * torch.cat([h.real, h.imag], -1), (2 * self.d_model,), self.norm.weight.float(), self.norm.bias.float(), self.norm.eps)
        return decode.linear(self.out_proj, o.to(x.dtype))

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        lam, b = self._coeffs(x)
        h, h_last = linear_scan(lam, b, torch.view_as_complex(state["h"].float().contiguous()), backend=self.backend)
        return self._out(h, x), {"h": torch.view_as_real(h_last).contiguous()}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One token; on CPU without autograd the three input projections as one call and the gates, the complex
        update and the gated LayerNorm in the fused decode kernel (rnnlab.ops.decode), γ, cos θ, sin θ derived once
        per parameter update."""
        if decode.usable(x, state["h"], *self.parameters()):
            proj = fused_linear(x, [self.input_proj, self.forget_proj, self.gate_proj], whole=True)
            consts = param_derived(self, "_decode_params", lambda theta, *_: (
                torch.zeros_like(theta) + self.floor(), torch.cos(theta), torch.sin(theta)), self.theta,
                *([] if self.lower_bound_logit is None else [self.lower_bound_logit]))
            out, (h,) = decode.fused_step("hgrn_decode", self, proj, [state["h"]], [*consts, self.norm.weight, self.norm.bias],
                                          2 * self.d_model, [], self.norm.eps)
            return decode.linear(self.out_proj, out), {"h": h}
        lam, b = self._coeffs(x)
        h = lam[:, 0] * torch.view_as_complex(state["h"].float().contiguous()) + b[:, 0]
        return self._out(h.unsqueeze(1), x), {"h": torch.view_as_real(h).contiguous()}

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, lower_bound={self.lower_bound}, backend={self.backend!r}"
