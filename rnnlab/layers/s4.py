"""S4 (Gu, Goel & Ré 2022, "Efficiently Modeling Long Sequences with Structured State
Spaces"): per channel a HiPPO-LegS SSM in normal-plus-low-rank form.

    A = Λ − P Pᴴ (in the eigenbasis of the normal part; §3.3, Thm. 1), Δ = exp(log Δ) per channel
    Ā = (I − Δ/2 A)⁻¹ (I + Δ/2 A),  B̄ = (I − Δ/2 A)⁻¹ Δ B                    (bilinear, eq. 3)
    training:  K = IFFT(K̂(ω)) from the truncated generating function at the roots of unity,
               C̃ = C (I − Ā^T), Cauchy kernels + Woodbury identity (Alg. 1); y = Re(K) * u + D u
    stepping:  h_t = Ā h_{t−1} + B̄ u_t,  y_t = Re(C h_t) + D u_t     (the N×N recurrence; Ā applied as
               diag(g) − u wᵀ, its exact diagonal-plus-rank-one form: O(N) per channel, no dense Ā)
    out = GLU(W · GELU(y))                                                       (the S4 block's output)

Initialization: Λ, P, B from HiPPO-LegS (P_n = sqrt(n + 1/2), B_n = sqrt(2n + 1), rotated into the
eigenbasis), C ~ CN(0, 1), log Δ ~ U(log 1e-3, log 1e-1), D ~ N(0, 1).  Re Λ is kept negative as
−exp(·) (the authors' "exp" real transform).  Λ, P, B, log Δ get no weight decay.
Simplifications: all N modes are kept (no conjugate-pair halving), and Λ, P, B are per channel.
C is the true output matrix; C̃ is formed for the input's own length T at every call (the
authors' code keeps C̃ for a fixed maximum length).  Ā^T (for C̃) and the state
carried across time chunks come from log2 T squarings of Ā applied to vectors; continuing from a state
(initial-state output and final state) uses Krylov blocks Ā^l B̄, C Ā^l by doubling, chunked over time.
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
from rnnlab.ops.hippo import nplr_legs
from rnnlab.ops.ssm_kernels import bilinear_dense, bilinear_dplr, dense_state_terms, fft_causal_conv, nplr_kernel, power_times, squarings

__all__ = ["S4"]
BACKENDS = ("fft", "reference")  # rnnlab.ops.forms


def _c(t: Tensor, like: Tensor | None = None) -> Tensor:
    """Real pairs (..., 2) -> complex: complex128 for a float64 module (``like``'s dtype), else complex64."""
    dt = torch.float64 if (like if like is not None else t).dtype == torch.float64 else torch.float32
    return torch.view_as_complex(t.to(dt).contiguous())


@register_mixer("s4", family="diagonal", small={"d_state": 8})
class S4(Mixer):
    """S4 mixer: x (B, T, D) -> y (B, T, D); state h (B, D, d_state, 2) (complex as real pairs).

    d_state: N (HiPPO-LegS order); dt_min/dt_max: range of the log-uniform Δ initialization;
    backend: "fft" (Cauchy/Woodbury kernel + FFT convolution) or "reference" (the dense
    recurrence, one step per token)."""

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1, backend: str = "fft"):
        super().__init__(d_model)
        backend = check_form(backend, BACKENDS, "s4")
        H, N = d_model, d_state
        self.d_state, self.backend = d_state, backend
        lam, P, B, _ = nplr_legs(N)
        rep = lambda t: torch.view_as_real(t.to(torch.complex64)).repeat(H, 1, 1)  # noqa: E731  (H, N, 2)
        self.log_neg_lam_re = nn.Parameter(torch.log(-lam.real.float()).repeat(H, 1))
        self.lam_im = nn.Parameter(lam.imag.float().repeat(H, 1))
        self.P, self.B = nn.Parameter(rep(P)), nn.Parameter(rep(B))
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, N, dtype=torch.cfloat)))
        self.log_dt = nn.Parameter(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.D = nn.Parameter(torch.randn(H))
        self.out_proj = nn.Linear(H, 2 * H)
        no_weight_decay(self.log_neg_lam_re, self.lam_im, self.P, self.B, self.log_dt)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"h": torch.zeros(batch_size, self.d_model, self.d_state, 2, device=device, dtype=torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return self.d_model * self.d_state * 2

    def _params(self):
        """Λ, P, B, C complex and Δ, in complex64 (complex128 when the module is float64: the exact-arithmetic
        check of the FFT form against the loop, tests/layers/test_diag_reference_forms.py)."""
        f = torch.float64 if self.log_dt.dtype == torch.float64 else torch.float32
        lam = torch.complex(-torch.exp(self.log_neg_lam_re.to(f)), self.lam_im.to(f))
        return lam, _c(self.P), _c(self.B), _c(self.C), torch.exp(self.log_dt.to(f))

    def _step_ssm(self) -> tuple[Tensor, ...]:
        """The stepping constants g, u, w, B̄ (``bilinear_dplr``) and C."""
        lam, P, B, C, dt = self._params()
        return (*bilinear_dplr(lam, P, B, dt), C)

    def _out(self, y: Tensor, x: Tensor) -> Tensor:
        y = y + self.D.to(y.dtype) * x.to(y.dtype)
        return F.glu(decode.linear(self.out_proj, F.gelu(y).to(x.dtype)), dim=-1)

    @staticmethod
    def _recur(Abar: Tensor, Bbar: Tensor, C: Tensor, h: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """One step: u (B, H) real, h (B, H, N) complex -> (y (B, H) = Re(C h'), h' = Ā h + B̄ u)."""
        h = torch.einsum("hnm,bhm->bhn", Abar, h) + Bbar * u.unsqueeze(-1)
        return (h * C).sum(-1).real, h

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        lam, P, B, C, dt = self._params()
        T = x.shape[1]
        u = x.to(dt.dtype)
        Abar, Bbar = bilinear_dense(lam, P, B, dt)
        if self.backend == "reference":
            h, ys = _c(state["h"], self.log_dt), []
            for ut in u.unbind(1):
                yt, h = self._recur(Abar, Bbar, C, h, ut)
                ys.append(yt)
            return self._out(torch.stack(ys, 1), x), {"h": torch.view_as_real(h)}
        sq = squarings(Abar, T)
        Ct = C - (C.unsqueeze(-2) @ power_times(sq, T, right=True)).squeeze(-2)  # C̃ = C (I − Ā^T): the matrix power
        # first (applying the factors to C one by one gave ~2x the float32 error in the Δ gradient)
        K = nplr_kernel(lam, P, B, Ct, dt, T)  # (H, T)
        h0 = _c(state["h"], self.log_dt)
        fresh = not h0.requires_grad and not bool(h0.any())  # zero state: skip its output terms
        y0, h = dense_state_terms(u, sq, Bbar, C, None if fresh else h0)
        y = fft_causal_conv(u, K) if fresh else fft_causal_conv(u, K) + y0.real
        return self._out(y, x), {"h": torch.view_as_real(h)}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """The discretized recurrence h' = Ā h + B̄ u, y = Re(C h'), with Ā applied in its diagonal-plus-rank-one
        form (Ā h = g ⊙ h − u (w · h), O(N) per channel): forming the dense (H, N, N) Ā every step
        took 7.3 ms per token at d_model = 256, B = 1."""
        g, u, w, Bbar, C = self._step_ssm() if torch.is_grad_enabled() else param_derived(  # decode: the constants, once
            self, "_decode_ssm", lambda *_: self._step_ssm(), self.log_neg_lam_re, self.lam_im, self.P, self.B, self.C, self.log_dt)
        h, ut = _c(state["h"], self.log_dt), x[:, 0].to(g.real.dtype)
        h = g * h - u * (w * h).sum(-1, keepdim=True) + Bbar * ut.unsqueeze(-1)
        return self._out((h * C).sum(-1).real.unsqueeze(1), x), {"h": torch.view_as_real(h)}
