"""Longhorn (Liu, Wang, Wu, Stone & Liu 2024, "Longhorn: State Space Models are Amortized
Online Learners"): the Mamba block with the SSM replaced by the closed-form solution of an
online associative-recall objective (§3, eq. 9-10):

    S_t = argmin_S ||S − S_{t−1}||² + β_t ||S k_t − x_t||²   (per value channel, diagonal approximation)
        = (1 − ε_t ⊗ k_t²) ⊙ S_{t−1} + (ε_t ⊙ x_t) ⊗ k_t,       ε_t = β_t / (1 + β_t kᵀ_t k_t)
    y_t = S_t q_t + D ⊙ x_t,  y = y ⊙ SiLU(z)

k_t, q_t are the block's B_t, C_t projections; β_t = σ(W_β x_t + b_β) ∈ (0, 1) per channel takes
the place of Mamba's Δ (low-rank projection, same shapes).  There is no A: the forgetting
1 − ε k² ∈ (0, 1] comes from the objective.  Served by ``selective_scan(transition="longhorn")``
with dt := ε, B := k, C := q.  b_β is initialized to 0 (β ≈ 1/2); the paper does not pin it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnlab.layers.mamba import SelectiveBlock
from rnnlab.layers.registry import register_mixer

__all__ = ["Longhorn"]


@register_mixer("longhorn", family="diagonal", small={"d_state": 4, "chunk_size": 16})
class Longhorn(SelectiveBlock):
    """Longhorn mixer: x (B, T, D) -> y (B, T, D); state conv (B, d_conv-1, d_inner), ssm (B, d_inner, d_state).

    d_state: key size N; expand: d_inner = expand·d_model; d_conv: conv width; dt_rank: rank of
    the β projection ("auto" = ceil(d_model/16)); backend/chunk_size: selective_scan's."""

    transition = "longhorn"

    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2, d_conv: int = 4, dt_rank: int | str = "auto",
                 backend: str = "auto", chunk_size: int = 64):
        super().__init__(d_model, d_state, expand, d_conv, dt_rank, backend, chunk_size)
        nn.init.zeros_(self.dt_proj.bias)

    def _scan_params(self, dt: Tensor, Bm: Tensor, Cm: Tensor):
        beta = torch.sigmoid(dt)  # (B, T, d_inner)
        eps = beta / (1 + beta * Bm.square().sum(-1, keepdim=True))
        return eps, None, Bm, Cm
