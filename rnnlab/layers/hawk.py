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

Options for recurrentgemma's checkpoints (``rnnlab.interop``): ``gate_blocks`` = n makes W_a and W_x
block-diagonal with n blocks (recurrentgemma's per-head gates; 1 = dense, the default above), and
``reset_first_token`` lets the first token of every sequence enter the state unscaled, h_0 = i_0 ⊙ x_0
(recurrentgemma's reset at ``segment_pos == 0``, where eq. 4 would scale it by sqrt(1 − a_0²)); it keeps each
row's position in the state ("pos", (B,) int64).
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import ShortConv, fused_linear, param_derived, positions
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.chunk import acc_dtype, cast
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


class BlockDiagonalLinear(nn.Module):
    """x (..., n·w) -> (..., n·w): block j maps x[..., j·w:(j+1)·w] by weight[j] (w, w) (out, in), plus a bias;
    recurrentgemma's BlockDiagonalLinear (its per-head RG-LRU gates). ``in_features`` as nn.Linear, for the init."""

    def __init__(self, d_in: int, d_out: int, blocks: int):
        super().__init__()
        if d_in != d_out or d_in % blocks:
            raise ValueError(f"BlockDiagonalLinear needs d_in == d_out divisible by blocks, got {d_in}, {d_out}, {blocks}")
        self.blocks, self.in_features = blocks, d_in // blocks
        self.weight = nn.Parameter(torch.empty(blocks, d_in // blocks, d_in // blocks))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: Tensor) -> Tensor:
        xb = rearrange(x, "... (n w) -> ... n w", n=self.blocks)
        return rearrange(torch.einsum("...ni,noi->...no", xb, self.weight.to(x.dtype)), "... n w -> ... (n w)") + self.bias.to(x.dtype)


def _linear32(lin: nn.Module, x: Tensor) -> Tensor:
    """A gate projection (nn.Linear or BlockDiagonalLinear) in x's dtype (float32, or float64 for a float64 module),
    whatever the parameters' dtype."""
    if isinstance(lin, nn.Linear):
        return F.linear(x, cast(lin.weight, x.dtype), cast(lin.bias, x.dtype))
    return lin(x)  # BlockDiagonalLinear computes in x's dtype


def _needs_grad(x: Tensor, *params: Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))


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
        gate_blocks: int = 1,
        reset_first_token: bool = False,
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
        if Dr % gate_blocks:
            raise ValueError(f"Hawk: d_rnn = {Dr} must be divisible by gate_blocks={gate_blocks}")
        self.reset_first_token = reset_first_token
        gate = nn.Linear if gate_blocks == 1 else partial(BlockDiagonalLinear, blocks=gate_blocks)
        self.gate_a = gate(Dr, Dr)
        self.gate_x = gate(Dr, Dr)
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
        state = {
            "conv": self.conv.init_state(batch_size, device, dtype or torch.float32),
            "h": torch.zeros(batch_size, self.d_rnn, device=device, dtype=dtype or torch.float32),
        }
        if self.reset_first_token:
            state["pos"] = torch.zeros(batch_size, device=device, dtype=torch.int64)
        return state

    def state_size(self, seq_len: int) -> int:
        return self.conv.state_size() + self.d_rnn + int(self.reset_first_token)

    def log_a(self, r: Tensor) -> Tensor:
        """r (..., D_rnn) recurrence gate -> log a_t = c r_t log sigmoid(Lambda) (<= 0)."""
        acc = acc_dtype(r)
        if _needs_grad(r, self.Lambda):
            return -self.c * r * F.softplus(-self.Lambda.to(acc))
        # without autograd (decode, prefill) softplus(-Lambda) is a constant of the parameters: computed once
        return -self.c * r * param_derived(self, f"_softplus_neg_lambda_{acc}", lambda lam: F.softplus(-lam.to(acc)), self.Lambda)

    def _coeffs(self, x: Tensor, state: State) -> tuple[Tensor, Tensor, Tensor, State]:
        """x (B, T, D) -> a, b (B, T, D_rnn) float32, gate branch (B, T, D_rnn), the new state less h."""
        y, xr = fused_linear(x, [self.linear_y, self.linear_x])
        gate = F.gelu(y, approximate="tanh")
        xc, conv_state = self.conv(xr, cast(state["conv"], x.dtype))
        xf = cast(xc, acc_dtype(xc))  # float32 (float64 in a float64 module: the dtype policy)
        if isinstance(self.gate_a, nn.Linear) and self.gate_a.weight.dtype == xf.dtype:  # one matmul without autograd
            r, i = fused_linear(xf, [self.gate_a, self.gate_x])
            r, i = torch.sigmoid(r), torch.sigmoid(i)
        else:
            r, i = torch.sigmoid(_linear32(self.gate_a, xf)), torch.sigmoid(_linear32(self.gate_x, xf))
        log_a = self.log_a(r)
        # sqrt(1 - a²); its bounded derivative matters only under autograd (the Function's call costs more than the op)
        one_minus_a2 = -torch.expm1(2 * log_a)
        scale = _SqrtBoundDerivative.apply(one_minus_a2) if _needs_grad(one_minus_a2) else torch.sqrt(one_minus_a2)
        new = {"conv": cast(conv_state, xf.dtype)}
        if self.reset_first_token:  # a sequence's first token: h_0 = i_0 x_0 (a_0 = 0, no sqrt(1 - a_0^2))
            first = (positions(state["pos"], x.shape[1]) == 0)[..., None]
            scale, log_a = scale.masked_fill(first, 1.0), log_a.masked_fill(first, float("-inf"))
            new["pos"] = state["pos"] + x.shape[1]
        return log_a.exp(), scale * (i * xf), gate, new

    def _out(self, h: Tensor, gate: Tensor) -> Tensor:
        return self.linear_out(cast(h, gate.dtype) * gate)

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        a, b, gate, new = self._coeffs(x, state)
        h, h_last = linear_scan(a, b, cast(state["h"], a.dtype), backend=self.backend)
        return self._out(h, gate), {**new, "h": h_last}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One token; on CPU without autograd the block between its projections in the fused decode kernel
        (rnnlab.ops.decode)."""
        if decode.usable(x, state["conv"], state["h"], self.Lambda, float64=True, max_batch=4):  # gates row by row
            return self._decode(x, state)
        a, b, gate, new = self._coeffs(x, state)
        h = a[:, 0] * cast(state["h"], a.dtype) + b[:, 0]  # not addcmul: its fused multiply-add rounds otherwise
        return self._out(h.unsqueeze(1), gate), {**new, "h": h}

    def _decode(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        R = self.d_rnn
        # the gates as (nb, w, w) blocks (a dense gate: one block) and softplus(−Λ), kept while the parameters are unchanged
        wa, wx, sp = param_derived(self, "_decode_gates", lambda a, b, lam: (
            *(w if w.dim() == 3 else w.view(1, R, R) for w in (a, b)), F.softplus(-lam)), self.gate_a.weight, self.gate_x.weight, self.Lambda)
        keys = ["conv", "h"] + ["pos"] * self.reset_first_token
        pos = state["pos"] if self.reset_first_token else state["h"].new_zeros(x.shape[0], dtype=torch.int64)
        out, new = decode.fused_step(
            "hawk_decode", self, fused_linear(x, [self.linear_y, self.linear_x], whole=True), [state["conv"], state["h"], pos],
            [self.conv.weight, self.conv.bias, wa, wx, self.gate_a.bias, self.gate_x.bias, sp],
            R, [R], self.c, self.reset_first_token)
        return decode.linear(self.linear_out, out), dict(zip(keys, new))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_rnn={self.d_rnn}, c={self.c}, backend={self.backend!r}, "
                f"gate_blocks={getattr(self.gate_a, 'blocks', 1)}, reset_first_token={self.reset_first_token}")
