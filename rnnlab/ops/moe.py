"""Mixture of experts: top-k routing, gated-MLP experts, the load-balancing loss.

    x (N, D), router logits (N, E), expert weights w13 (E, D, 2H), w2 (E, H, D) -> y (N, D)

Routing (``route``): p = softmax(logits) over the E experts, the k largest kept; ``normalize`` divides them by their
sum (Mixtral's top-k softmax: softmax over the k chosen logits is the same thing), else they are used as they are
(Switch, Jamba's modeling code). Each chosen expert is a gated MLP, e(x) = (act(x W1) ⊙ x W3) W2 (SwiGLU with
act = SiLU, GeGLU with GeLU), and y = Σ_j w_j · e_{i_j}(x). Every token is served by all its k experts (no capacity,
no dropped tokens), so a token's output depends on that token only.

Forms, one signature (tested against each other, values and gradients):

- ``experts_ref``: the specification, one token and one of its experts at a time.
- ``experts_grouped``: the (token, expert) pairs sorted by expert (a stable sort: deterministic), one matmul pair per
  expert over its tokens, the results put back in the pairs' order and summed over k in order.

``load_balancing_loss``: Switch Transformer's auxiliary loss (Fedus et al. 2021, eq. 4-6), E · Σ_i f_i P_i, f_i the
fraction of the N·k routing slots that chose expert i, P_i the mean router probability of expert i. It is 1 when both
are uniform; f carries no gradient. HF's ``load_balancing_loss_func`` (Mixtral, Jamba) counts f_i over tokens
(summing to k), so its value is k times this one: its ``router_aux_loss_coef`` c is c · k here.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ACTIVATIONS", "route", "glu", "experts_ref", "experts_grouped", "load_balancing_loss"]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"silu": F.silu, "gelu": partial(F.gelu, approximate="tanh")}


def route(logits: Tensor, top_k: int, normalize: bool) -> tuple[Tensor, Tensor, Tensor]:
    """logits (N, E) -> (weights (N, k) in the logits' dtype, experts (N, k) int64, probabilities (N, E) float32 or
    wider). The softmax runs in float32 at least (a bfloat16 router ranks its experts from float32 probabilities)."""
    if not isinstance(top_k, int) or not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"top_k must be an int in [1, num_experts = {logits.shape[-1]}], got {top_k!r}")
    probs = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    weights, experts = probs.topk(top_k, -1)
    if normalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights.to(logits.dtype), experts, probs


def glu(x: Tensor, w13: Tensor, w2: Tensor, act: Callable[[Tensor], Tensor]) -> Tensor:
    """One gated-MLP expert: x (n, D), w13 (D, 2H) = [W1 | W3], w2 (H, D) -> (act(x W1) ⊙ x W3) W2 (n, D)."""
    a, b = (x @ w13).chunk(2, -1)
    return (act(a) * b) @ w2


def _check(x, experts, weights, w13, w2):
    N, D = x.shape
    E, H2 = w13.shape[0], w13.shape[-1]
    if x.dim() != 2 or experts.shape != weights.shape or experts.dim() != 2 or experts.shape[0] != N:
        raise ValueError(f"moe expects x (N, D), experts and weights (N, k), got {tuple(x.shape)}, {tuple(experts.shape)}, "
                         f"{tuple(weights.shape)}")
    if w13.shape != (E, D, H2) or H2 % 2 or w2.shape != (E, H2 // 2, D):
        raise ValueError(f"moe expects w13 (E, {D}, 2H) and w2 (E, H, {D}), got {tuple(w13.shape)} and {tuple(w2.shape)}")


def experts_ref(x: Tensor, experts: Tensor, weights: Tensor, w13: Tensor, w2: Tensor, activation: str = "silu") -> Tensor:
    """x (N, D), experts / weights (N, k), w13 (E, D, 2H), w2 (E, H, D) -> y (N, D): token by token, expert by expert."""
    _check(x, experts, weights, w13, w2)
    act = ACTIVATIONS[activation]
    rows = []
    for n in range(x.shape[0]):
        y = x.new_zeros(x.shape[1])
        for j in range(experts.shape[1]):
            e = int(experts[n, j])
            y = y + weights[n, j] * glu(x[n : n + 1], w13[e], w2[e], act)[0]
        rows.append(y)
    return torch.stack(rows) if rows else x.new_zeros(x.shape)


def experts_grouped(x: Tensor, experts: Tensor, weights: Tensor, w13: Tensor, w2: Tensor, activation: str = "silu") -> Tensor:
    """``experts_ref``'s signature: the (token, expert) pairs grouped by expert, one gated MLP per expert that has
    pairs (a loop over at most the E experts, not the tokens; a decode token calls top_k of them)."""
    _check(x, experts, weights, w13, w2)
    act = ACTIVATIONS[activation]
    N, k = experts.shape
    flat = experts.reshape(-1)                          # pair p = (token p // k, its j-th expert)
    order = flat.argsort(stable=True)                   # pairs grouped by expert, in token order within a group
    counts = torch.bincount(flat, minlength=w13.shape[0]).tolist()
    xs = x[order // k]
    ys = torch.cat([glu(xe, w13[e], w2[e], act) for e, xe in enumerate(xs.split(counts)) if counts[e]]) if N else xs
    ys = ys * weights.reshape(-1)[order, None]
    out = torch.empty_like(ys)
    out[order] = ys                                     # back in pair order: a permutation, no accumulation
    return out.view(N, k, -1).sum(1)


def load_balancing_loss(probs: Tensor, experts: Tensor) -> Tensor:
    """probs (N, E) router probabilities, experts (N, k) chosen -> E · Σ_i f_i P_i (scalar; 1 when balanced; 0 for
    N = 0). The module docstring says how it relates to HF's."""
    N, E = probs.shape
    if N == 0:
        return probs.sum()
    f = torch.bincount(experts.reshape(-1), minlength=E).to(probs.dtype) / experts.numel()
    return E * (f * probs.mean(0)).sum()
