"""Gated DeltaNet (Yang, Kautz & Hatamizadeh 2025, "Gated Delta Networks: Improving Mamba2 with
Delta Rule", ICLR 2025).

    q, k, v = SiLU(ShortConv(W x)) per head;  q, k L2-normalized;  β = σ(W_β x)  (2σ with negative_eigenvalues)
    g_t = −exp(A_log) · softplus(W_a x_t + dt_bias)              (Mamba-2 gate, log α_t ≤ 0, §3.4)
    S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,  o_t = S_tᵀ q_t / √d_k   (eq. 10)
    y = W_o (RMSNorm_head(o) ⊙ SiLU(W_g x))                       (output gate)

Initialization as Mamba-2 / the authors' code: A ~ U(0, 16), A_log = log A; dt log-uniform in
[0.001, 0.1], dt_bias = softplus⁻¹(dt); neither decayed by the optimizer. Values are expanded
(expand_v = 2 by default, as in the paper's configuration).
"""
from __future__ import annotations

from rnnlab.layers.deltanet import _DeltaRuleMixer
from rnnlab.layers.registry import register_mixer

__all__ = ["GatedDeltaNet"]


@register_mixer("gated_deltanet", family="delta", small={"num_heads": 2, "chunk_size": 16})
class GatedDeltaNet(_DeltaRuleMixer):
    """Gated DeltaNet: x (B, T, D) -> y (B, T, D); state conv_q/conv_k/conv_v and S (B, H, K, V).

    num_heads: heads H; head_dim: key size K (default D / H); expand_v: V = expand_v · K;
    conv_size: short-conv width; chunk_size: chunk of the WY form; negative_eigenvalues: β = 2σ(·);
    norm_eps: eps of the output RMSNorm (Qwen3-Next's checkpoints use 1e-6); num_v_heads: HV value heads (default
    H), a multiple of H: each query/key head shared by HV / H consecutive value heads, each with its own β, gate,
    state (B, HV, K, V), output gate and norm (grouped value heads: Qwen3-Next's and Qwen3.5's checkpoints, 16 key
    and 32 value heads; the paper's heads are HV = H).
    """

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None, expand_v: float = 2.0, conv_size: int = 4,
                 chunk_size: int = 64, negative_eigenvalues: bool = False, norm_eps: float = 1e-5, num_v_heads: int | None = None):
        super().__init__(d_model, num_heads, head_dim, expand_v, conv_size, chunk_size, negative_eigenvalues,
                         num_householder=1, forget_gate=True, output_gate=True, norm_eps=norm_eps, num_v_heads=num_v_heads)
