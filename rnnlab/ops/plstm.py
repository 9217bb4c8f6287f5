"""pLSTM's Source-Transition-Mark linear recurrence on a sequence (Pöppel et al. 2025, "pLSTM: parallelizable
Linear Source Transition Mark networks", Sec. 3: the line-graph recurrence on the chain graph), per head:

    C_t = T_t C_{t-1} + S_t k_t v_tᵀ                              C (K, V); S_t, T_t scalars (source, transition)
    y_t = M_t scale q_tᵀ C_{t-1} + D_t scale (q_t · k_t) v_t      M_t: mark (reads the past), D_t: direct (now)

    q, k (B, T, H, K), v (B, T, H, V), S, T, M, D (B, T, H), initial_state C_0 (B, H, K, V)
    -> (y (B, T, H, V), C_T (B, H, K, V))

On a chain every node has one incoming and one outgoing edge, so the gates are scalars per head (the authors'
code's default state-tracking dims J = 1) and the transition T_t may be signed (P-mode: |T_t| <= 1; see
rnnlab/layers/plstm.py). The mark reads the state *before* the token and the token itself enters through the
direct gate: the path s -> t carries M_t T_{t-1} ··· T_{s+1} S_s (the authors' gating matrix G).

Forms (one signature; rnnlab.ops.forms):

- ``reference`` (``plstm_ref``): the loop above, differentiated by autograd step by step: the specification.
- ``chunk`` / ``recurrent``: the same numbers through the gated-linear-attention core (rnnlab.ops.gla,
  ``chunk_simple_gla`` / ``fused_recurrent_simple_gla``), whose decays must be positive. A signed scalar
  transition is absorbed into q and k: with ε_t = sign(T_1) ··· sign(T_t), the state C̃_t = ε_t C_t has the
  positive decay |T_t| and the key ε_t S_t k_t; the core's state includes the current token, so keys, values and
  decays enter shifted by one step (Ĉ_t = C̃_{t-1}), and the output reads Ĉ_t with the query ε_{t-1} M_t q_t.
  The final state is C_T = T_T ε_{T-1} Ĉ_T + S_T k_T v_Tᵀ. Autograd differentiates the absorption (sign is
  piecewise constant; |T| is the log-decay's argument). A transition exactly 0 gives the right values (the
log-decay is floored) but no gradient for that T (log 0): a measure-zero event for the tanh transitions.

Inputs in bfloat16/float16 are computed in float32 (float64 stays float64); y has v's dtype, C_T the compute dtype.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnlab.ops.chunk import acc_dtype
from rnnlab.ops.forms import check_form
from rnnlab.ops.gla import chunk_simple_gla, fused_recurrent_simple_gla
from rnnlab.ops.varlen import varlen

__all__ = ["plstm", "plstm_ref", "BACKENDS"]

BACKENDS = ("auto", "chunk", "recurrent", "reference")  # rnnlab.ops.forms


def check_inputs(q, k, v, gates: dict, axes: tuple[str, ...], who: str) -> None:
    """The 1-D and 2-D forms' common checks: q, k (B, *axes, H, K) and v (B, *axes, H, V) alike; every gate
    (B, *axes, H, *tail) for ``gates = {name: (tensor, tail)}``; at least one position along each axis."""
    lead = ", ".join(("B", *axes, "H"))
    if q.dim() != len(axes) + 3 or k.shape != q.shape or v.dim() != q.dim() or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"{who}: q, k must be ({lead}, K) and v ({lead}, V) alike, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    grid = tuple(q.shape[:-1])
    for name, (g, tail) in gates.items():
        if tuple(g.shape) != grid + tail:
            raise ValueError(f"{who}: gate {name} must be ({lead}{''.join(f', {n}' for n in tail)}) = {grid + tail}, "
                             f"got {tuple(g.shape)}")
    if 0 in q.shape[1:-2]:
        raise ValueError(f"{who}: expects {', '.join(axes)} >= 1, got {tuple(q.shape[1:-2])}")


def promoted(q, k, v, S, T, M, D) -> list[Tensor]:
    """The inputs in their common accumulation dtype (acc_dtype of each, promoted)."""
    dt = acc_dtype(v)
    for t in (q, k, S, T, M, D):
        dt = torch.promote_types(dt, acc_dtype(t))
    return [t.to(dt) for t in (q, k, v, S, T, M, D)]


def _check(q, k, v, S, T, M, D, h0, who: str) -> None:
    check_inputs(q, k, v, {name: (g, ()) for name, g in zip("STMD", (S, T, M, D))}, ("T",), who)
    want = (q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    if h0 is not None and tuple(h0.shape) != want:
        raise ValueError(f"{who}: initial_state must be (B, H, K, V) = {want}, got {tuple(h0.shape)}")


def _prepare(q, k, v, S, T, M, D, h0):
    inputs = promoted(q, k, v, S, T, M, D)
    dt = inputs[0].dtype
    C0 = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3], dtype=dt) if h0 is None else h0.to(dt)
    return inputs, C0


@varlen(("q", "k", "v", "S", "T", "M", "D"), final=None)
def plstm_ref(q: Tensor, k: Tensor, v: Tensor, S: Tensor, T: Tensor, M: Tensor, D: Tensor, initial_state: Tensor | None = None,
              scale: float | None = None) -> tuple[Tensor, Tensor]:
    """q, k (B, T, H, K), v (B, T, H, V), S, T, M, D (B, T, H), initial_state (B, H, K, V) or None
    -> (y (B, T, H, V), C_T (B, H, K, V)): the loop of the module doc, step by step (the specification)."""
    _check(q, k, v, S, T, M, D, initial_state, "plstm_ref")
    out_dtype = v.dtype
    (q, k, v, S, T, M, D), C = _prepare(q, k, v, S, T, M, D, initial_state)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    ys = []
    for t in range(q.shape[1]):
        qt, kt, vt = q[:, t], k[:, t], v[:, t]
        past = torch.einsum("bhk,bhkv->bhv", qt, C)
        ys.append(scale * (M[:, t, :, None] * past + D[:, t, :, None] * (qt * kt).sum(-1, keepdim=True) * vt))
        C = T[:, t, :, None, None] * C + S[:, t, :, None, None] * kt[..., :, None] * vt[..., None, :]
    return torch.stack(ys, 1).to(out_dtype), C


def _shift(x: Tensor) -> Tensor:
    """x (B, T, ...) -> [0, x_1, ..., x_{T-1}] along time."""
    return F.pad(x[:, :-1], (0, 0) * (x.dim() - 2) + (1, 0))


@varlen(("q", "k", "v", "S", "T", "M", "D"), final=None)
def plstm(q: Tensor, k: Tensor, v: Tensor, S: Tensor, T: Tensor, M: Tensor, D: Tensor, initial_state: Tensor | None = None,
          scale: float | None = None, backend: str = "auto", chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """q, k (B, T, H, K), v (B, T, H, V), S, T, M, D (B, T, H), initial_state (B, H, K, V) or None (zeros)
    -> (y (B, T, H, V), C_T (B, H, K, V)). backend: "auto" (= "chunk"), "chunk", "recurrent", "reference"
    (module doc); scale None = K^-1/2; chunk_size: the GLA core's chunk (<= 16 or a multiple of 16)."""
    form = check_form(backend, BACKENDS, "plstm")
    if form == "reference":
        return plstm_ref(q, k, v, S, T, M, D, initial_state, scale)
    _check(q, k, v, S, T, M, D, initial_state, "plstm")
    out_dtype = v.dtype
    (q, k, v, S, T, M, D), C0 = _prepare(q, k, v, S, T, M, D, initial_state)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    sign = torch.where(T < 0, -1.0, 1.0).to(T.dtype)
    eps = torch.cumprod(sign, 1)  # ε_t (B, T, H)
    eps_prev = _shift(eps) + F.pad(torch.ones_like(eps[:, :1]), (0, 0, 0, eps.shape[1] - 1))  # ε_{t-1}, ε_0 = 1
    log_decay = _shift(torch.log(T.abs().clamp_min(torch.finfo(T.dtype).tiny)))
    keys = _shift((eps * S)[..., None] * k)
    queries = (scale * eps_prev * M)[..., None] * q
    op = fused_recurrent_simple_gla if form == "recurrent" else partial(chunk_simple_gla, chunk_size=chunk_size)
    past, C_hat = op(queries, keys, _shift(v), log_decay, scale=1.0, initial_state=C0, output_final_state=True)
    now = (scale * D * (q * k).sum(-1))[..., None] * v
    C_T = (T[:, -1] * eps_prev[:, -1])[..., None, None] * C_hat.to(C0.dtype) \
        + S[:, -1, :, None, None] * k[:, -1, :, :, None] * v[:, -1, :, None, :]
    return (past.to(now.dtype) + now).to(out_dtype), C_T
