"""Closed-form continuous-time cells, CfC (Hasani, Lechner, Amini, Liebenwein, Ray, Tschaikowski, Teschl & Rus 2022,
"Closed-form continuous-time neural networks", Nature Machine Intelligence, eq. 10 and Methods):

    z = lecun_tanh(W [x_t, h_{t−1}] + b)                       (the shared backbone; lecun_tanh(u) = 1.7159 tanh(0.666 u))
    f = W_f z + b_f,  g = tanh(W_g z + b_g),  h̃ = tanh(W_h z + b_h)            (three heads)
    h_t = σ(−f ⊙ t) ⊙ g + (1 − σ(−f ⊙ t)) ⊙ h̃                   (eq. 10; t = the time elapsed, dt, 1 per token)

``gate="code"``: the authors' implementation's time gate σ(t_a ⊙ t + t_b) with two heads t_a, t_b in place of −f
(h_t = (1 − σ) ⊙ ff1 + σ ⊙ ff2; the paper's form is t_b = 0, t_a = −f).

    x (B, T, D), dt (B, T) or None, weight (U, D + H) over [x, h], bias (U,), head_weight (K·H, U) rows [f; g; h̃]
    (gate "paper", K = 3) or [ff1; ff2; t_a; t_b] (gate "code", K = 4), head_bias (K·H,) -> (h (B, T, H), h_T (B, H))

Forms, one signature: ``cfc_ref`` (the cell as written, one token at a time: the specification) and ``cfc`` (the
backbone's input columns for all tokens in one matmul before the loop, the heads as one matmul per token).
"""
from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.ops.varlen import varlen

__all__ = ["cfc", "cfc_ref", "GATES", "lecun_tanh"]

GATES = ("paper", "code")


def lecun_tanh(u: Tensor) -> Tensor:
    """1.7159 tanh(0.666 u) (LeCun et al. 1998), the CfC backbone's activation."""
    return 1.7159 * torch.tanh(0.666 * u)


def _heads(z: Tensor, head_weight: Tensor, head_bias: Tensor, t: Tensor | float, gate: str) -> Tensor:
    """The three (four) heads on the backbone's output z (B, U) and the time-gated mix -> h (B, H)."""
    heads = torch.addmm(head_bias, z, head_weight.T)
    if gate == "paper":
        f, g, h = heads.chunk(3, -1)
        s = torch.sigmoid(-f * t)
        return s * torch.tanh(g) + (1 - s) * torch.tanh(h)
    ff1, ff2, ta, tb = heads.chunk(4, -1)
    s = torch.sigmoid(ta * t + tb)
    return (1 - s) * torch.tanh(ff1) + s * torch.tanh(ff2)


def _times(x: Tensor, dt: Tensor | None) -> list:
    return [1.0] * x.shape[1] if dt is None else list(dt.to(x.dtype)[..., None].unbind(1))


def _check(gate: str) -> None:
    if gate not in GATES:
        raise ValueError(f"cfc gate must be one of {GATES}, got {gate!r}")


@varlen(("x", "dt"), final=None)
def cfc_ref(x: Tensor, dt: Tensor | None, weight: Tensor, bias: Tensor, head_weight: Tensor, head_bias: Tensor,
            gate: str = "paper", initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The CfC cell one token at a time (module docstring)."""
    _check(gate)
    H = weight.shape[1] - x.shape[2]
    h = x.new_zeros(x.shape[0], H) if initial_state is None else initial_state
    hs = []
    for xt, t in zip(x.unbind(1), _times(x, dt)):
        z = lecun_tanh(torch.cat([xt, h], -1) @ weight.T + bias)
        h = _heads(z, head_weight, head_bias, t, gate)
        hs.append(h)
    return torch.stack(hs, 1), h


@varlen(("x", "dt"), final=None)
def cfc(x: Tensor, dt: Tensor | None, weight: Tensor, bias: Tensor, head_weight: Tensor, head_bias: Tensor,
        gate: str = "paper", initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`cfc_ref` with the backbone's input share hoisted out of the loop."""
    _check(gate)
    D = x.shape[2]
    H = weight.shape[1] - D
    h = x.new_zeros(x.shape[0], H) if initial_state is None else initial_state
    gx = torch.addmm(bias, x.flatten(0, 1), weight[:, :D].T).view(*x.shape[:2], -1).unbind(1)
    w_h = weight[:, D:].T
    hs = []
    for gxt, t in zip(gx, _times(x, dt)):
        h = _heads(lecun_tanh(torch.addmm(gxt, h, w_h)), head_weight, head_bias, t, gate)
        hs.append(h)
    return torch.stack(hs, 1), h
