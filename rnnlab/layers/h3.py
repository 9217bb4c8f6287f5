"""H3, Hungry Hungry Hippos (Fu, Dao, Saab, Thomas, Rudra & Ré 2023, "Hungry Hungry Hippos: Towards Language
Modeling with State Space Models", §3.1, Algorithm 1).

    Q, K, V = x W_Q, x W_K, x W_V                       (B, T, D), heads of size d_h = head_dim
    K̄ = SSM_shift(K):  K̄_t = Σ_{i<N} C_i K_{t−i} + D_K ⊙ K_t       (A = shift matrix, B = e_1: a learned
                                                                    causal kernel of N taps per channel)
    KV_t = K̄_t ⊗ V_t per head (d_h × d_h; the product K̄ ⊙ V for d_h = 1)
    Y = SSM_diag(KV) + D ⊙ KV                           (one diagonal SSM per head, shared by its d_h² entries)
    O_t = Σ_{d1} Q_{t,d1} Y_{t,d1,:} per head, out = O W_O

SSM_diag is S4D (rnnlab.layers.s4d): S4D-Lin A_n = −1/2 + iπn, ZOH, B = 1 absorbed into C ~ CN(0, 1),
log Δ ~ U(log 1e-3, log 1e-1), D ~ N(0, 1); SSM_shift's C starts as torch's Conv1d init (U(±1/√N)),
D_K ~ N(0, 1) — the authors' code, whose shift SSM also carries the D term. Training runs both SSMs as FFT
convolutions (the shift kernel on the state's last N − 1 inputs followed by the new ones; S4D's Vandermonde kernel
with its initial-state terms), decoding as recurrences: the shift register (the last N − 1 keys) and the
diagonal state. A, log Δ get no weight decay.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import fused_linear, param_derived
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.conv import causal_conv1d, causal_conv1d_ref
from rnnlab.ops.forms import check_form
from rnnlab.ops.ssm_kernels import diag_conv, fft_causal_conv, zoh_diag

__all__ = ["H3"]
BACKENDS = ("fft", "reference")  # rnnlab.ops.forms


@register_mixer("h3", family="diagonal", small={"d_state": 8})
class H3(Mixer):
    """H3 mixer: x (B, T, D) -> y (B, T, D); state {"k": (B, d_state − 1, D) the shift register,
    "h": (B, D·head_dim, d_state/2, 2) the diagonal SSM's complex state as real pairs}.

    d_state: N (shift taps; N/2 complex modes of the diagonal SSM); head_dim: d_h; dt_min/dt_max: the Δ
    initialization; backend: "fft" (both SSMs as FFT convolutions) or "reference" (both as recurrences)."""

    def __init__(self, d_model: int, d_state: int = 64, head_dim: int = 1, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 backend: str = "fft"):
        super().__init__(d_model)
        self.backend = check_form(backend, BACKENDS, "h3")
        if d_state % 2 or d_state < 2:
            raise ValueError(f"h3 d_state must be even and >= 2 (conjugate pairs), got {d_state}")
        if d_model % head_dim:
            raise ValueError(f"h3 head_dim must divide d_model = {d_model}, got {head_dim}")
        D, N2 = d_model, d_state // 2
        H = D // head_dim
        self.d_state, self.head_dim, self.num_heads = d_state, head_dim, H
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.shift_C = nn.Parameter(torch.empty(D, d_state).uniform_(-1 / math.sqrt(d_state), 1 / math.sqrt(d_state)))
        self.shift_D = nn.Parameter(torch.randn(D))
        self.log_A_real = nn.Parameter(torch.log(0.5 * torch.ones(H, N2)))
        self.A_imag = nn.Parameter((math.pi * torch.arange(N2, dtype=torch.float32)).repeat(H, 1))
        self.log_dt = nn.Parameter(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, N2, dtype=torch.cfloat)))
        self.D = nn.Parameter(torch.randn(H))
        self.out_proj = nn.Linear(D, D)
        no_weight_decay(self.log_A_real, self.A_imag, self.log_dt)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {"k": torch.zeros(batch_size, self.d_state - 1, self.d_model, device=device, dtype=torch.float32),
                "h": torch.zeros(batch_size, self.d_model * self.head_dim, self.d_state // 2, 2, device=device, dtype=torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return (self.d_state - 1) * self.d_model + self.d_model * self.head_dim * self.d_state

    def _diag(self):
        """The diagonal SSM per (head, d1, d2) channel: C, ΔA, B̄ (D·d_h, N/2) complex64 (S4D's kernel runs in float32,
        for a float64 module too)."""
        f = torch.float32
        A = torch.complex(-torch.exp(self.log_A_real.to(f)), self.A_imag.to(f))
        dtA, Bbar = zoh_diag(torch.exp(self.log_dt.to(f)), A)
        C = torch.view_as_complex(self.C.to(f).contiguous())
        return tuple(t.repeat_interleave(self.head_dim ** 2, 0) for t in (C, dtA, Bbar))

    def _shift_kernel(self, f: torch.dtype) -> Tensor:
        """(D, N) in lag order: tap 0 (the current key) carries D_K."""
        return torch.cat([self.shift_C[:, :1] + self.shift_D[:, None], self.shift_C[:, 1:]], 1).to(f)

    def _constants(self, f: torch.dtype):
        """(shift kernel, (C, ΔA, B̄), D per channel) of the parameters; without autograd computed once per parameter
        change (a decode step would otherwise rebuild them every token)."""
        make = lambda *_: (self._shift_kernel(f), self._diag(), self.D.to(f).repeat_interleave(self.head_dim ** 2))  # noqa: E731
        if torch.is_grad_enabled():
            return make()
        return param_derived(self, f"_constants_{f}", make, *self._ssm_params())

    def _ssm_params(self) -> tuple[Tensor, ...]:
        """The parameters the two SSMs' constants derive from (their caches' key)."""
        return self.shift_C, self.shift_D, self.log_A_real, self.A_imag, self.log_dt, self.C, self.D

    def _mix(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        f = torch.float32  # the SSMs' compute dtype (S4D's policy)
        q, k, v = (p(x).to(f) for p in (self.q_proj, self.k_proj, self.v_proj))
        (W, (C, dtA, Bbar), Dr), k0 = self._constants(f), state["k"].to(f)
        if form == "fft":  # the shift SSM as one FFT convolution over [state, keys]
            ks = torch.cat([k0, k], 1)
            kbar, k_state = fft_causal_conv(ks, W)[:, k0.shape[1]:], ks[:, ks.shape[1] - k0.shape[1]:]
        else:
            conv = causal_conv1d if x.shape[1] == 1 else causal_conv1d_ref
            kbar, k_state = conv(k, W.flip(-1), None, k0)
        d = self.head_dim
        kv = (rearrange(kbar, "b t (h i) -> b t h i 1", i=d) * rearrange(v, "b t (h j) -> b t h 1 j", j=d)).flatten(2)
        h = torch.view_as_complex(state["h"].to(f).contiguous())
        if form == "fft":
            fresh = not h.requires_grad and not bool(h.any())  # zero state: skip its output terms
            y, h = diag_conv(kv, C, dtA, Bbar, None if fresh else h)
        else:
            ys = []
            for ut in kv.unbind(1):
                h = torch.exp(dtA) * h + Bbar * ut[..., None]
                ys.append(2 * (h * C).sum(-1).real)
            y = torch.stack(ys, 1)
        y = y + Dr * kv  # (B, T, H·d·d)
        o = (rearrange(y, "b t (h i j) -> b t h i j", i=d, j=d) * rearrange(q, "b t (h i) -> b t h i 1", i=d)).sum(-2)
        out = self.out_proj(rearrange(o, "b t h j -> b t (h j)").to(x.dtype))
        return out, {"k": k_state, "h": torch.view_as_real(h)}

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self._mix(x, state, self.backend)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if decode.usable(x, *state.values(), *self.parameters()):  # one token: the fused kernel (rnnlab.ops.decode)
            o, (k, h) = decode.fused_step("h3_decode", self, fused_linear(x, [self.q_proj, self.k_proj, self.v_proj], whole=True),
                                          [state["k"], state["h"]], list(self._decode_constants()), self.d_model, [self.d_model],
                                          self.head_dim)
            return decode.linear(self.out_proj, o), {"k": k, "h": h}
        return self._mix(x, state, "reference")

    def _decode_constants(self) -> tuple[Tensor, ...]:
        """The kernel's view of ``_constants``: the shift taps in time order, e^{ΔA}, B̄ and C as real pairs, D."""
        def make(*_):
            W, (C, dtA, Bbar), Dr = self._constants(torch.float32)
            pairs = lambda z: torch.view_as_real(z).contiguous()  # noqa: E731
            return W.flip(-1).contiguous(), pairs(torch.exp(dtA)), pairs(Bbar), pairs(C), Dr.contiguous()
        return param_derived(self, "_decode_constants_", make, *self._ssm_params())

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, head_dim={self.head_dim}, backend={self.backend}"
