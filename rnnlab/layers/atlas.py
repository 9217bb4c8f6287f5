"""ATLAS (Behrouz et al. 2025, "ATLAS: Learning to Optimally Memorize the Context at Test Time", arXiv 2505.23735v1) as a
token mixer: Titans' conv-fed memory body (titans.ConvMemoryMixer) with ATLAS's memory rule (rnnlab/ops/atlas.py):

    q, k, v = SiLU(ShortConv(W x)) per head; q, k ℓ2-normalized (as Titans, §4.4 there)
    φ(x) = [a_0, a_1 x, a_2 x ⊗ x, ...] of degree p (``feature_degree``; §3.1), a_i learned
    ℓ_t(M) = Σ_{i=t−c+1}^{t} γ_i ‖M(φ(k_i)) − v_i‖²                         (Omega rule, eq. 9; c = ``window``)
    S_t = θ_t S_{t−1} + ∇ℓ_t(M_{t'}),   M_t = α_t M_{t−1} − η_t NS_5(S_t)    (eqs. 32-33, Newton–Schulz)
    y_t = M_t(φ(q_t));   out = W_o (RMSNorm_head(y) ⊙ SiLU(W_g x))
    η_t = base_lr · σ(·), θ_t = σ(·), α_t = σ(·), γ_t = σ(·) per token and head (linear in x_t)

Every gradient of a chunk of b tokens is taken at the memory the chunk started from (the paper's parallel form, §5.1;
``chunk_size=1`` is the sequential rule); the state buffers the window's last c − 1 keys, values and γ, so a sequence
split anywhere equals the whole. The memory is an MLP of depth 1 or 2 (GELU, hidden ``memory_expansion`` · hd, no
biases), learned initial weights N(0, 1/fan_in).

Ours, said here and in the README: γ_i one weight per token (not per (i, t) pair); the feature coefficients start at
a_i = 1/√(i!), so φ(q) · φ(k) is the degree-p Taylor polynomial of exp(q · k) (the paper's motivation for the map);
c = 4, p = 2, expansion 1, and the gate initializations η ≈ base_lr/2 = 0.05, θ ≈ 0.5, α ≈ 0.99, γ ≈ 0.5. Since
Newton–Schulz gives updates of spectral norm about 1, ‖M‖ stays near η/(1 − α) per matrix. φ widens the memory's input
from hd to Σ_{i<=p} hd^i (273 at hd = 16 and p = 2, 4161 at hd = 64): the state and the chunk form's per-token memories
grow with it. ``newton_schulz``: "cubic" (default: the classic (1.5, −0.5, 0), 5 steps), "muon" (the paper's Muon, its
quintic (3.4445, −4.7750, 2.0315)) or "none" (OmegaNet with momentum). Why not Muon's quintic by default, measured:
its slope 3.4445 at 0 per step amplifies the rounding of the momentum's small singular values up to ~480x, so the
packed and separate float32 gradients (of k_proj) differed by 1.02e-5, over the conformance suite's 1e-5; with
"muon" decoding and splits still equal the parallel form in float32, and every form is exact in float64.

State: conv_q/conv_k/conv_v (B, W−1, H·hd); the memory at the chunk start {"w1", ...}, the memory {"m_w1", ...},
the momentum {"s_w1", ...}; the window buffer "buf_k", "buf_v" (B, H, c−1, hd), "buf_gamma" (B, H, c−1); "pos".
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.layers.base import State, no_weight_decay
from rnnlab.layers.registry import register_mixer
from rnnlab.layers.titans import ConvMemoryMixer
from rnnlab.ops.atlas import chunk_atlas, feature_dim, fused_recurrent_atlas
from rnnlab.ops.lact import NEWTON_SCHULZ

__all__ = ["Atlas"]


@register_mixer("atlas", family="ttt", small={"num_heads": 2, "chunk_size": 8, "window": 3})
class Atlas(ConvMemoryMixer):
    """ATLAS: x (B, T, D) -> y (B, T, D) (module docstring). num_heads: H (hd = D / H); window: c; feature_degree: p
    (None: no feature map); memory_depth: 1 or 2; memory_expansion: hidden / hd; chunk_size: b; base_lr: η's ceiling;
    newton_schulz: "muon", "cubic" or "none"; conv_size: short conv.
    State floats: 3·(W−1)·H·hd + 3·H·|M| + H·(c−1)·(2·hd + 1) + 1, |M| = Kφ·hd (depth 1) or Kφ·e·hd + e·hd² (depth 2),
    Kφ = Σ_{i<=p} hd^i."""

    ops = {"chunk": chunk_atlas, "recurrent": fused_recurrent_atlas}
    carried = ("m_", "s_")

    def __init__(self, d_model: int, num_heads: int = 4, window: int = 4, feature_degree: int | None = 2, memory_depth: int = 2,
                 memory_expansion: int = 1, chunk_size: int = 16, base_lr: float = 0.1, newton_schulz: str = "cubic", conv_size: int = 4):
        if memory_depth not in (1, 2) or window < 1 or (feature_degree is not None and feature_degree < 1):
            raise ValueError(f"memory_depth must be 1 or 2, window >= 1, feature_degree None or >= 1; got {memory_depth}, {window}, "
                             f"{feature_degree}")
        if newton_schulz not in NEWTON_SCHULZ:
            raise ValueError(f"newton_schulz must be one of {tuple(NEWTON_SCHULZ)}, got {newton_schulz!r}")
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        hd = d_model // num_heads
        Kf = feature_dim(hd, feature_degree)
        dims = [Kf, hd] if memory_depth == 1 else [Kf, memory_expansion * hd, hd]
        super().__init__(d_model, num_heads, None, conv_size, 4, dims, False, chunk_size, base_lr, None, "silu")
        self.window, self.newton_schulz = window, newton_schulz
        H = num_heads
        with torch.no_grad():  # η, θ, α, γ (module docstring)
            self.gate_proj.bias.copy_(torch.tensor([0.0] * H + [0.0] * H + [math.log(99.0)] * H + [0.0] * H))
        self.feature_coef = None
        if feature_degree is not None:
            self.feature_coef = nn.Parameter(torch.tensor([1 / math.sqrt(math.factorial(i)) for i in range(feature_degree + 1)]))
            no_weight_decay(self.feature_coef)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        state = super().init_state(batch_size, device, dtype)
        dtype, H, c, hd = dtype or torch.float32, self.num_heads, self.window - 1, self.head_dim
        state.update(buf_k=torch.zeros(batch_size, H, c, hd, device=device, dtype=dtype),
                     buf_v=torch.zeros(batch_size, H, c, hd, device=device, dtype=dtype),
                     buf_gamma=torch.zeros(batch_size, H, c, device=device, dtype=dtype))
        return state

    def state_size(self, seq_len: int) -> int:
        return super().state_size(seq_len) + self.num_heads * (self.window - 1) * (2 * self.head_dim + 1)

    def _op_inputs(self, pre: Tensor) -> dict:
        return dict(lr=self.base_lr * torch.sigmoid(pre[..., 0]), log_momentum=F.logsigmoid(pre[..., 1]),
                    log_decay=F.logsigmoid(pre[..., 2]), gamma=torch.sigmoid(pre[..., 3]), window=self.window,
                    feature_coef=self.feature_coef, newton_schulz=self.newton_schulz)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", window={self.window}, newton_schulz={self.newton_schulz!r}"
