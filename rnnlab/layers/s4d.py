"""S4D (Gu, Gupta, Goel & Ré 2022, "On the Parameterization and Initialization of Diagonal
State Space Models"): one diagonal complex SSM per channel, no input projection.

    A_n = −exp(a_n) + i·b_n (n < N/2, conjugate pairs halved), Δ = exp(log Δ) per channel
    Ā = exp(ΔA),  B̄ = (exp(ΔA) − 1)/A · B                          (ZOH, eq. 4-5)
    K_l = 2 Re Σ_n C_n B̄_n Ā_n^l  (Vandermonde, eq. 6);  y = K * u + D ⊙ u  (FFT conv in training)
    h_t = Ā h_{t−1} + B̄ u_t,  y_t = 2 Re(C h_t) + D u_t                (recurrence in stepping)
    out = GLU(W · GELU(y))                                            (the S4/S4D block's output)

Initialization (§4): S4D-Lin b_n = π n, S4D-Inv b_n = (N/π)(N/(2n+1) − 1), real part −1/2;
log Δ ~ U(log 1e-3, log 1e-1); C ~ CN(0, 1); D ~ N(0, 1).  As in the authors' minimal
S4D code B is fixed to 1 (absorbed into the trainable C).  A and log Δ get no weight decay.
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
from rnnlab.ops.ssm_kernels import diag_conv, zoh_diag

__all__ = ["S4D"]
BACKENDS = ("fft", "reference")  # rnnlab.ops.forms


@register_mixer("s4d", family="diagonal", small={"d_state": 8})
class S4D(Mixer):
    """S4D mixer: x (B, T, D) -> y (B, T, D); state h (B, D, d_state/2, 2) (complex as real pairs).

    d_state: N (N/2 complex modes per channel); init: "lin" (S4D-Lin) or "inv" (S4D-Inv);
    dt_min/dt_max: range of the log-uniform Δ initialization; backend: "fft" (Vandermonde kernel +
    FFT convolution) or "reference" (the recurrence, one step per token)."""

    def __init__(self, d_model: int, d_state: int = 64, init: str = "lin", dt_min: float = 1e-3, dt_max: float = 1e-1,
                 backend: str = "fft"):
        super().__init__(d_model)
        if init not in ("lin", "inv"):
            raise ValueError(f"s4d init must be 'lin' or 'inv', got {init!r}")
        backend = check_form(backend, BACKENDS, "s4d")
        if d_state % 2:
            raise ValueError(f"s4d d_state must be even (conjugate pairs), got {d_state}")
        H, N2 = d_model, d_state // 2
        self.d_state, self.backend = d_state, backend
        n = torch.arange(N2, dtype=torch.float32)
        imag = math.pi * n if init == "lin" else (d_state / math.pi) * (d_state / (2 * n + 1) - 1)
        self.log_A_real = nn.Parameter(torch.log(0.5 * torch.ones(H, N2)))
        self.A_imag = nn.Parameter(imag.repeat(H, 1))
        self.log_dt = nn.Parameter(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, N2, dtype=torch.cfloat)))  # (H, N2, 2)
        self.D = nn.Parameter(torch.randn(H))
        self.out_proj = nn.Linear(H, 2 * H)
        no_weight_decay(self.log_A_real, self.A_imag, self.log_dt)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"h": torch.zeros(batch_size, self.d_model, self.d_state // 2, 2, device=device, dtype=torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return self.d_model * self.d_state

    def _ssm(self):
        """-> C (H, N2), ΔA (H, N2), B̄ (H, N2), complex64."""
        A = torch.complex(-torch.exp(self.log_A_real.float()), self.A_imag.float())
        dtA, Bbar = zoh_diag(torch.exp(self.log_dt.float()), A)
        return torch.view_as_complex(self.C.float().contiguous()), dtA, Bbar

    def _step_ssm(self):
        """-> C, Ā = exp(ΔA), B̄: the stepping constants."""
        C, dtA, Bbar = self._ssm()
        return C, torch.exp(dtA), Bbar

    def _out(self, y: Tensor, x: Tensor) -> Tensor:
        y = y + self.D.float() * x.float()
        return F.glu(decode.linear(self.out_proj, F.gelu(y).to(x.dtype)), dim=-1)

    @staticmethod
    def _recur(C: Tensor, Abar: Tensor, Bbar: Tensor, h: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """One step: u (B, H) real, h (B, H, N2) complex, Ā = exp(ΔA) -> (y (B, H) = 2 Re(C h'), h' = Ā h + B̄ u)."""
        h = Abar * h + Bbar * u.unsqueeze(-1)
        return 2 * (h * C).sum(-1).real, h

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        C, dtA, Bbar = self._ssm()
        u = x.float()
        h = torch.view_as_complex(state["h"].float().contiguous())
        if self.backend == "reference":
            ys, Abar = [], torch.exp(dtA)
            for ut in u.unbind(1):
                yt, h = self._recur(C, Abar, Bbar, h, ut)
                ys.append(yt)
            return self._out(torch.stack(ys, 1), x), {"h": torch.view_as_real(h)}
        fresh = not h.requires_grad and not bool(h.any())  # zero state: skip its output terms
        y, h = diag_conv(u, C, dtA, Bbar, None if fresh else h)
        return self._out(y, x), {"h": torch.view_as_real(h)}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        ssm = self._step_ssm() if torch.is_grad_enabled() else param_derived(  # decode: the constants of the parameters, once
            self, "_decode_ssm", lambda *_: self._step_ssm(), self.log_A_real, self.A_imag, self.log_dt, self.C)
        y, h = self._recur(*ssm, torch.view_as_complex(state["h"].float().contiguous()), x[:, 0].float())
        return self._out(y.unsqueeze(1), x), {"h": torch.view_as_real(h)}
