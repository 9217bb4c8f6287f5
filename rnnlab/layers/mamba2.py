"""Mamba-2 (Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality", ICML; Section 7 (the Mamba-2 block, Fig. 6) and the
SSD recurrence of eq. (2) with scalar A, Section 6 for the chunkwise algorithm).

    z, xBC, dt = x W_in                               (one input projection, parallel block)
    x, B, C = SiLU(conv1d(xBC))                       (depthwise causal conv over x, B and C)
    Δ_t = softplus(dt_t + dt_bias),  A = −exp(A_log)  (per head)
    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_tᵀ,   y_t = h_tᵀ C_t + D x_t      (SSD, per head)
    y = RMSNorm(y ⊙ SiLU(z)) W_out                    (gated norm, norm after gating, per group)

Multi-head with ``headdim`` channels per head (the "multi-value" pattern): B and C are shared
by the heads of each of ``ngroups`` groups. The SSD runs through ``chunk_simple_gla`` with
q = C, k = B (one per group, shared by its heads inside the op), v = Δ x, g = Δ A (log-decay),
scale 1; the state h (B, H, N, P) is the op's
(B, H, K, V). Initialization as the authors' mamba_ssm: A ~ U(1, 16), dt log-uniform in
[0.001, 0.1] (floor 1e-4) with dt_bias = softplus⁻¹(dt), D = 1; A_log, dt_bias, D are not
weight-decayed. State: conv buffer (B, W-1, d_inner + 2·ngroups·N) and h (B, H, N, P).
Options for checkpoints (``rnnlab.interop.from_hf``): ``bias`` (W_in / W_out biases, mamba_ssm's and HF's
``use_bias``) and ``conv_bias`` (``use_conv_bias``).

``init="mimetic"`` (Trockman et al. 2024, Sec. 3; rnnlab.layers.mamba's docstring): per head A ~ −U(0, 1] (decays
exp(Δ A) near 1), and C = B at initialization: the C rows of W_in and the C channels of the conv (weights and
biases) are copied from the B ones, so C_t = B_t exactly and every group's C Bᵀ is a positive semi-definite Gram
kernel, as linear attention with q = k. dt and every other parameter keep the default initialization.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import ShortConv, param_derived
from rnnlab.layers.mamba import check_init, mimetic_A_log
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.chunk import acc_dtype, cast
from rnnlab.ops.forms import choose
from rnnlab.ops.gla import chunk_simple_gla, fused_recurrent_simple_gla

__all__ = ["Mamba2"]


@register_mixer("mamba2", family="matrix", small={"headdim": 16, "d_state": 16, "ngroups": 2, "chunk_size": 16})
class Mamba2(Mixer):
    """x (B, T, D) -> y (B, T, D). d_state: N; expand: d_inner = expand·D; headdim: P (heads
    H = d_inner / P); ngroups: groups sharing B, C; d_conv: conv width; chunk_size: SSD chunk; bias, conv_bias:
    biases of the projections and of the conv; init: "default" or "mimetic" (module docstring)."""

    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, expand: int = 2, headdim: int = 64, ngroups: int = 1,
                 chunk_size: int = 64, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 A_init_range: tuple[float, float] = (1.0, 16.0), norm_eps: float = 1e-5, bias: bool = False, conv_bias: bool = True,
                 init: str = "default"):
        super().__init__(d_model)
        self.init = check_init(init, "Mamba2")
        d_inner = expand * d_model
        if headdim < 1 or d_inner % headdim:
            raise ValueError(f"d_inner = expand * d_model = {d_inner} must be divisible by headdim={headdim}")
        H = d_inner // headdim
        if ngroups < 1 or H % ngroups:
            raise ValueError(f"the number of heads {H} must be divisible by ngroups={ngroups}")
        self.d_inner, self.d_state, self.headdim, self.ngroups, self.num_heads = d_inner, d_state, headdim, ngroups, H
        self.chunk_size, self.norm_eps = chunk_size, norm_eps
        conv_dim = d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + H, bias=bias)
        self.conv = ShortConv(conv_dim, d_conv, bias=conv_bias, activation="silu")
        dt = torch.exp(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(H))
        self.norm_weight = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        no_weight_decay(self.dt_bias, self.A_log, self.D)
        if init == "mimetic":  # after every default draw: the default initialization is unchanged
            self.mimetic_init()

    @torch.no_grad()
    def mimetic_init(self) -> None:
        """Trockman et al. 2024 (module docstring): A near 0 per head, C = B (W_in rows and conv channels copied)."""
        self.A_log.copy_(mimetic_A_log(self.num_heads))
        di, GN = self.d_inner, self.ngroups * self.d_state
        b, c = slice(2 * di, 2 * di + GN), slice(2 * di + GN, 2 * di + 2 * GN)  # rows of W_in: z, x, B, C, dt
        self.in_proj.weight[c] = self.in_proj.weight[b]
        if self.in_proj.bias is not None:
            self.in_proj.bias[c] = self.in_proj.bias[b]
        b, c = slice(di, di + GN), slice(di + GN, di + 2 * GN)  # channels of the conv: x, B, C
        self.conv.weight[c] = self.conv.weight[b]
        if self.conv.bias is not None:
            self.conv.bias[c] = self.conv.bias[b]

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"conv": self.conv.init_state(batch_size, device, dtype),
                "h": torch.zeros(batch_size, self.num_heads, self.d_state, self.headdim, device=device, dtype=dtype or torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return self.conv.state_size() + self.num_heads * self.d_state * self.headdim

    def _gated_norm(self, y: Tensor, z: Tensor) -> Tensor:
        """RMSNorm(y ⊙ SiLU(z)) over groups of d_inner / ngroups channels, weight (d_inner,); in y's dtype (float32
        or float64)."""
        u = (y * F.silu(cast(z, y.dtype))).unflatten(-1, (self.ngroups, -1))
        return F.rms_norm(u, u.shape[-1:], eps=self.norm_eps).flatten(-2) * cast(self.norm_weight, y.dtype)

    def _mix(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        return self.mix_projected(decode.linear(self.in_proj, x), state, form, x.dtype)

    def mix_projected(self, zxbcdt: Tensor, state: State, form: str, dtype: torch.dtype) -> tuple[Tensor, State]:
        """The block after its input projection: zxbcdt (B, T, 2·d_inner + 2·G·N + H) -> (y (B, T, D), state); dtype:
        the input's (implicit_mamba2 adds its injection to the projection before this)."""
        H, G, N = self.num_heads, self.ngroups, self.d_state
        sizes = [self.d_inner, self.d_inner + 2 * G * N, H]
        z, xBC, dt, extra = zxbcdt.split(sizes + [zxbcdt.shape[-1] - sum(sizes)], -1)  # extra: a subclass's (log_linear_mamba2)
        xBC, conv_state = self.conv(xBC, state["conv"])
        xs, Bm, Cm = xBC.split([self.d_inner, G * N, G * N], -1)
        xs = rearrange(xs, "b t (h p) -> b t h p", h=H)
        # (B, T, G, N): the op shares each group's B, C (its k, q) with the group's H / G heads: one C Bᵀ per group
        Bm, Cm = Bm.unflatten(-1, (G, N)), Cm.unflatten(-1, (G, N))
        acc = acc_dtype(zxbcdt)  # float32 (float64 for a float64 module)
        delta = F.softplus(cast(dt, acc) + cast(self.dt_bias, acc))  # (B, T, H)
        g = self._A(acc) * delta  # log-decay Δ A <= 0
        v = cast(cast(xs, acc) * delta[..., None], dtype)
        y, core = self._ssd(Cm, Bm, v, g, extra, state, form)
        y = cast(y, acc) + cast(self.D, acc)[:, None] * cast(xs, acc)  # D skip
        y = self._gated_norm(y.flatten(-2), z)  # (B, T, H·P)
        out = decode.linear(self.out_proj, cast(y, dtype))
        return out, {"conv": cast(conv_state, state["conv"].dtype), **core}

    def _A(self, acc: torch.dtype) -> Tensor:
        """A = -exp(A_log) (H,) in acc; without autograd computed once while A_log is unchanged (parts.param_derived)."""
        if torch.is_grad_enabled() and self.A_log.requires_grad:
            return -torch.exp(self.A_log.to(acc))
        return param_derived(self, f"_neg_exp_A_log_{acc}", lambda a: -torch.exp(a.to(acc)), self.A_log)

    def _ssd(self, Cm: Tensor, Bm: Tensor, v: Tensor, g: Tensor, extra: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        """The SSD core: C, B (B, T, G, N), v = Δx (B, T, H, P), g = ΔA (B, T, H) -> (y (B, T, H, P), its state entries)."""
        kw = dict(scale=1.0, initial_state=cast(state["h"], g.dtype), output_final_state=True)
        op = choose(form, {"chunk": partial(chunk_simple_gla, chunk_size=self.chunk_size), "recurrent": fused_recurrent_simple_gla}, "mamba2")
        y, h = op(Cm, Bm, v, g, **kw)
        return y, {"h": cast(h, state["h"].dtype)}

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y, state): chunkwise SSD."""
        return self._mix(x, state, "chunk")

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y, state): one recurrent SSD step (on CPU without autograd the fused decode kernel,
        rnnlab.ops.decode, from the projection to the output norm)."""
        if type(self)._ssd is Mamba2._ssd and decode.usable(x, *state.values(), self.A_log, float64=True):
            w = self.norm_weight  # the stand-in for the conv's bias when it has none (never read then)
            out, (conv, h) = decode.fused_step(
                "ssd_decode", self, decode.linear(self.in_proj, x), [state["conv"], state["h"]],
                [self.conv.weight, w if self.conv.bias is None else self.conv.bias, self.dt_bias, self._A(x.dtype), self.D, w],
                self.d_inner, [state["conv"].shape[-1]], self.conv.bias is not None, self.ngroups, self.norm_eps)
            return decode.linear(self.out_proj, out), {"conv": conv, "h": h}
        return self._mix(x, state, "recurrent")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_inner={self.d_inner}, heads={self.num_heads}x{self.headdim}, d_state={self.d_state}, ngroups={self.ngroups}"
