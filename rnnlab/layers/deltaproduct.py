"""DeltaProduct (Siems, Carstensen, Zela, Hutter, Pontil & Grazzi 2025, "DeltaProduct: Improving
State-Tracking in Linear RNNs via Householder Products").

Each token takes n_h delta-rule (generalized Householder) steps, with its own keys, values and βs:

    k_{t,j}, v_{t,j}, β_{t,j} (j = 1..n_h) from n_h-fold projections (short conv + SiLU, L2-normalized keys)
    S ← α_t S, then for j = 1..n_h: S ← (I − β_{t,j} k_{t,j}k_{t,j}ᵀ) S + β_{t,j} k_{t,j} v_{t,j}ᵀ     (eq. 3)
    o_t = Sᵀ q_t / √d_k;  y = W_o (RMSNorm_head(o) ⊙ SiLU(W_g x))

As flash-linear-attention's GatedDeltaProduct (same defaults): n_h = 2, the optional forget gate is
Gated DeltaNet's Mamba-2 gate applied once per token, and negative_eigenvalues on by default
(β = 2σ(·), eigenvalues of each factor in [−1, 1]: the paper's setting for state tracking; off gives
the [0, 1] variant). The op runs the chunkwise delta rule on the interleaved length-T·n_h sequence.
"""
from __future__ import annotations

from rnnlab.layers.deltanet import _DeltaRuleMixer
from rnnlab.layers.registry import register_mixer

__all__ = ["DeltaProduct"]


@register_mixer("deltaproduct", family="delta", small={"num_heads": 2, "chunk_size": 16})
class DeltaProduct(_DeltaRuleMixer):
    """DeltaProduct: x (B, T, D) -> y (B, T, D); state conv_q/conv_k/conv_v and S (B, H, K, V).

    num_householder: n_h steps per token (1 = Gated DeltaNet); use_forget_gate: Mamba-2 gate;
    negative_eigenvalues: β = 2σ(·) (default True, the paper's [−1, 1] setting);
    num_heads, head_dim, expand_v, conv_size, chunk_size: as gated_deltanet.
    """

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None, expand_v: float = 2.0, num_householder: int = 2,
                 use_forget_gate: bool = True, conv_size: int = 4, chunk_size: int = 64, negative_eigenvalues: bool = True):
        super().__init__(d_model, num_heads, head_dim, expand_v, conv_size, chunk_size, negative_eigenvalues,
                         num_householder=num_householder, forget_gate=use_forget_gate, output_gate=True)
