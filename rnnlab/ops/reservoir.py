"""Untrained reservoirs with temporal residual connections: the state updates of Residual ESNs (Ceni & Gallicchio
2024), Deep Residual ESNs (Pinna, Ceni & Gallicchio 2025, arXiv 2508.21172) and Residual Reservoir Memory Networks
(Pinna, Ceni & Gallicchio 2025, IJCNN, arXiv 2508.09925), and the weight initializations they share.

    residual reservoir:  h_t = α O h_{t−1} + β tanh(W_in x_t + W h_{t−1} + b)       O orthogonal (random / cycle / identity)
    linear memory:       m_t = C m_{t−1} + V_in x_t (+ b_m)                          C the cyclic shift (spectral radius 1)

    x (B, T, I), weights (N, I), (N, N), (N,) -> (h (B, T, N), h_T (B, N))

Forms, one signature each:
- ``residual_reservoir_ref`` (the update as written, one token at a time: the specification) and ``residual_reservoir``
  (W_in x + b for all tokens in one matmul, then one (N, 2N) matmul per token for [α O; W] h: the same arithmetic,
  fewer ops);
- ``cyclic_memory_ref`` (the loop) and ``cyclic_memory``, which has no loop at all: C^k is a rotation by k, so
  m_t = C^{t+1} m_0 + Σ_{s≤t} C^{t−s} u_s = roll(m_0 + Σ_{s≤t} roll(u_s, −(s+1)), t+1) — rotate each input back by its
  time, one cumulative sum over time, rotate forward (O(T N) elementwise).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from rnnlab.ops.varlen import varlen

__all__ = ["ORTHOGONAL", "orthogonal", "cycle", "uniform", "spectral_rescale", "residual_reservoir", "residual_reservoir_ref",
           "cyclic_memory", "cyclic_memory_ref", "decode_weights"]

ORTHOGONAL = ("random", "cycle", "identity")  # the papers' R, C, I


def cycle(n: int) -> Tensor:
    """The cyclic shift C (n, n): (C v)_i = v_{i−1 mod n} (ones on the subdiagonal and in the top-right corner)."""
    return torch.roll(torch.eye(n), 1, 0)


def orthogonal(n: int, kind: str, generator: torch.Generator | None = None) -> Tensor:
    """O (n, n) of the temporal residual branch: "random" (the Q of a QR decomposition of U(−1, 1) entries, as the
    authors), "cycle" (:func:`cycle`) or "identity"."""
    if kind not in ORTHOGONAL:
        raise ValueError(f"orthogonal must be one of {ORTHOGONAL}, got {kind!r}")
    if kind == "random":
        q, _ = torch.linalg.qr(2 * torch.rand(n, n, generator=generator, dtype=torch.float64) - 1)
        return q.float()
    return cycle(n) if kind == "cycle" else torch.eye(n)


def uniform(shape, scale: float, generator: torch.Generator | None = None) -> Tensor:
    """Entries U(−scale, scale): the input matrices (scaled by the input scaling) and the bias (by the bias scaling)."""
    return (2 * torch.rand(shape, generator=generator) - 1) * scale


def spectral_rescale(W: Tensor, rho: float, exact: bool = True) -> Tensor:
    """W (n, n) scaled to spectral radius rho: exactly (the largest eigenvalue modulus, the papers' definition) or by the
    circular law for U(−1, 1) entries, W·rho·√3/√n (the authors' code, approximate for small n)."""
    if not exact:
        return W * (rho * math.sqrt(3) / math.sqrt(W.shape[0]))
    radius = torch.linalg.eigvals(W.double()).abs().max()
    return (W.double() * (rho / radius)).to(W.dtype)


def _check(x: Tensor, W_in: Tensor, W: Tensor) -> None:
    if x.shape[-1] != W_in.shape[1] or W_in.shape[0] != W.shape[0]:
        raise ValueError(f"reservoir: x (B, T, {W_in.shape[1]}) and W_in ({W.shape[0]}, {W_in.shape[1]}) expected, "
                         f"got x {tuple(x.shape)}, W_in {tuple(W_in.shape)}, W {tuple(W.shape)}")


@varlen(("x",), final=None)
def residual_reservoir_ref(x: Tensor, W_in: Tensor, W: Tensor, bias: Tensor, O: Tensor, alpha: float, beta: float,
                           initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """h_t = α O h_{t−1} + β tanh(W_in x_t + W h_{t−1} + b), one token at a time (module docstring)."""
    _check(x, W_in, W)
    h = x.new_zeros(x.shape[0], W.shape[0]) if initial_state is None else initial_state
    hs = []
    for xt in x.unbind(1):
        h = alpha * h @ O.T + beta * torch.tanh(xt @ W_in.T + h @ W.T + bias)
        hs.append(h)
    return torch.stack(hs, 1), h


@varlen(("x",), final=None)
def residual_reservoir(x: Tensor, W_in: Tensor, W: Tensor, bias: Tensor, O: Tensor, alpha: float, beta: float,
                       initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`residual_reservoir_ref` with the input term hoisted and [α O; W] h as one matmul per token."""
    _check(x, W_in, W)
    N = W.shape[0]
    h = x.new_zeros(x.shape[0], N) if initial_state is None else initial_state
    u = torch.addmm(bias, x.flatten(0, 1), W_in.T).view(*x.shape[:2], N).unbind(1)
    R = torch.cat([alpha * O, W], 0).T  # (N, 2N): h @ R = [α O h, W h]
    hs = []
    for ut in u:
        res, rec = (h @ R).split(N, -1)
        h = res + beta * torch.tanh(ut + rec)
        hs.append(h)
    return torch.stack(hs, 1), h


@varlen(("x",), final=None)
def cyclic_memory_ref(x: Tensor, V_in: Tensor, bias: Tensor | None = None, initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """m_t = C m_{t−1} + V_in x_t (+ b), C the cyclic shift: x (B, T, I), V_in (M, I) -> (m (B, T, M), m_T (B, M))."""
    m = x.new_zeros(x.shape[0], V_in.shape[0]) if initial_state is None else initial_state
    ms = []
    for xt in x.unbind(1):
        m = torch.roll(m, 1, -1) + xt @ V_in.T + (0 if bias is None else bias)
        ms.append(m)
    return torch.stack(ms, 1), m


@varlen(("x",), final=None)
def cyclic_memory(x: Tensor, V_in: Tensor, bias: Tensor | None = None, initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`cyclic_memory_ref` without a loop: rotate each input back by its time, cumulative sum, rotate forward."""
    B, T, _ = x.shape
    M = V_in.shape[0]
    u = x @ V_in.T + (0 if bias is None else bias)  # (B, T, M)
    t = torch.arange(T, device=x.device)
    idx = (torch.arange(M, device=x.device)[None, :] + (t[:, None] + 1)) % M  # (T, M): roll by −(t+1)
    back = torch.gather(u, 2, idx.expand(B, T, M))
    if initial_state is not None:
        back = torch.cat([initial_state[:, None], back], 1)
    s = back.cumsum(1)[:, -T:]
    fwd = (torch.arange(M, device=x.device)[None, :] - (t[:, None] + 1)) % M  # roll by +(t+1)
    m = torch.gather(s, 2, fwd.expand(B, T, M))
    return m, m[:, -1]


def decode_weights(W_in: Tensor, W: Tensor, O: Tensor) -> tuple[Tensor, int]:
    """A reservoir's weights for the decode kernels (rnnlab.ops.decode): [W_in | W] (N, I + N) and O's kind, 0 the
    identity, 1 the cyclic shift, 2 any other (applied as a shift or not at all instead of an N x N product)."""
    N = O.shape[0]
    kind = 0 if torch.equal(O, torch.eye(N, dtype=O.dtype)) else 1 if torch.equal(O, cycle(N).to(O.dtype)) else 2
    return torch.cat([W_in, W], 1).contiguous(), kind
