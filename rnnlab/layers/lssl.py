"""LSSL, the Linear State-Space Layer (Gu, Johnson, Goel, Saab, Dao, Rudra & Ré 2021, "Combining Recurrent,
Convolutional, and Continuous-time Models with Linear State-Space Layers").

    x'(t) = A x(t) + B u(t),  y(t) = C x(t) + D u(t)          per feature h, state N   (§2, eq. (1))
    Ā = (I − Δ/2 A)⁻¹ (I + Δ/2 A),  B̄ = (I − Δ/2 A)⁻¹ Δ B       (the bilinear transform, GBT α = 1/2, eq. (3))
    recurrent view:      x_t = Ā x_{t−1} + B̄ u_t,  y_t = C x_t + D u_t                 (eq. (5))
    convolutional view:  y = K * u + D u,  K = (C B̄, C Ā B̄, …, C Ā^{T−1} B̄) (Krylov), by FFT   (eq. (6))
    out = W · GELU(y) + b                                       (the deep LSSL's position-wise mixing, §4.1)

A is dense (N × N) and shared by the H features, initialized to a HiPPO matrix (``measure``: LegS by default,
LegT, LagT; rnnlab.ops.hippo), and trained with B when ``train_A`` (the paper's "LSSL"; False is its
"LSSL-fixed"); Δ is one learnable timescale per feature, log-uniform in [dt_min, dt_max] at init; C, D ~ N(0, 1).
A, B and log Δ get no weight decay.

The convolution materializes the Krylov kernel by doubling from log2 T squarings of Ā (O(H N³ log T + H N² T));
the paper's fast algorithm for structured (quasiseparable) A is not implemented: A is a general dense matrix
here, which is what makes it trainable without structure. Simplification: one output channel per feature
(the paper's M copies with M = 1), mixed by the output projection.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops import hippo
from rnnlab.ops.forms import check_form
from rnnlab.ops.ssm_kernels import dense_ssm_conv, dense_ssm_ref

__all__ = ["LSSL"]
BACKENDS = ("fft", "reference")  # rnnlab.ops.forms


@register_mixer("lssl", family="diagonal", small={"d_state": 8})
class LSSL(Mixer):
    """LSSL mixer: x (B, T, D) -> y (B, T, D); state h (B, D, d_state).

    d_state: N; measure: the HiPPO initialization of A ("legs", "legt", "lagt"); train_A: A and B trainable;
    dt_min/dt_max: the log-uniform Δ initialization; method: the discretization (rnnlab.ops.hippo.METHODS,
    the paper's "bilinear" by default); backend: "fft" (Krylov kernel + FFT) or "reference" (the recurrence)."""

    def __init__(self, d_model: int, d_state: int = 64, measure: str = "legs", train_A: bool = True, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, method: str = "bilinear", backend: str = "fft"):
        super().__init__(d_model)
        self.backend = check_form(backend, BACKENDS, "lssl")
        if method not in hippo.METHODS:
            raise ValueError(f"lssl method must be one of {hippo.METHODS}, got {method!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"lssl needs 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        H, N = d_model, d_state
        self.d_state, self.measure, self.method = N, measure, method
        A, B = hippo.transition(measure, N)
        if train_A:
            self.A, self.B = nn.Parameter(A.float()), nn.Parameter(B.float())
            no_weight_decay(self.A, self.B)
        else:
            self.register_buffer("A", A.float())
            self.register_buffer("B", B.float())
        self.log_dt = nn.Parameter(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.C = nn.Parameter(torch.randn(H, N))
        self.D = nn.Parameter(torch.randn(H))
        self.out_proj = nn.Linear(H, H)
        no_weight_decay(self.log_dt)
        self._cache: tuple | None = None

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"h": torch.zeros(batch_size, self.d_model, self.d_state, device=device, dtype=torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return self.d_model * self.d_state

    def _f(self) -> torch.dtype:
        return torch.float64 if self.log_dt.dtype == torch.float64 else torch.float32

    def discrete(self) -> tuple[Tensor, Tensor]:
        """(Ā (H, N, N), B̄ (H, N)), solved in float64 (O(H N³), cheap next to the kernel) and returned in the compute
        dtype. Without autograd (decoding) the pair is cached until a parameter changes (optimizer steps and loads
        bump the tensors' versions): stepping then costs O(H N²) per token, not a solve."""
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in (self.A, self.B, self.log_dt))
        if not torch.is_grad_enabled() and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        Ab, Bb = hippo.discretize(self.A.double(), self.B.double(), torch.exp(self.log_dt.double()), self.method)
        out = (Ab.to(self._f()), Bb.to(self._f()))
        self._cache = (key, out) if not torch.is_grad_enabled() else None
        return out

    def _out(self, y: Tensor, x: Tensor) -> Tensor:
        y = y + self.D.to(y.dtype) * x.to(y.dtype)
        return decode.linear(self.out_proj, F.gelu(y).to(x.dtype))

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        Ab, Bb = self.discrete()
        h0 = state["h"].to(Ab.dtype)
        fresh = not h0.requires_grad and not bool(h0.any())  # zero state: skip its output terms
        op = dense_ssm_ref if self.backend == "reference" else dense_ssm_conv
        y, h = op(x.to(Ab.dtype), Ab, Bb, self.C.to(Ab.dtype), None if fresh else h0)
        return self._out(y, x), {"h": h}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One token; on CPU without autograd the per-channel dense update and read-out in one kernel
        (rnnlab.ops.decode), the discretization cached as ``discrete`` says."""
        Ab, Bb = self.discrete()
        if decode.usable(x, state["h"], Ab, Bb, self.C, self.D):
            y, (h,) = decode.fused_step("dense_ssm_decode", self, x, [state["h"]], [Ab, Bb, self.C, self.D], self.d_model, [],
                                        work=Ab.numel())
            return decode.linear(self.out_proj, F.gelu(y)), {"h": h}
        y, h = dense_ssm_ref(x.to(Ab.dtype), Ab, Bb, self.C.to(Ab.dtype), state["h"].to(Ab.dtype))
        return self._out(y, x), {"h": h}

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, measure={self.measure}, method={self.method}, backend={self.backend}"
