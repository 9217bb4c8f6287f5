"""Liquid time-constant networks (Hasani, Lechner, Amini, Rus & Grosu 2021, "Liquid Time-constant Networks", AAAI):

    dx/dt = −[1/τ + f(x, I)] ⊙ x + f(x, I) ⊙ A                                             (eq. 1)
    x(t + Δ) = (x(t) + Δ f(x(t), I(t)) ⊙ A) / (1 + Δ (1/τ + f(x(t), I(t))))   (the fused solver, eq. 3),
    unfolded L = 6 times per input (Algorithm 1), each sub-step Δ = dt / L

with f the authors' conductance-based synapses (their experiments' form; τ = c_m / g_leak, A the synapses' reversal
potentials): neuron j receives a_ij = w_ij σ(σ_ij (v_i − μ_ij)) from neuron i and s_ij = w^s_ij σ(σ^s_ij (I_i − μ^s_ij))
from input i, and one sub-step is

    v_j ← (v_j + k_j (g_leak,j v_leak,j + Σ_i a_ij E_ij + Σ_i s_ij E^s_ij)) / (1 + k_j (g_leak,j + Σ_i a_ij + Σ_i s_ij)),
    k_j = Δ / c_m,j

(eq. 3 with both sides divided by c_m; the authors' code writes the same update as (c_m/Δ v + …)/(c_m/Δ + …)).
The denominator is >= 1 (every conductance positive), so no ε is needed and Δ = 0 leaves v unchanged.

    x (B, T, I) (after the input's affine map), dt (B, T) or None (1 per token), synapse parameters already positive
    -> (v (B, T, H), v_T (B, H))

Forms, one signature: ``ltc_ref`` (the cell as written, one token at a time: the specification) and ``ltc`` (the
sensory terms Σ_i s_ij E^s_ij, Σ_i s_ij, which depend on the input only, for all tokens before the loop, in time
chunks that bound the (B, t, I, H) activations to ~2^22 floats; each sub-step's two synapse sums as one einsum
against [w ⊙ E, w], the sigmoid's argument as one addcmul).
"""
from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.ops.varlen import varlen

__all__ = ["ltc", "ltc_ref", "UNFOLDS"]

UNFOLDS = 6  # the paper's ODE unfolds per input (Algorithm 1; the authors' experiments)


def _synapses(v: Tensor, mu: Tensor, sigma: Tensor, w: Tensor, erev: Tensor) -> tuple[Tensor, Tensor]:
    """v (..., I) presynaptic, mu/sigma/w/erev (I, H) -> (Σ_i a_ij E_ij, Σ_i a_ij) (..., H), a = w σ(σ (v − μ))."""
    a = w * torch.sigmoid(sigma * (v[..., :, None] - mu))
    return (a * erev).sum(-2), a.sum(-2)


def _unfold(v: Tensor, k: Tensor, sens: tuple[Tensor, Tensor], mu, sigma, w, erev, gleak, vleak, unfolds: int) -> Tensor:
    """The fused semi-implicit sub-steps of one token: v (B, H), k = Δ / c_m (B, H), sens = the sensory sums (B, H)."""
    for _ in range(unfolds):
        num, den = _synapses(v, mu, sigma, w, erev)
        v = (v + k * (gleak * vleak + num + sens[0])) / (1 + k * (gleak + den + sens[1]))
    return v


def _k(x: Tensor, dt: Tensor | None, cm: Tensor, unfolds: int) -> list[Tensor]:
    """k = (dt / L) / c_m per token: [(B, H)] * T."""
    if dt is None:
        return [(1.0 / unfolds) / cm.expand(x.shape[0], -1)] * x.shape[1]
    return list(((dt.to(cm.dtype) / unfolds)[..., None] / cm).unbind(1))


@varlen(("x", "dt"), final=None)
def ltc_ref(x: Tensor, dt: Tensor | None, sensory_mu: Tensor, sensory_sigma: Tensor, sensory_w: Tensor, sensory_erev: Tensor,
            mu: Tensor, sigma: Tensor, w: Tensor, erev: Tensor, gleak: Tensor, vleak: Tensor, cm: Tensor, unfolds: int = UNFOLDS,
            initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The LTC cell one token at a time (module docstring): sensory (I, H), recurrent (H, H), gleak/vleak/cm (H,)."""
    v = x.new_zeros(x.shape[0], mu.shape[1]) if initial_state is None else initial_state
    vs = []
    for xt, kt in zip(x.unbind(1), _k(x, dt, cm, unfolds)):
        sens = _synapses(xt, sensory_mu, sensory_sigma, sensory_w, sensory_erev)
        v = _unfold(v, kt, sens, mu, sigma, w, erev, gleak, vleak, unfolds)
        vs.append(v)
    return torch.stack(vs, 1), v


def _fused(v: Tensor, sigma: Tensor, neg_smu: Tensor, weights: Tensor) -> Tensor:
    """:func:`_synapses` in three ops: σ(σ_ij v_i − σ_ij μ_ij) by one addcmul and one sigmoid, then both sums by one
    einsum against weights (I, H, 2) = [w ⊙ E, w] -> (..., H, 2)."""
    return torch.einsum("...ij,ijk->...jk", torch.sigmoid(torch.addcmul(neg_smu, v[..., :, None], sigma)), weights)


@varlen(("x", "dt"), final=None)
def ltc(x: Tensor, dt: Tensor | None, sensory_mu: Tensor, sensory_sigma: Tensor, sensory_w: Tensor, sensory_erev: Tensor,
        mu: Tensor, sigma: Tensor, w: Tensor, erev: Tensor, gleak: Tensor, vleak: Tensor, cm: Tensor, unfolds: int = UNFOLDS,
        initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`ltc_ref` with the input-only sensory sums computed for all tokens before the loop (time chunks) and each
    sub-step's synapse sums fused (:func:`_fused`): the same arithmetic in fewer ops."""
    B, T, I = x.shape
    H = mu.shape[1]
    chunk = max(1, (1 << 22) // max(1, B * I * H))
    s_args = (sensory_sigma, -sensory_sigma * sensory_mu, torch.stack([sensory_w * sensory_erev, sensory_w], -1))
    sens = torch.cat([_fused(x[:, t0:t0 + chunk], *s_args) for t0 in range(0, T, chunk)], 1)  # (B, T, H, 2)
    base = (gleak * vleak, gleak)
    r_args = (sigma, -sigma * mu, torch.stack([w * erev, w], -1))
    v = x.new_zeros(B, H) if initial_state is None else initial_state
    vs = []
    for kt, st in zip(_k(x, dt, cm, unfolds), sens.unbind(1)):
        num0, den0 = base[0] + st[..., 0], base[1] + st[..., 1]  # the sub-steps' constant terms
        for _ in range(unfolds):
            nd = _fused(v, *r_args)
            v = (v + kt * (num0 + nd[..., 0])) / (1 + kt * (den0 + nd[..., 1]))
        vs.append(v)
    return torch.stack(vs, 1), v
