"""Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"),
the selective SSM block of Fig. 3 / Algorithm 2, with the optional negative-eigenvalue
transition of Grazzi et al. 2024 ("Unlocking State-Tracking in Linear RNNs Through
Negative Eigenvalues").

    x, z = W_in u                                    (expand E = 2: d_inner = E·d_model)
    x = SiLU(conv1d_causal(x))                       (depthwise, width 4; its last 3 inputs are state)
    Δ, B, C = split(W_x x);  Δ = softplus(W_Δ Δ + b_Δ) (Alg. 2 lines 3-5; dt_rank = ceil(d_model/16))
    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t            (eq. 2a with ZOH Ā, B̄ ≈ Δ B as in the authors' code)
    y_t = C_t h_t + D ⊙ x_t;  y = y ⊙ SiLU(z);  out = W_out y
    negative_eigenvalues=True:  exp(Δ A) -> 2·exp(Δ A) − 1 ∈ (−1, 1)

Initialization as the paper (§3.6, App. E) / mamba_simple.py: A = −exp(A_log), A_log = log(1..N)
per channel (S4D-real); D = 1; Δ log-uniform in [1e-3, 1e-1] (floor 1e-4), b_Δ = softplus⁻¹(Δ);
W_Δ ~ U(±dt_rank^-1/2); A_log and D carry no weight decay.

Options for checkpoints (``rnnlab.interop.from_hf``): ``bias`` (W_in / W_out biases: mamba_ssm's and HF's
``use_bias``), ``conv_bias`` (``use_conv_bias``), and ``bcdt_norm_eps``: Falcon Mamba's weightless RMS norms
of Δ (before W_Δ), B and C, each over its own last dim (Zuo et al. 2024, "Falcon Mamba: The First Competitive
Attention-free 7B Language Model", Sec. 3.1: norms that stabilise training at scale); None = Mamba's block.

``init="mimetic"``: Trockman et al. 2024, "Mimetic Initialization Helps State Space Models Learn to Recall"
(arXiv 2410.11135, Sec. 3): the layer's implied attention map y_i = Σ_j C_iᵀ (Π_{j<k<=i} Ā_k) Δ_j B_j x_j is started
close to linear attention's: (1) decays near 1 (A = −exp(A_log) drawn from −U(0, 1] instead of S4D-real's −(n+1), so
Ā = exp(Δ A) >= exp(−Δ), 0.90 at the largest initial Δ = 0.1), and (2) W_C = W_B (the C rows of W_x copied from its
B rows: C_t = B_t at initialization, so C_iᵀ B_j = x_iᵀ W_Bᵀ W_B x_j is a positive semi-definite Gram kernel like
q = k attention). The range of A is this library's choice for "Ā ≈ 1" (the paper's text on its exact range could
not be retrieved here); Δ and every other parameter keep the default initialization (``mimetic_init``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import ShortConv, param_derived
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.forms import check_form
from rnnlab.ops.selective_scan import BACKENDS, TRANSITIONS, selective_scan, selective_scan_step

__all__ = ["Mamba", "SelectiveBlock", "INITS", "check_init", "mimetic_A_log"]

INITS = ("default", "mimetic")  # Mamba's / Mamba-2's ``init`` option


def check_init(init: str, who: str) -> str:
    if init not in INITS:
        raise ValueError(f"{who}: init must be one of {', '.join(INITS)}; got {init!r}")
    return init


def mimetic_A_log(*shape: int) -> Tensor:
    """Mimetic init's A_log: A = −exp(A_log) ~ −U(0, 1], so the decay exp(Δ A) starts near 1 (module docstring)."""
    return torch.log1p(-torch.rand(*shape))  # log of U(0, 1]


