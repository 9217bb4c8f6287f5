"""CfC, closed-form continuous-time network (Hasani, Lechner, Amini, Liebenwein, Ray, Tschaikowski, Teschl & Rus 2022,
"Closed-form continuous-time neural networks", Nature Machine Intelligence): the LTC's ODE replaced by an
approximate closed-form solution, a time-gated mix of two heads (eq. 10),

    h_t = σ(−f(x_t, h_{t−1}) ⊙ t) ⊙ g(x_t, h_{t−1}) + (1 − σ(−f ⊙ t)) ⊙ h̃(x_t, h_{t−1}),

f, g, h̃ heads on a shared backbone lecun_tanh(W [x, h] + b) (rnnlab.ops.cfc has the equations), t the time elapsed
since the previous token (``dt``, 1 per token without it). One backbone layer of ``backbone_units`` units (the
authors' default 128); ``gate="code"`` uses their implementation's σ(t_a t + t_b) gate (four heads). Weights
Xavier-uniform (the authors' init), biases torch.nn.Linear's default. Hidden size = d_model, output h_t.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.registry import register_mixer
from rnnlab.ops.cfc import GATES, cfc, cfc_ref
from rnnlab.ops.forms import check_form

__all__ = ["CfC"]
BACKENDS = ("recurrent", "reference")  # rnnlab.ops.forms


def _linear(d_out: int, d_in: int) -> tuple[nn.Parameter, nn.Parameter]:
    bound = 1 / math.sqrt(d_in)
    return nn.Parameter(nn.init.xavier_uniform_(torch.empty(d_out, d_in))), nn.Parameter(torch.empty(d_out).uniform_(-bound, bound))


@register_mixer("cfc", family="nonlinear", small={"backbone_units": 16})
class CfC(Mixer):
    """CfC mixer: x (B, T, D) -> h (B, T, D); optional dt (B, T); state h (B, D).

    backbone_units: U; gate: "paper" (σ(−f t), eq. 10) or "code" (σ(t_a t + t_b)); backend: "recurrent" (the
    backbone's input share hoisted) or "reference" (the cell as written)."""

    takes_dt = True

    def __init__(self, d_model: int, backbone_units: int = 128, gate: str = "paper", backend: str = "recurrent"):
        super().__init__(d_model)
        self.backend = check_form(backend, BACKENDS, "cfc")
        if gate not in GATES:
            raise ValueError(f"cfc gate must be one of {GATES}, got {gate!r}")
        self.gate, self.backbone_units = gate, backbone_units
        D = H = d_model
        self.weight, self.bias = _linear(backbone_units, D + H)
        heads = [_linear(H, backbone_units) for _ in range(3 if gate == "paper" else 4)]
        self.head_weight = nn.Parameter(torch.cat([w for w, _ in heads]))
        self.head_bias = nn.Parameter(torch.cat([b for _, b in heads]))

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"h": torch.zeros(batch_size, self.d_model, device=device, dtype=dtype or torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return self.d_model

    def _run(self, x: Tensor, state: State, dt: Tensor | None, form: str) -> tuple[Tensor, State]:
        f = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        op = cfc if form == "recurrent" else cfc_ref
        h, hT = op(x.to(f), dt, *(p.to(f) for p in (self.weight, self.bias, self.head_weight, self.head_bias)), self.gate,
                   state["h"].to(f))
        return h.to(x.dtype), {"h": hT}

    def parallel(self, x: Tensor, state: State, dt: Tensor | None = None) -> tuple[Tensor, State]:
        return self._run(x, state, dt, self.backend)

    def step(self, x: Tensor, state: State, dt: Tensor | None = None) -> tuple[Tensor, State]:
        return self._run(x, state, dt, "recurrent")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, backbone_units={self.backbone_units}, gate={self.gate}, backend={self.backend}"
