"""HiPPO-RNN (Gu, Dao, Ermon, Rudra & Ré 2020, "HiPPO: Recurrent Memory with Optimal Polynomial Projections",
§2.4 Figure 2): a gated RNN whose memory c_t is the HiPPO projection of a linear feature of its hidden state.

    h_t = τ(h_{t−1}, [c_{t−1}, x_t])    τ(h, z) = (1 − g) ⊙ h + g ⊙ tanh(W_τ [h, z] + b_τ),  g = σ(W_g [h, z] + b_g)
    f_t = W_f h_t + b_f ∈ R^M,  c_t = Ā_t c_{t−1} + B̄_t f_t   (HiPPO-LegS by default: no timescale to choose)
    y_t = h_t

The math is rnnlab.ops.hippo_rnn (the cell) and rnnlab.ops.hippo (the memory update, LegS / LegT / LagT with
forward / backward / bilinear / ZOH; the paper uses bilinear for LegS). Irregular sampling: ``dt`` (B, T) advances
LegS's clock by the time elapsed (the authors' timestamped LegS cell), and LegT / LagT's ODE by dt/theta.
The authors' code orders the cell differently (the memory reads [x_t, h_{t−1}] before the hidden update, which
reads [x_t, c_t] without h); the paper's order is used here. Weights: Xavier-uniform, biases zero.
State: h (B, H), c (B, M, N), t (B,) the clock (tokens of time seen).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode, hippo
from rnnlab.ops.forms import check_form
from rnnlab.ops.hippo_rnn import decode_terms, hippo_rnn, hippo_rnn_ref

__all__ = ["HiPPORNN"]
BACKENDS = ("recurrent", "reference")  # rnnlab.ops.forms


@register_mixer("hippo_rnn", family="nonlinear", small={"memory_order": 8})
class HiPPORNN(Mixer):
    """HiPPO-RNN mixer: x (B, T, D) -> h (B, T, D), hidden size D; optional dt (B, T).

    memory_order: N; memory_size: M features memorized; measure / method: the HiPPO memory (rnnlab.ops.hippo);
    theta: LegT's window / LagT's timescale in tokens (LegS ignores it); backend: "recurrent" (input projections
    hoisted) or "reference" (the cell as written)."""

    takes_dt = True

    def __init__(self, d_model: int, memory_order: int = 64, memory_size: int = 1, measure: str = "legs",
                 method: str = "bilinear", theta: float = 100.0, backend: str = "recurrent"):
        super().__init__(d_model)
        self.backend = check_form(backend, BACKENDS, "hippo_rnn")
        if measure not in hippo.MEASURES or method not in hippo.METHODS:
            raise ValueError(f"hippo_rnn: measure must be one of {hippo.MEASURES} and method one of {hippo.METHODS}, "
                             f"got {measure!r}, {method!r}")
        if theta <= 0:
            raise ValueError(f"hippo_rnn: theta must be > 0, got {theta}")
        H, M, N = d_model, memory_size, memory_order
        self.N, self.M, self.measure, self.method, self.theta = N, M, measure, method, theta
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(2 * H, H + M * N + H)))  # [W_τ; W_g] over [h, c, x]
        self.bias = nn.Parameter(torch.zeros(2 * H))
        self.weight_f = nn.Parameter(nn.init.xavier_uniform_(torch.empty(M, H)))
        self.bias_f = nn.Parameter(torch.zeros(M))

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        f = dtype or torch.float32
        return {"h": torch.zeros(batch_size, self.d_model, device=device, dtype=f),
                "c": torch.zeros(batch_size, self.M, self.N, device=device, dtype=f),
                "t": torch.zeros(batch_size, device=device, dtype=f)}

    def state_size(self, seq_len: int) -> int:
        return self.d_model + self.M * self.N + 1

    def _run(self, x: Tensor, state: State, dt: Tensor | None, form: str) -> tuple[Tensor, State]:
        f = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        op = hippo_rnn if form == "recurrent" else hippo_rnn_ref
        params = (p.to(f) for p in (self.weight, self.bias, self.weight_f, self.bias_f))
        h, (hT, c, t) = op(x.to(f), dt, *params, self.N, self.measure, self.method, 1.0 / self.theta,
                           (state["h"].to(f), state["c"].to(f), state["t"].to(f)))
        return h.to(x.dtype), {"h": hT, "c": c, "t": t}

    def parallel(self, x: Tensor, state: State, dt: Tensor | None = None) -> tuple[Tensor, State]:
        return self._run(x, state, dt, self.backend)

    def step(self, x: Tensor, state: State, dt: Tensor | None = None) -> tuple[Tensor, State]:
        """One token; on CPU without autograd (the bilinear-family updates of LegS and LagT, whose A is lower
        triangular) the whole cell in the fused decode kernel (rnnlab.ops.decode)."""
        params = (self.weight, self.bias, self.weight_f, self.bias_f)
        if decode.usable(x, *state.values(), *params, *([] if dt is None else [dt]), float64=True):
            terms = decode_terms(self.measure, self.method, self.N, x.dtype, x.device)
            if terms is not None:
                A, B, alpha = terms
                out, (h, c, t) = decode.fused_step(
                    "hippo_rnn_decode", self, [x, x if dt is None else dt], [state["h"], state["c"], state["t"]], [*params, A, B],
                    self.d_model, [self.d_model + self.M * self.N + x.shape[-1], 2 * self.d_model, self.M, self.N], dt is not None,
                    alpha, self.measure == "legs", 1.0 / self.theta)
                return out, {"h": h, "c": c, "t": t}
        return self._run(x, state, dt, "recurrent")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, memory={self.M}x{self.N} {self.measure}/{self.method}, backend={self.backend}"
