"""DeltaNet (Yang, Wang, Zhang, Shen & Kim 2024, "Parallelizing Linear Transformers with the Delta
Rule over Sequence Length"), and the shared body of the delta-rule mixers.

    q, k, v = SiLU(ShortConv(W_q x)), SiLU(ShortConv(W_k x)), SiLU(ShortConv(W_v x))    per head
    q, k = q / ‖q‖, k / ‖k‖;    β = σ(W_β x)  (2σ(W_β x) with negative_eigenvalues, Grazzi et al. 2024)
    S_t = (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,   o_t = S_tᵀ q_t / √d_k      (paper eq. 1)
    y = W_o RMSNorm_head(o)

This is flash-linear-attention's DeltaNet layer configuration (short conv of width 4 with SiLU on
q, k, v; L2 norm on q and k; sigmoid β; per-head output RMSNorm). ``_DeltaRuleMixer`` holds the
body that Gated DeltaNet (gated_deltanet.py) and DeltaProduct (deltaproduct.py) share; they differ
only in flags (forget gate, output gate, Householder steps per token).
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State, no_weight_decay
from rnnlab.layers.parts import GatedRMSNorm, RMSNorm, ShortConv, fused_conv_step, fused_linear, param_derived
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.chunk import cast
from rnnlab.ops.delta import chunk_delta_product, chunk_gated_delta_rule, fused_recurrent_delta_product, fused_recurrent_gated_delta_rule, l2norm
from rnnlab.ops.forms import choose

__all__ = ["DeltaNet"]


class _DeltaRuleMixer(Mixer):
    """Shared body: projections, short convs, L2-normalized q/k, β, optional Mamba-2 forget gate,
    n_h keys/values/βs per token (projection rows ordered (n_h, H, ·) as in flash-linear-attention,
    so weights load across), per-head output norm (gated or not), output projection.

    x (B, T, D) -> y (B, T, D). State: short-conv buffers conv_q (B, W-1, H·K), conv_k
    (B, W-1, H·n_h·K), conv_v (B, W-1, HV·n_h·V) and the matrix memory S (B, HV, K, V), float32.
    ``num_v_heads`` HV = G·H (n_h = 1 only): grouped value heads, each query/key head shared by G consecutive value
    heads, which carry their own β, gate, state and output norm (the ops repeat q and k; rnnlab.ops.delta).
    """

    def __init__(self, d_model: int, num_heads: int, head_dim: int | None, expand_v: float, conv_size: int, chunk_size: int,
                 negative_eigenvalues: bool, num_householder: int, forget_gate: bool, output_gate: bool, norm_eps: float = 1e-5,
                 num_v_heads: int | None = None):
        super().__init__(d_model)
        head_dim = d_model // num_heads if head_dim is None else head_dim
        if num_heads < 1 or head_dim < 1:
            raise ValueError(f"num_heads and head_dim must be positive, got num_heads={num_heads}, head_dim={head_dim}")
        if num_householder < 1:
            raise ValueError(f"num_householder must be >= 1, got {num_householder}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.num_heads, self.head_k = num_heads, head_dim
        self.head_v = int(head_dim * expand_v)
        if self.head_v < 1:
            raise ValueError(f"expand_v * head_dim must be >= 1, got {expand_v} * {head_dim}")
        HV = num_heads if num_v_heads is None else num_v_heads
        if HV < 1 or HV % num_heads or (HV != num_heads and num_householder != 1):
            raise ValueError(f"num_v_heads must be a positive multiple of num_heads={num_heads} (grouped value heads, one "
                             f"Householder step per token), got {num_v_heads} with num_householder={num_householder}")
        self.nh, self.chunk_size, self.negative_eigenvalues, self.num_v_heads = num_householder, chunk_size, negative_eigenvalues, HV
        H, K, V, nh = num_heads, self.head_k, self.head_v, num_householder
        self.q_proj = nn.Linear(d_model, H * K, bias=False)
        self.k_proj = nn.Linear(d_model, H * nh * K, bias=False)
        self.v_proj = nn.Linear(d_model, HV * nh * V, bias=False)
        self.b_proj = nn.Linear(d_model, HV * nh, bias=False)
        self.q_conv = ShortConv(H * K, conv_size, bias=False, activation="silu")
        self.k_conv = ShortConv(H * nh * K, conv_size, bias=False, activation="silu")
        self.v_conv = ShortConv(HV * nh * V, conv_size, bias=False, activation="silu")
        self.forget_gate = forget_gate
        if forget_gate:  # Mamba-2 gate (Gated DeltaNet §3.4): g = −exp(A_log) · softplus(W_a x + dt_bias)
            self.a_proj = nn.Linear(d_model, HV, bias=False)
            A = torch.empty(HV).uniform_(0, 16)
            self.A_log = nn.Parameter(torch.log(A))
            dt_min, dt_max = 0.001, 0.1
            dt = torch.exp(torch.rand(HV) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
            self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            no_weight_decay(self.A_log, self.dt_bias)
        if output_gate:
            self.g_proj = nn.Linear(d_model, HV * V, bias=False)
            self.o_norm = GatedRMSNorm(V, eps=norm_eps, activation="silu")
        else:
            self.g_proj = None
            self.o_norm = RMSNorm(V, eps=norm_eps)
        self.o_proj = nn.Linear(HV * V, d_model, bias=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or torch.float32
        return {
            "conv_q": self.q_conv.init_state(batch_size, device, dtype),
            "conv_k": self.k_conv.init_state(batch_size, device, dtype),
            "conv_v": self.v_conv.init_state(batch_size, device, dtype),
            "S": torch.zeros(batch_size, self.num_v_heads, self.head_k, self.head_v, device=device, dtype=dtype),
        }

    def state_size(self, seq_len: int) -> int:
        return self.q_conv.state_size() + self.k_conv.state_size() + self.v_conv.state_size() + self.num_v_heads * self.head_k * self.head_v

    def _in_layers(self) -> list[nn.Linear]:
        return [self.q_proj, self.k_proj, self.v_proj, self.b_proj] + [p for p in (getattr(self, "a_proj", None), self.g_proj) if p is not None]

    def _mix(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        H, HV, nh = self.num_heads, self.num_v_heads, self.nh
        q, k, v, b, *gates = fused_linear(x, self._in_layers())
        (q, cq), (k, ck), (v, cv) = fused_conv_step([q, k, v], [self.q_conv, self.k_conv, self.v_conv],
                                                    [state["conv_q"], state["conv_k"], state["conv_v"]])
        q = cast(l2norm(rearrange(q, "b t (h k) -> b t h k", h=H)), x.dtype)
        k = cast(l2norm(rearrange(k, "b t (n h k) -> b t h n k", h=H, n=nh)), x.dtype)
        v = rearrange(v, "b t (n h v) -> b t h n v", h=HV, n=nh)
        beta = torch.sigmoid(cast(rearrange(b, "b t (n h) -> b t h n", h=HV), torch.float32))
        if self.negative_eigenvalues:
            beta = 2 * beta
        g = None
        if self.forget_gate:
            g = self._A() * F.softplus(cast(gates[0], torch.float32) + cast(self.dt_bias, torch.float32))  # (B, T, HV)
        o, core = self._core(q, k, v, g, beta, x, state, form)
        if self.g_proj is not None:
            o = self.o_norm(o, rearrange(gates[-1], "b t (h v) -> b t h v", h=HV))
        else:
            o = self.o_norm(o)
        y = decode.linear(self.o_proj, cast(o.flatten(-2), x.dtype))  # (B, T, H·V)
        return y, {"conv_q": cast(cq, state["conv_q"].dtype), "conv_k": cast(ck, state["conv_k"].dtype),
                   "conv_v": cast(cv, state["conv_v"].dtype), **core}

    def _A(self) -> Tensor:
        """-exp(A_log) (HV,) float32; without autograd computed once while A_log is unchanged (parts.param_derived)."""
        if torch.is_grad_enabled() and self.A_log.requires_grad:
            return -self.A_log.float().exp()
        return param_derived(self, "_neg_exp_A_log", lambda a: -a.float().exp(), self.A_log)

    def _core(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, beta: Tensor, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        """The recurrence: q (B, T, H, K), k (B, T, H, n_h, K), v (B, T, H, n_h, V), g (B, T, H) or None, beta (B, T, H, n_h)
        -> (o (B, T, H, V), its state entries); x (the layer input) for subclasses (log_linear_gated_deltanet)."""
        kw = dict(initial_state=cast(state["S"], torch.float32), output_final_state=True)
        if self.nh == 1:
            op = choose(form, {"chunk": partial(chunk_gated_delta_rule, chunk_size=self.chunk_size),
                               "recurrent": fused_recurrent_gated_delta_rule}, type(self).__name__)
            o, S = op(q, k[:, :, :, 0], v[:, :, :, 0], g, beta[..., 0], **kw)
        else:
            op = choose(form, {"chunk": partial(chunk_delta_product, chunk_size=self.chunk_size),
                               "recurrent": fused_recurrent_delta_product}, type(self).__name__)
            o, S = op(q, k, v, g, beta, self.nh, **kw)
        return o, {"S": cast(S, state["S"].dtype)}

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y (B, T, D), state): chunkwise WY form."""
        return self._mix(x, state, "chunk")

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y (B, 1, D), state): the rank-one recurrent update (on CPU without autograd the fused decode
        kernel, rnnlab.ops.decode, from the projection to the output norm)."""
        if type(self)._core is _DeltaRuleMixer._core and decode.usable(x, *state.values(), self.o_proj.weight):
            return self._decode(x, state)
        return self._mix(x, state, "recurrent")

    def _decode(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        keys = ["conv_q", "conv_k", "conv_v", "S"]
        w = self.o_norm.weight  # the stand-in for the forget gate's parameters when there is none (never read then)
        gate = [self._A().to(x.dtype), self.dt_bias] if self.forget_gate else [w, w]
        K, V, HV = self.head_k, self.head_v, self.num_v_heads
        o, new = decode.fused_step(
            "delta_decode", self, fused_linear(x, self._in_layers(), whole=True), [state[k] for k in keys],
            [self.q_conv.weight, self.k_conv.weight, self.v_conv.weight, *gate, w], HV * V,
            [self.num_heads * K, self.nh * self.num_heads * K, self.nh * HV * V, V],
            self.num_heads, self.nh, self.o_norm.eps, 2.0 if self.negative_eigenvalues else 1.0, self.forget_gate, self.g_proj is not None)
        return decode.linear(self.o_proj, o), dict(zip(keys, new))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, num_v_heads={self.num_v_heads}, head_k={self.head_k}, head_v={self.head_v}, "
                f"num_householder={self.nh}, forget_gate={self.forget_gate}, negative_eigenvalues={self.negative_eigenvalues}")


@register_mixer("deltanet_neg", family="delta", defaults={"negative_eigenvalues": True}, small={"num_heads": 2, "chunk_size": 16})
@register_mixer("deltanet", family="delta", small={"num_heads": 2, "chunk_size": 16})
class DeltaNet(_DeltaRuleMixer):
    """DeltaNet (Yang et al. 2024): x (B, T, D) -> y (B, T, D); see the module docstring.

    num_heads: heads H; head_dim: key size K (default D / H); expand_v: V = expand_v · K;
    conv_size: short-conv width; chunk_size: chunk of the WY form; negative_eigenvalues: β = 2σ(·).
    """

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None, expand_v: float = 1.0, conv_size: int = 4,
                 chunk_size: int = 64, negative_eigenvalues: bool = False):
        super().__init__(d_model, num_heads, head_dim, expand_v, conv_size, chunk_size, negative_eigenvalues,
                         num_householder=1, forget_gate=False, output_gate=False)
