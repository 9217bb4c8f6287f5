"""RWKV-4 WKV: per-channel exponentially decayed attention with a bonus for the current token.

    k, v (B, T, C); w, u (C,); state (B, 3, C) = [num, den, max]  ->  o (B, T, C)

Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era", eq. (14):

    wkv_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
          / (sum_{i<t} e^{(t-1-i) w + k_i}     + e^{u + k_t})

Here ``w`` is the per-channel *log* decay per step, w <= 0 (the paper writes e^{-(t-1-i) w}
with w >= 0; RWKV-4's code passes ``w = -exp(time_decay)`` to its kernel, which is what
this op takes). The recurrent form (the RWKV-4 CUDA kernel, eq. (16)-(17) in recurrent
form) keeps the numerator and denominator divided by e^{p}, p a running maximum exponent:

    p_t = max(p_{t-1} + w, k_t),
    num_t = e^{p_{t-1} + w - p_t} num_{t-1} + e^{k_t - p_t} v_t,   den_t likewise with v = 1.

The state is (num, den, p) per channel, float32; the empty state is (0, 0, -1e38).

Forms (same signature; tests check values and gradients against each other):

- ``wkv4_ref``: the specification, a loop over t (unbind once, stack once).
- ``wkv4``: parallel. (1) The max-plus recurrence p_t = max(p_{t-1} + w, k_t) is solved for
  its *source* index j (p_t = k_j + (t - j) w, j = 0 meaning the initial p_0) by a chunked
  two-level scan without autograd, and p_t is then recomputed from j with autograd (so its
  gradient is exactly the loop's).  (2) With p known, num and den are an element-wise linear
  recurrence with a_t = e^{p_{t-1} + w - p_t} <= 1 and b_t = e^{k_t - p_t} (v_t, 1) of size
  <= |v|: both go through one ``linear_scan`` call (numba kernel on CPU, hand-written
  backward).  (3) The bonus term uses its own stabiliser q_t = max(p_{t-1}, u + k_t), detached:
  the output does not depend on q mathematically, so its gradient is exact without it.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from rnnlab.ops.forms import check_form
from rnnlab.ops.scan import BACKENDS, linear_scan
from rnnlab.ops.varlen import varlen

__all__ = ["wkv4", "wkv4_ref", "EMPTY_MAX"]

EMPTY_MAX = -1e38  # p of the empty state: e^{p} = 0 without -inf arithmetic


def _check(k: Tensor, v: Tensor, w: Tensor, u: Tensor, initial_state: Tensor | None) -> None:
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"wkv4 expects k, v of shape (B, T, C), got {tuple(k.shape)} and {tuple(v.shape)}")
    B, T, C = k.shape
    if T == 0:
        raise ValueError("wkv4 expects T >= 1")
    if w.shape != (C,) or u.shape != (C,):
        raise ValueError(f"wkv4 expects w and u of shape (C,) = ({C},), got {tuple(w.shape)} and {tuple(u.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (B, 3, C):
        raise ValueError(f"wkv4 expects initial_state of shape (B, 3, C) = {(B, 3, C)} [num, den, max], got {tuple(initial_state.shape)}")
    for name, t in (("k", k), ("v", v), ("w", w), ("u", u)):
        if not t.is_floating_point():
            raise ValueError(f"wkv4 expects floating-point {name}, got {t.dtype}")


def _compute_dtype(k: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (bf16, fp16, fp32) is computed in float32."""
    return torch.float64 if k.dtype == torch.float64 else torch.float32


