"""S5 (Smith, Warrington & Linderman 2023, "Simplified State Space Layers for Sequence
Modeling"): one multi-input multi-output diagonal complex SSM shared by all channels,
trained with a parallel scan.

    Λ, V from HiPPO-N (the normal part of HiPPO-LegS, diagonalized; §4.1, App. B), in J blocks
    B̃ = V⁻¹ B, C̃ = C V, Δ_p = exp(log Δ_p) per state                      (§3, App. C.1)
    Λ̄ = exp(ΛΔ),  B̄ = Λ⁻¹(Λ̄ − 1) B̃                                      (ZOH, eq. 6)
    h_t = Λ̄ ⊙ h_{t−1} + B̄ u_t,  y_t = 2 Re(C̃ h_t) + D ⊙ u_t                (conjugate symmetry: P/2 modes)
    out = g ⊙ σ(W g),  g = GELU(y)                                           ("half_glu1" of the authors' code)

Initialization as the authors' code (lindermanlab/S5 ``ssm.py``/``ssm_init.py``, default
``C_init="trunc_standard_normal"``): B (P, H) and the real and imaginary parts of C (H, P) are
JAX ``lecun_normal`` draws, i.e. truncated normals of std 1/sqrt(P) (JAX takes fan_in = P for both
shapes), then B̃ = V⁻¹ B, C̃ = C V; D ~ N(0, 1); log Δ ~ U(log 1e-3, log 1e-1) per state.
Λ, log Δ get no weight decay.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import param_derived
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.forms import check_form
from rnnlab.ops.scan import BACKENDS, linear_scan
from rnnlab.ops.hippo import hippo_n_diag
from rnnlab.ops.ssm_kernels import zoh_diag

__all__ = ["S5"]


def _lecun_normal(shape: tuple[int, ...], fan_in: int) -> Tensor:
    """JAX's lecun_normal: a normal truncated at ±2σ, rescaled to std 1/sqrt(fan_in) (float64)."""
    std = 1 / math.sqrt(fan_in) / 0.87962566103423978  # std of N(0, 1) truncated at ±2
    return nn.init.trunc_normal_(torch.empty(shape, dtype=torch.float64), std=std, a=-2 * std, b=2 * std)


@register_mixer("s5", family="diagonal", small={"d_state": 8, "blocks": 2})
class S5(Mixer):
    """S5 mixer: x (B, T, D) -> y (B, T, D); state h (B, d_state/2, 2) (complex as real pairs).

    d_state: P (P/2 complex modes kept, conjugate symmetry); blocks: J HiPPO-N blocks on the
    diagonal of the initial Λ; dt_min/dt_max: log-uniform range of the per-state Δ; backend: linear_scan's."""

    def __init__(self, d_model: int, d_state: int = 64, blocks: int = 1, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 backend: str = "auto"):
        super().__init__(d_model)
        if d_state % (2 * blocks):
            raise ValueError(f"s5 d_state must be a multiple of 2*blocks = {2 * blocks}, got {d_state}")
        H, P, P2 = d_model, d_state, d_state // 2
        self.d_state, self.backend = d_state, check_form(backend, BACKENDS, "s5")
        lam, V = hippo_n_diag(P // blocks)
        half = P // blocks // 2
        lam, V = lam[:half], V[:, :half]  # (bs,), (bs, bs/2): one of each conjugate pair
        lam = lam.repeat(blocks)
        V = torch.block_diag(*[V] * blocks)  # (P, P2)
        Vinv = V.conj().T  # (P2, P)
        Bm = _lecun_normal((P, H), fan_in=P)
        Ct = torch.complex(_lecun_normal((H, P), fan_in=P), _lecun_normal((H, P), fan_in=P))
        self.Lambda_re = nn.Parameter(lam.real.float())
        self.Lambda_im = nn.Parameter(lam.imag.float())
        self.B = nn.Parameter(torch.view_as_real((Vinv @ Bm.to(torch.complex128)).to(torch.complex64)))  # (P2, H, 2)
        self.C = nn.Parameter(torch.view_as_real((Ct @ V).to(torch.complex64)))  # (H, P2, 2)
        self.D = nn.Parameter(torch.randn(H))
        self.log_dt = nn.Parameter(torch.rand(P2) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.out2 = nn.Linear(H, H)
        no_weight_decay(self.Lambda_re, self.Lambda_im, self.log_dt)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"h": torch.zeros(batch_size, self.d_state // 2, 2, device=device, dtype=torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return self.d_state

    def _ssm(self):
        """-> Λ̄ (P2,), B̄ (P2, H), C̃ (H, P2), complex64."""
        lam = torch.complex(self.Lambda_re.float(), self.Lambda_im.float())
        dtA, f = zoh_diag(torch.exp(self.log_dt.float()), lam)
        Bbar = f.unsqueeze(-1) * torch.view_as_complex(self.B.float().contiguous())
        return torch.exp(dtA), Bbar, torch.view_as_complex(self.C.float().contiguous())

    def _kernel_weights(self, *_) -> tuple[Tensor, Tensor, Tensor]:
        """``lru_decode``'s weights (``decode.complex_diagonal``) of B̄, λ̄ and 2 C̃ (y = 2 Re(C̃ h))."""
        lam_bar, Bbar, C = self._ssm()
        return decode.complex_diagonal(Bbar, lam_bar, 2 * C)

    def _out(self, h: Tensor, C: Tensor, x: Tensor) -> Tensor:
        y = 2 * torch.einsum("btp,hp->bth", h, C).real + self.D.float() * x.float()
        g = F.gelu(y).to(x.dtype)
        return g * torch.sigmoid(decode.linear(self.out2, g))

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        lam_bar, Bbar, C = self._ssm()
        bu = torch.einsum("bth,ph->btp", x.float().to(Bbar.dtype), Bbar)  # (B, T, P2)
        h0 = torch.view_as_complex(state["h"].float().contiguous())
        h, h_last = linear_scan(lam_bar, bu, h0, backend=self.backend)
        return self._out(h, C, x), {"h": torch.view_as_real(h_last)}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One token; on CPU without autograd the projection in, the complex diagonal update and 2 Re(C̃ h) + D x in
        the LRU's decode kernel (rnnlab.ops.decode), with the discretized weights derived once per parameter update."""
        params = (self.Lambda_re, self.Lambda_im, self.B, self.C, self.log_dt)
        if decode.usable(x, state["h"], self.D, *params):
            weights = param_derived(self, "_decode_params", self._kernel_weights, *params)
            y, (h,) = decode.fused_step("lru_decode", self, x, [state["h"]], [*weights, self.D], self.d_model, [])
            g = F.gelu(y)
            return g * torch.sigmoid(decode.linear(self.out2, g)), {"h": h}
        lam_bar, Bbar, C = self._ssm()
        bu = torch.einsum("bh,ph->bp", x[:, 0].float().to(Bbar.dtype), Bbar)
        h = lam_bar * torch.view_as_complex(state["h"].float().contiguous()) + bu
        return self._out(h.unsqueeze(1), C, x), {"h": torch.view_as_real(h)}
