"""Hawk: Griffin's recurrent block with the RG-LRU (De et al. 2024, "Griffin: Mixing Gated
Linear Recurrences with Local Attention for Efficient Language Models", Sec. 2.3-2.4, Fig. 2).

    x (B, T, D) -> y (B, T, D);  state {"conv": (B, W-1, D_rnn), "h": (B, D_rnn)} float32

Recurrent block (Sec. 2.3): two branches of width D_rnn = round(expansion * D)
    gate branch:       GeLU(Linear_y(x))
    recurrent branch:  Linear_x(x) -> Conv1D (temporal width W = 4) -> RG-LRU
    y = Linear_out(gate ⊙ recurrent)

RG-LRU (Sec. 2.4, eqs. 1-4), on the conv output x_t:
    r_t = sigmoid(W_a x_t + b_a)                     recurrence gate   (1)
    i_t = sigmoid(W_x x_t + b_x)                     input gate        (2)
    a_t = a^{c r_t},  a = sigmoid(Lambda),  c = 8    computed as log a_t = -c r_t softplus(-Lambda)   (3)
    h_t = a_t ⊙ h_{t-1} + sqrt(1 - a_t^2) ⊙ (i_t ⊙ x_t)                                            (4)

Lambda is initialised so that a^c is uniform in [0.9, 0.999], as the paper's text says (Sec. 2.4).
(recurrentgemma's ``rnn_param_init`` instead draws a = sigmoid(Lambda) with a^2 uniform in
[0.9^2, 0.999^2], i.e. a^c in about [0.43, 0.99]; pass a_min=0.9**8, a_max=0.999**8 for a similar range.)  sqrt(1 - a_t^2) is
computed as sqrt(-expm1(2 log a_t)) with its derivative bounded (max 1000), as in the authors'
recurrentgemma code.  Simplifications: the gate weights W_a, W_x are dense D_rnn x D_rnn
(recurrentgemma uses block-diagonal per-head weights); no reset of the state at document
boundaries (recurrentgemma's ``segment_pos``); GeLU is the tanh approximation (recurrentgemma's).
Training runs the recurrence through ``rnnlab.ops.scan.linear_scan``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import ShortConv
from rnnlab.layers.registry import register_mixer
from rnnlab.ops.forms import check_form
from rnnlab.ops.scan import BACKENDS, linear_scan

MAX_SQRT_GRADIENT = 1000.0


class _SqrtBoundDerivative(torch.autograd.Function):
    """sqrt(x) whose derivative is capped at MAX_SQRT_GRADIENT (finite at x = 0)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.sqrt(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return g / torch.sqrt(torch.clamp(4 * x, min=1 / MAX_SQRT_GRADIENT**2))


@register_mixer("hawk", family="diagonal", small={"expansion": 1.0})
class Hawk(Mixer):
    """Griffin's recurrent block: GeLU gate branch ⊙ (Linear -> Conv1D -> RG-LRU), then Linear."""

    def __init__(
        self,
        d_model: int,
        expansion: float = 4 / 3,
        conv_size: int = 4,
        c: float = 8.0,
        a_min: float = 0.9,
        a_max: float = 0.999,
        backend: str = "auto",
    ):
        super().__init__(d_model)
        if not 0.0 < a_min < a_max < 1.0:
            raise ValueError(f"Hawk needs 0 < a_min < a_max < 1 (range of a^c at init), got {a_min}, {a_max}")
        backend = check_form(backend, BACKENDS, "hawk")
        Dr = max(1, int(round(expansion * d_model)))
        self.d_rnn, self.c, self.backend = Dr, float(c), backend
        self.linear_y = nn.Linear(d_model, Dr)
        self.linear_x = nn.Linear(d_model, Dr)
        self.conv = ShortConv(Dr, conv_size, bias=True, activation=None)
        self.gate_a = nn.Linear(Dr, Dr)
        self.gate_x = nn.Linear(Dr, Dr)
        self.linear_out = nn.Linear(Dr, d_model)
        # LeCun-normal weights, zero biases (recurrentgemma's initialisers)
        for lin in (self.linear_y, self.linear_x, self.gate_a, self.gate_x, self.linear_out):
            nn.init.normal_(lin.weight, std=1 / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
        # a^c ~ U[a_min, a_max]  =>  a = s^(1/c),  Lambda = logit(a)
        s = torch.empty(Dr, dtype=torch.float64).uniform_(a_min, a_max)
        a = s ** (1 / self.c)
        self.Lambda = nn.Parameter((torch.log(a) - torch.log1p(-a)).float())
        no_weight_decay(self.Lambda)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {
            "conv": self.conv.init_state(batch_size, device, dtype or torch.float32),
            "h": torch.zeros(batch_size, self.d_rnn, device=device, dtype=dtype or torch.float32),
        }

    def state_size(self, seq_len: int) -> int:
        return self.conv.state_size() + self.d_rnn

    def log_a(self, r: Tensor) -> Tensor:
        """r (..., D_rnn) recurrence gate -> log a_t = c r_t log sigmoid(Lambda) (<= 0)."""
        return -self.c * r * F.softplus(-self.Lambda.float())

    def _coeffs(self, x: Tensor, conv_state: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (B, T, D) -> a, b (B, T, D_rnn) float32, gate branch (B, T, D_rnn), new conv state."""
        gate = F.gelu(self.linear_y(x), approximate="tanh")
        xc, conv_state = self.conv(self.linear_x(x), conv_state)
        xf = xc.float()
        r = torch.sigmoid(F.linear(xf, self.gate_a.weight.float(), self.gate_a.bias.float()))
        i = torch.sigmoid(F.linear(xf, self.gate_x.weight.float(), self.gate_x.bias.float()))
        log_a = self.log_a(r)
        b = _SqrtBoundDerivative.apply(-torch.expm1(2 * log_a)) * (i * xf)
        return log_a.exp(), b, gate, conv_state

    def _out(self, h: Tensor, gate: Tensor) -> Tensor:
        return self.linear_out(h.to(gate.dtype) * gate)

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        a, b, gate, conv_state = self._coeffs(x, state["conv"].to(x.dtype))
        h, h_last = linear_scan(a, b, state["h"].float(), backend=self.backend)
        return self._out(h, gate), {"conv": conv_state.float(), "h": h_last}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        a, b, gate, conv_state = self._coeffs(x, state["conv"].to(x.dtype))
        h = a[:, 0] * state["h"].float() + b[:, 0]
        return self._out(h.unsqueeze(1), gate), {"conv": conv_state.float(), "h": h}

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_rnn={self.d_rnn}, c={self.c}, backend={self.backend!r}"