def _initial(k: Tensor, initial_state: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    B, _, C = k.shape
    cdt = _compute_dtype(k)
    if initial_state is None:
        z = k.new_zeros(B, C, dtype=cdt)
        return z, z, torch.full_like(z, EMPTY_MAX)
    aa, bb, pp = initial_state.to(cdt).unbind(1)
    return aa, bb, pp


@varlen(("k", "v"))
def wkv4_ref(
    k: Tensor, v: Tensor, w: Tensor, u: Tensor, initial_state: Tensor | None = None, output_final_state: bool = False
) -> tuple[Tensor, Tensor | None]:
    """k, v (B, T, C); w (C,) log decay (<= 0); u (C,) bonus; initial_state (B, 3, C) [num, den, max]
    -> (o (B, T, C) in k's dtype, final_state (B, 3, C) float32 (float64 for float64 k) or None).

    The RWKV-4 recurrence (the official kernel's arithmetic), one step per token."""
    _check(k, v, w, u, initial_state)
    aa, bb, pp = _initial(k, initial_state)
    cdt = _compute_dtype(k)
    wf, uf = w.to(cdt), u.to(cdt)
    outs = []
    for kt, vt in zip(k.to(cdt).unbind(1), v.to(cdt).unbind(1)):
        ww = uf + kt
        q = torch.maximum(pp, ww)
        e1, e2 = torch.exp(pp - q), torch.exp(ww - q)
        outs.append((e1 * aa + e2 * vt) / (e1 * bb + e2))
        ww = pp + wf
        p = torch.maximum(ww, kt)
        e1, e2 = torch.exp(ww - p), torch.exp(kt - p)
        aa, bb, pp = e1 * aa + e2 * vt, e1 * bb + e2, p
    o = torch.stack(outs, 1).to(k.dtype)
    return o, (torch.stack([aa, bb, pp], 1) if output_final_state else None)


@torch.no_grad()
def _running_max_source(p0: Tensor, k: Tensor, w: Tensor) -> Tensor:
    """p0 (B, C), k (B, T, C), w (C,) -> src (B, T, C) int64 in [0, T]: the index j with
    p_t = kx_j + (t - j) w for p_t = max(p_{t-1} + w, k_t), where kx = [p0, k_1..k_T].

    Chunked two-level scan: inside chunks of length L ~ sqrt(T) all chunks advance together
    (L vectorized steps), then the carries cross the chunks (T/L steps)."""
    B, T, C = k.shape
    L = max(1, math.isqrt(T - 1) + 1) if T > 1 else 1
    nc = -(-T // L)
    val = k.new_full((B, nc * L, C), -math.inf)
    val[:, :T] = k
    val = val.view(B, nc, L, C)
    pos = torch.arange(1, nc * L + 1, device=k.device).view(1, nc, L, 1)
    src = pos.expand(B, nc, L, C).clone()
    for i in range(1, L):  # within-chunk max-plus scan, all chunks together
        cand = val[:, :, i - 1] + w
        take = cand > val[:, :, i]
        val[:, :, i] = torch.where(take, cand, val[:, :, i])
        src[:, :, i] = torch.where(take, src[:, :, i - 1], src[:, :, i])
    cv, cs = p0, torch.zeros(B, C, dtype=torch.long, device=k.device)
    carries_v, carries_s = [], []
    for c in range(nc):  # carry (value, source) of p entering chunk c
        carries_v.append(cv)
        carries_s.append(cs)
        cand = cv + L * w
        take = cand > val[:, c, L - 1]
        cv, cs = torch.where(take, cand, val[:, c, L - 1]), torch.where(take, cs, src[:, c, L - 1])
    steps = torch.arange(1, L + 1, device=k.device, dtype=k.dtype).view(1, 1, L, 1)
    cand = torch.stack(carries_v, 1).unsqueeze(2) + steps * w  # (B, nc, L, C)
    src = torch.where(cand > val, torch.stack(carries_s, 1).unsqueeze(2), src)
    return src.view(B, nc * L, C)[:, :T]


@varlen(("k", "v"))
def wkv4(
    k: Tensor,
    v: Tensor,
    w: Tensor,
    u: Tensor,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor | None]:
    """k, v (B, T, C); w (C,) log decay (<= 0); u (C,) bonus; initial_state (B, 3, C) [num, den, max]
    -> (o (B, T, C) in k's dtype, final_state (B, 3, C) float32 (float64 for float64 k) or None).

    Parallel form (see the module docstring). ``backend`` is passed to ``linear_scan``
    ("auto", "kernel", "chunk"); "reference" runs :func:`wkv4_ref`."""
    backend = check_form(backend, BACKENDS, "wkv4")
    if backend == "reference":
        return wkv4_ref(k, v, w, u, initial_state, output_final_state)
    _check(k, v, w, u, initial_state)
    B, T, C = k.shape
    aa0, bb0, p0 = _initial(k, initial_state)
    cdt = _compute_dtype(k)
    kf, vf, wf, uf = k.to(cdt), v.to(cdt), w.to(cdt), u.to(cdt)
    # (1) running maximum exponent, differentiable through the source index
    src = _running_max_source(p0.detach(), kf.detach(), wf.detach())  # (B, T, C)
    kx = torch.cat([p0.unsqueeze(1), kf], 1)  # (B, T+1, C): position 0 is the initial state
    t = torch.arange(1, T + 1, device=k.device).view(1, T, 1)
    p = kx.gather(1, src) + (t - src).to(cdt) * wf  # (B, T, C)
    p_prev = torch.cat([p0.unsqueeze(1), p[:, :-1]], 1)
    # (2) num/den scaled by e^{-p}: one element-wise linear recurrence
    a = torch.exp(p_prev + wf - p).unsqueeze(2)  # (B, T, 1, C), <= 1
    e = torch.exp(kf - p)
    s, s_last = linear_scan(a, torch.stack([e * vf, e], 2), torch.stack([aa0, bb0], 1), backend=backend)  # (B, T, 2, C)
    s_prev = torch.cat([torch.stack([aa0, bb0], 1).unsqueeze(1), s[:, :-1]], 1)
    # (3) output with the bonus u for the current token
    ww = uf + kf
    q = torch.maximum(p_prev, ww).detach()
    e1, e2 = torch.exp(p_prev - q), torch.exp(ww - q)
    o = (e1 * s_prev[:, :, 0] + e2 * vf) / (e1 * s_prev[:, :, 1] + e2)
    final = torch.cat([s_last, p[:, -1:]], 1) if output_final_state else None
    return o.to(k.dtype), final
