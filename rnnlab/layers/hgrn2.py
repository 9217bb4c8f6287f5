"""HGRN2 (Qin, Yang, Sun, Shen, Li, Sun & Zhong 2024, "HGRN2: Gated Linear RNNs with State
Expansion", COLM; Section 3, eqs. 3-4): HGRN's gated linear recurrence with the state expanded
by an outer product, i.e. GLA with the key tied to the forget gate.

    f_t = γ + (1 − γ) σ(x_t W_f)                 forget gate with lower bound γ, per key dim
    i_t = x_t W_i,   o_t = SiLU(x_t W_q)          input (value) and output gate (query)
    S_t = Diag(f_t) S_{t-1} + (1 − f_t) i_tᵀ     (B, H, K, V): k_t = 1 − f_t, outer-product expansion
    y_t = RMSNorm(S_tᵀ o_t) W_O

Head size K = V = ``expand_ratio`` (the state expansion; the paper uses 128), H = D / expand_ratio.
The decay is carried in log space: log f_t = log(γ + (1 − γ) σ(·)) (logsigmoid when γ = 0),
and k_t = (1 − γ) σ(−x_t W_f) without cancellation. Computed by ``chunk_gla`` (scale 1).
RMSNorm over all heads' outputs and the SiLU output gate as flash-linear-attention's HGRN2 layer.

Lower bound: in the paper γ is learned per layer and channel as a cumulative softmax over the
layers (0 in the first layer, increasing with depth). A mixer does not see its layer index, so
``lower_bound`` is a fixed float in [0, 1) per mixer, set per layer through the model's
per-layer mixer kwargs (``rnnlab.layers.hgrn.hgrn_lower_bounds(n_layers)`` gives the paper's
initial schedule k / n_layers, as for HGRN). Simplification: that floor is not learned.
"""
from __future__ import annotations

from functools import partial
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.parts import RMSNorm, fused_linear
from rnnlab.layers.registry import register_mixer
from rnnlab.ops import decode
from rnnlab.ops.forms import choose
from rnnlab.ops.gla import chunk_gla, fused_recurrent_gla

__all__ = ["HGRN2"]


@register_mixer("hgrn2", family="matrix", small={"expand_ratio": 16, "chunk_size": 16})
class HGRN2(Mixer):
    """x (B, T, D) -> y (B, T, D). State: S (B, H, K, K) float32, K = expand_ratio, H = D / K.
    lower_bound: γ in [0, 1); chunk_size: chunk of the parallel form."""

    def __init__(self, d_model: int, expand_ratio: int = 128, lower_bound: float = 0.0, chunk_size: int = 64, norm_eps: float = 1e-6):
        super().__init__(d_model)
        if expand_ratio < 1 or d_model % expand_ratio:
            raise ValueError(f"d_model={d_model} must be divisible by expand_ratio={expand_ratio} (the head size)")
        if not (isinstance(lower_bound, (int, float)) and 0.0 <= lower_bound < 1.0):
            raise ValueError(f"lower_bound must be a float in [0, 1), got {lower_bound!r}")
        self.num_heads, self.head_dim = d_model // expand_ratio, expand_ratio
        self.lower_bound, self.chunk_size = float(lower_bound), chunk_size
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.f_proj = nn.Linear(d_model, d_model, bias=False)
        self.i_proj = nn.Linear(d_model, d_model, bias=False)
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        K = self.head_dim
        return {"S": torch.zeros(batch_size, self.num_heads, K, K, device=device, dtype=dtype or torch.float32)}

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.head_dim**2

    def _mix(self, x: Tensor, state: State, form: str) -> tuple[Tensor, State]:
        split = lambda t: t.unflatten(-1, (self.num_heads, -1))  # (B, T, H, d)  # noqa: E731
        q, f, v = fused_linear(x, [self.q_proj, self.f_proj, self.i_proj])  # one matmul without autograd (a decode token: one kernel)
        q, f = split(F.silu(q)), split(f.float())
        gam = self.lower_bound
        if gam == 0.0:
            g, k = F.logsigmoid(f), torch.sigmoid(-f)
        else:
            g, k = torch.log(gam + (1 - gam) * torch.sigmoid(f)), (1 - gam) * torch.sigmoid(-f)
        v = split(v)
        kw = dict(scale=1.0, initial_state=state["S"].float(), output_final_state=True)
        k = k.to(x.dtype)
        op = choose(form, {"chunk": partial(chunk_gla, chunk_size=self.chunk_size), "recurrent": fused_recurrent_gla}, "hgrn2")
        o, S = op(q, k, v, g, **kw)
        y = decode.linear(self.o_proj, self.norm(o.flatten(-2)))  # o (B, T, H, d)
        return y, {"S": S.to(state["S"].dtype)}

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y, state): chunkwise form."""
        return self._mix(x, state, "chunk")

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y, state): one recurrent update; on CPU without autograd the gates, the update, the read-out
        and the norm between the projections in the fused decode kernel (rnnlab.ops.decode)."""
        if decode.usable(x, state["S"], self.norm.weight):
            proj = fused_linear(x, [self.q_proj, self.f_proj, self.i_proj], whole=True)
            out, (S,) = decode.fused_step("hgrn2_decode", self, proj, [state["S"]], [self.norm.weight], self.d_model,
                                          [3 * self.d_model], self.lower_bound, self.norm.eps)
            return decode.linear(self.o_proj, out), {"S": S}
        return self._mix(x, state, "recurrent")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, lower_bound={self.lower_bound}"
