"""LRU, the Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural
Networks for Long Sequences", Sec. 3; the reference code of their Appendix A).

    x (B, T, H) -> y (B, T, H);  state {"h": (B, N, 2)} float32 (real and imaginary part of h)

    lambda_j = exp(-exp(nu_j) + i exp(theta_j))                     (Sec. 3.3, exponential parameterisation)
    h_t = lambda ⊙ h_{t-1} + gamma ⊙ (B x_t),  gamma_j = exp(gamma_log_j)   (Sec. 3.4, normalisation)
    y_t = Re(C h_t) + D ⊙ x_t

Initialisation as in the paper: |lambda| uniform on the ring [r_min, r_max] (area-uniform),
phase uniform in [0, max_phase]; gamma_log = log sqrt(1 - |lambda|^2) (a trainable parameter,
as in their code); B, C complex Glorot-like (B / sqrt(2H), C / sqrt(N)); D ~ N(0, 1).
Defaults r_min=0.9, r_max=0.999, max_phase=pi/10 are the paper's long-range setting (Sec. 3.3);
its listing's defaults are (0, 1, 2 pi).  nu, theta, gamma_log get no weight decay.

Training runs the complex diagonal recurrence through ``rnnlab.ops.scan.linear_scan``
(complex a); stepping applies it once per token.  The LRU paper's full block (norm, GLU/MLP,
residual) is the model's job, not the mixer's.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import param_derived
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.forms import check_form
from rnnlab.ops.scan import BACKENDS, linear_scan


@register_mixer("lru", family="diagonal", small={"d_state": 16})
class LRU(Mixer):
    """Linear Recurrent Unit with ``d_state`` complex eigenvalues (default d_state = d_model)."""

    def __init__(
        self,
        d_model: int,
        d_state: int | None = None,
        r_min: float = 0.9,
        r_max: float = 0.999,
        max_phase: float = math.pi / 10,
        backend: str = "auto",
    ):
        super().__init__(d_model)
        if not 0.0 <= r_min < r_max < 1.0:
            raise ValueError(f"LRU needs 0 <= r_min < r_max < 1, got r_min={r_min}, r_max={r_max}")
        if max_phase <= 0:
            raise ValueError(f"max_phase must be > 0, got {max_phase}")
        backend = check_form(backend, BACKENDS, "lru")
        N = d_state or d_model
        H = d_model
        self.d_state, self.r_min, self.r_max, self.max_phase, self.backend = N, r_min, r_max, max_phase, backend
        u1, u2 = torch.rand(N, dtype=torch.float64), torch.rand(N, dtype=torch.float64)
        nu_log = torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        theta_log = torch.log(max_phase * u2.clamp_min(1e-12))
        mod = torch.exp(-torch.exp(nu_log))
        self.nu_log = nn.Parameter(nu_log.float())
        self.theta_log = nn.Parameter(theta_log.float())
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1 - mod**2)).float())
        self.B_re = nn.Parameter(torch.randn(N, H) / math.sqrt(2 * H))
        self.B_im = nn.Parameter(torch.randn(N, H) / math.sqrt(2 * H))
        self.C_re = nn.Parameter(torch.randn(H, N) / math.sqrt(N))
        self.C_im = nn.Parameter(torch.randn(H, N) / math.sqrt(N))
        self.D = nn.Parameter(torch.randn(H))
        no_weight_decay(self.nu_log, self.theta_log, self.gamma_log)

    def eigenvalues(self) -> Tensor:
        """lambda (N,) complex64 = exp(-exp(nu) + i exp(theta))."""
        return torch.exp(torch.complex(-torch.exp(self.nu_log.float()), torch.exp(self.theta_log.float())))

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"h": torch.zeros(batch_size, self.d_state, 2, device=device, dtype=dtype or torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return 2 * self.d_state

    def _input(self, x: Tensor) -> Tensor:
        """x (B, T, H) -> gamma ⊙ (B x) (B, T, N) complex64."""
        xf = x.float()
        gamma = torch.exp(self.gamma_log.float())[:, None]
        # .float(): under autocast the projections come back bfloat16; the recurrence is complex64 (no-op in float32)
        return torch.complex((xf @ (self.B_re.float() * gamma).t()).float(), (xf @ (self.B_im.float() * gamma).t()).float())

    def _output(self, h: Tensor, x: Tensor) -> Tensor:
        """h (B, T, N) complex, x (B, T, H) -> Re(C h) + D ⊙ x (B, T, H) in x's dtype."""
        y = h.real @ self.C_re.float().t() - h.imag @ self.C_im.float().t() + self.D.float() * x.float()
        return y.to(x.dtype)

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        bu = self._input(x)
        lam = self.eigenvalues().view(1, 1, -1)  # broadcast over (B, T)
        h, h_last = linear_scan(lam, bu, torch.view_as_complex(state["h"].float().contiguous()), backend=self.backend)
        return self._output(h, x), {"h": torch.view_as_real(h_last).contiguous()}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One token; on CPU without autograd the whole token in the fused decode kernel (rnnlab.ops.decode), with
        λ and the projections' interleaved real / imaginary weights derived once per parameter update."""
        params = (self.nu_log, self.theta_log, self.gamma_log, self.B_re, self.B_im, self.C_re, self.C_im)
        if decode.usable(x, state["h"], self.D, *params):
            weights = param_derived(self, "_decode_params", self._kernel_weights, *params)
            out, (h,) = decode.fused_step("lru_decode", self, x, [state["h"]], [*weights, self.D], self.d_model, [])
            return out, {"h": h}
        h = self.eigenvalues() * torch.view_as_complex(state["h"].float().contiguous()) + self._input(x)[:, 0]
        return self._output(h.unsqueeze(1), x), {"h": torch.view_as_real(h).contiguous()}

    def _kernel_weights(self, nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im) -> tuple[Tensor, Tensor, Tensor]:
        """``lru_decode``'s weights (``decode.complex_diagonal``) of γ B, λ and C."""
        gamma = torch.exp(gamma_log)[:, None]
        return decode.complex_diagonal(torch.complex(B_re * gamma, B_im * gamma), self.eigenvalues(), torch.complex(C_re, C_im))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, r=[{self.r_min}, {self.r_max}], max_phase={self.max_phase:.3g}"
