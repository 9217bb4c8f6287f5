"""The HiPPO-RNN cell (Gu, Dao, Ermon, Rudra & Ré 2020, §2.4 / Figure 2, App. D.2 "HiPPO-RNN"): a gated RNN whose
memory is the online HiPPO projection of a feature of its own hidden state.

    z_t = [h_{t−1}, c_{t−1}, x_t]                 c_{t−1} (M, N) flattened: M memory features of order N
    g_t = σ(W_g z_t + b_g),  h̃_t = tanh(W_τ z_t + b_τ),  h_t = (1 − g_t) ⊙ h_{t−1} + g_t ⊙ h̃_t   (the gated update τ)
    f_t = W_f h_t + b_f                           (M scalars: L_f)
    c_t = Ā_t c_{t−1} + B̄_t f_t                   (rnnlab.ops.hippo.step: LegS with its clock t, or LegT / LagT)

    x (B, T, D), dt (B, T) or None (1 per token) -> (h (B, T, H), final state (h_T (B, H), c_T (B, M, N), t_T (B,)))

``weight`` (2H, H + M·N + D) holds [W_τ; W_g] over the columns [h, c, x]; ``weight_f`` (M, H). The time unit of
LegT / LagT is ``scale`` (a token of dt = 1 advances their ODE by ``scale``: LegT's window is 1/scale tokens);
LegS has none (its clock t counts the time in tokens). Forms, one signature:

- ``hippo_rnn_ref``: the cell as written, one token at a time (the specification);
- ``hippo_rnn``: the x-columns of W_τ, W_g for all tokens in one matmul before the loop, the step on [h, c] only.
The memory update is hippo.step in both (per-row triangular solves, O(N²) per feature for LegS / LagT).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from rnnlab.ops import hippo
from rnnlab.ops.varlen import varlen

__all__ = ["hippo_rnn", "hippo_rnn_ref", "decode_terms"]

State = tuple[Tensor, Tensor, Tensor]


@functools.lru_cache(maxsize=16)
def _transition(measure: str, N: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """hippo.transition in the cell's dtype, built once (a decode token would rebuild it every call); shared, read-only.
    Built outside inference mode, so that a training call may save it for backward."""
    with torch.inference_mode(False), torch.no_grad():
        return tuple(t.to(device=device, dtype=dtype) for t in hippo.transition(measure, N))


def decode_terms(measure: str, method: str, N: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, float] | None:
    """(A, B, α) for the fused decode token (``_decode_numba.hippo_rnn_decode``: the bilinear family's update by forward
    substitution), or None where it does not apply (ZOH; LegT, whose A is not lower triangular)."""
    if method == "zoh" or measure == "legt":
        return None
    return (*_transition(measure, N, dtype, device), hippo.GBT_ALPHA[method])


def _init(x: Tensor, weight_f: Tensor, N: int, initial_state: State | None) -> State:
    B, H, M = x.shape[0], weight_f.shape[1], weight_f.shape[0]
    if initial_state is None:
        return x.new_zeros(B, H), x.new_zeros(B, M, N), x.new_zeros(B)
    return initial_state


def _memory(c: Tensor, h: Tensor, t: Tensor, dt_t: Tensor | None, weight_f: Tensor, bias_f: Tensor, A: Tensor, B: Tensor,
            measure: str, method: str, scale: float) -> tuple[Tensor, Tensor]:
    """f = W_f h + b_f, then the HiPPO step; the clock t advances by dt (1 without dt)."""
    step = torch.ones_like(t) if dt_t is None else dt_t.to(t.dtype)
    t = t + step
    f = h @ weight_f.T + bias_f
    return hippo.step(c, f, A, B, measure, method, t, step if measure == "legs" else step * scale), t


def _gate(pre: Tensor, h: Tensor) -> Tensor:
    cand, g = pre.chunk(2, -1)
    g = torch.sigmoid(g)
    return (1 - g) * h + g * torch.tanh(cand)


def _scan(x: Tensor, dt: Tensor | None, pre, weight_f: Tensor, bias_f: Tensor, N: int, measure: str, method: str, scale: float,
          initial_state: State | None) -> tuple[Tensor, State]:
    """The cell's loop; ``pre(k, h, c)`` is token k's pre-activation [W_τ; W_g][h, c, x_k] + b (2H): the only thing
    the two forms compute differently."""
    A, B = _transition(measure, N, x.dtype, x.device)
    h, c, t = _init(x, weight_f, N, initial_state)
    hs = []
    dts = dt.unbind(1) if dt is not None else [None] * x.shape[1]
    for k, dtk in enumerate(dts):
        h = _gate(pre(k, h, c), h)
        c, t = _memory(c, h, t, dtk, weight_f, bias_f, A, B, measure, method, scale)
        hs.append(h)
    return torch.stack(hs, 1), (h, c, t)


@varlen(("x", "dt"), final=None)
def hippo_rnn_ref(x: Tensor, dt: Tensor | None, weight: Tensor, bias: Tensor, weight_f: Tensor, bias_f: Tensor, N: int,
                  measure: str = "legs", method: str = "bilinear", scale: float = 1.0,
                  initial_state: State | None = None) -> tuple[Tensor, State]:
    """The HiPPO-RNN cell one token at a time (module docstring): the specification of :func:`hippo_rnn`."""
    xs = x.unbind(1)
    return _scan(x, dt, lambda k, h, c: torch.cat([h, c.flatten(1), xs[k]], -1) @ weight.T + bias, weight_f, bias_f, N,
                 measure, method, scale, initial_state)


@varlen(("x", "dt"), final=None)
def hippo_rnn(x: Tensor, dt: Tensor | None, weight: Tensor, bias: Tensor, weight_f: Tensor, bias_f: Tensor, N: int,
              measure: str = "legs", method: str = "bilinear", scale: float = 1.0,
              initial_state: State | None = None) -> tuple[Tensor, State]:
    """The same cell with the input's share of W_τ, W_g hoisted out of the loop (one matmul over all tokens)."""
    rec = weight_f.shape[1] + weight_f.shape[0] * N  # the [h, c] columns
    w_rec, w_x = weight[:, :rec], weight[:, rec:]
    gx = torch.addmm(bias, x.flatten(0, 1), w_x.T).view(*x.shape[:2], -1).unbind(1)  # (B, 2H) per token
    return _scan(x, dt, lambda k, h, c: torch.addmm(gx[k], torch.cat([h, c.flatten(1)], -1), w_rec.T), weight_f, bias_f, N,
                 measure, method, scale, initial_state)