class SelectiveBlock(Mixer):
    """The Mamba block around a selective scan (shared by ``mamba`` and ``longhorn``):
    in-projection to (x, z), SiLU(depthwise causal conv(x)), x-projection to (Δ, B, C) with a
    low-rank Δ, the scan with D skip and SiLU(z) gate, out-projection.  Subclasses give
    ``_scan_params(dt_raw, B, C) -> (dt, A, B, C)`` and ``transition``."""

    transition = "exp"

    def __init__(self, d_model: int, d_state: int, expand: int, d_conv: int, dt_rank: int | str, backend: str, chunk_size: int,
                 bias: bool = False, conv_bias: bool = True, bcdt_norm_eps: float | None = None):
        super().__init__(d_model)
        self.bcdt_norm_eps = bcdt_norm_eps
        self.d_state, self.d_inner = d_state, expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend, self.chunk_size = check_form(backend, BACKENDS, type(self).__name__), chunk_size
        di = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * di, bias=bias)
        self.conv = ShortConv(di, d_conv, bias=conv_bias, activation="silu")
        self.x_proj = nn.Linear(di, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, di, bias=True)
        self.out_proj = nn.Linear(di, d_model, bias=bias)
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        self.D = nn.Parameter(torch.ones(di))
        no_weight_decay(self.D)

    def _scan_params(self, dt: Tensor, Bm: Tensor, Cm: Tensor):
        raise NotImplementedError

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {
            "conv": self.conv.init_state(batch_size, device=device, dtype=dtype),
            "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype or torch.float32),
        }

    def state_size(self, seq_len: int) -> int:
        return self.conv.state_size() + self.d_inner * self.d_state

    def _inputs(self, x: Tensor, state: State):
        """x (B, T, D) -> conv'd x, Δ, A, B, C, z (all (B, T, ·) but A (d_inner, N)), new conv state."""
        xi, z = self.in_proj(x).chunk(2, dim=-1)
        xi, conv_state = self.conv(xi, state["conv"])
        dt, Bm, Cm = self.x_proj(xi).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.bcdt_norm_eps is not None:  # Falcon Mamba: weightless RMS norms, in float32
            dt, Bm, Cm = (F.rms_norm(t.float(), t.shape[-1:], eps=self.bcdt_norm_eps).to(t.dtype) for t in (dt, Bm, Cm))
        dt, A, Bm, Cm = self._scan_params(self.dt_proj(dt).float(), Bm.float(), Cm.float())  # float32: they touch the state
        return xi, dt, A, Bm, Cm, z, conv_state

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        xi, dt, A, Bm, Cm, z, conv_state = self._inputs(x, state)
        y, h = selective_scan(xi, dt, A, Bm, Cm, self.D, z, initial_state=state["ssm"], transition=self.transition,
                              backend=self.backend, chunk_size=self.chunk_size)
        return self.out_proj(y.to(x.dtype)), {"conv": conv_state, "ssm": h}

    def _neg_A(self) -> Tensor:
        """−exp(A_log) (d_inner, N) for the decode kernel; a transition without A gives a stand-in it does not read."""
        return self.dt_proj.weight

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One token; on CPU without autograd the fused decode kernel between the projections (rnnlab.ops.decode)."""
        if decode.usable(x, *state.values(), self.D):
            return self._decode(x, state)
        xi, dt, A, Bm, Cm, z, conv_state = self._inputs(x, state)
        xf = xi[:, 0].float()
        y, h = selective_scan_step(xf, dt[:, 0], A, Bm[:, 0], Cm[:, 0], state["ssm"].float(), self.transition)
        y = (y + self.D.float() * xf) * F.silu(z[:, 0].float())
        return self.out_proj(y.unsqueeze(1).to(x.dtype)), {"conv": conv_state, "ssm": h}

    def _decode(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        conv_b = self.conv.bias if self.conv.bias is not None else self.D  # a stand-in when the conv has no bias
        out, (conv, h) = decode.fused_step(
            "mamba_decode", self, decode.linear(self.in_proj, x), [state["conv"], state["ssm"]],
            [self.conv.weight, conv_b, self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias, self._neg_A(), self.D],
            self.d_inner, [self.d_inner, self.dt_rank + 2 * self.d_state, self.d_inner, self.d_inner * self.d_state],
            self.conv.bias is not None, TRANSITIONS.index(self.transition),
            -1.0 if self.bcdt_norm_eps is None else float(self.bcdt_norm_eps), x.dtype == torch.float32)
        return decode.linear(self.out_proj, out), {"conv": conv, "ssm": h}

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, transition={self.transition!r}"


@register_mixer("mamba_neg", family="diagonal", defaults={"negative_eigenvalues": True}, small={"d_state": 4, "chunk_size": 16})
@register_mixer("mamba", family="diagonal", small={"d_state": 4, "chunk_size": 16})
class Mamba(SelectiveBlock):
    """Mamba mixer: x (B, T, D) -> y (B, T, D); state conv (B, d_conv-1, d_inner), ssm (B, d_inner, d_state).

    d_state: N; expand: d_inner = expand·d_model; d_conv: conv width; dt_rank: rank of the Δ
    projection ("auto" = ceil(d_model/16)); dt_min/dt_max/dt_init_floor: Δ initialization;
    negative_eigenvalues: transition 2·exp(ΔA) − 1; backend/chunk_size: selective_scan's; bias, conv_bias,
    bcdt_norm_eps, init ("default" | "mimetic"): see the module docstring.
    """

    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2, d_conv: int = 4, dt_rank: int | str = "auto",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4, negative_eigenvalues: bool = False,
                 backend: str = "auto", chunk_size: int = 64, bias: bool = False, conv_bias: bool = True,
                 bcdt_norm_eps: float | None = None, init: str = "default"):
        super().__init__(d_model, d_state, expand, d_conv, dt_rank, backend, chunk_size, bias, conv_bias, bcdt_norm_eps)
        self.init = check_init(init, "Mamba")
        self.transition = "exp_neg" if negative_eigenvalues else "exp"
        di = self.d_inner
        # b_Δ = softplus^-1(Δ0), Δ0 log-uniform in [dt_min, dt_max] (mamba_simple.py)
        dt = torch.exp(torch.rand(di) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        # S4D-real: A_n = -(n + 1)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(di, 1))
        no_weight_decay(self.A_log)
        if init == "mimetic":  # after every default draw: the default initialization is unchanged
            self.mimetic_init()

    @torch.no_grad()
    def mimetic_init(self) -> None:
        """Trockman et al. 2024 (module docstring): A near 0 (decays near 1) and W_C = W_B (C rows of x_proj = its B rows)."""
        self.A_log.copy_(mimetic_A_log(*self.A_log.shape))
        r, N = self.dt_rank, self.d_state
        self.x_proj.weight[r + N:] = self.x_proj.weight[r:r + N]

    def _scan_params(self, dt: Tensor, Bm: Tensor, Cm: Tensor):
        return F.softplus(dt), -torch.exp(self.A_log.float()), Bm, Cm

    def _neg_A(self) -> Tensor:
        return param_derived(self, "_neg_exp_A_log", lambda a: -torch.exp(a.float()), self.A_log)
