"""Op benchmarks of the gated-linear-attention family: chunk_gla (per-key decay),
chunk_simple_gla (scalar decay per head), chunk_linear_attn (no decay).

Shapes: H = 4 heads, K = V = 64 (the issue-7 benchmark shape), chunk C = 64; forms timed
against the reference loop. FLOPs: see :func:`chunk_gla_flops`.
"""
from __future__ import annotations

import torch

from rnnlab.bench.registry import OpBench, register_op_bench
from rnnlab.ops import gla as G

H, K, V, C = 4, 64, 64, 64


def chunk_gla_flops(B: int, T: int) -> float:
    """Forward matmul FLOPs of the chunkwise form per (token, head): QKᵀ (C·K) and AV (C·V) over
    the full C×C block (the causal half is computed, then masked), the inter-chunk read-out q S
    (K·V) and the chunk-local state kᵀv (K·V); × 2 for multiply-add. Element-wise work
    (decays, masks) is not counted."""
    return 2.0 * B * T * H * (C * K + C * V + 2 * K * V)


def _inputs(B, T, dtype, device, gate):
    ins = dict(q=torch.randn(B, T, H, K, device=device), k=torch.randn(B, T, H, K, device=device), v=torch.randn(B, T, H, V, device=device))
    if gate == "vector":  # GLA's typical range: logsigmoid(.)/16
        ins["g"] = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, device=device)) / 16
    elif gate == "scalar":  # Mamba-2's typical range: -A·Δ
        ins["g"] = -0.1 * torch.rand(B, T, H, device=device)
    return {n: t.to(dtype if n in ("q", "k", "v") else torch.float32).requires_grad_() for n, t in ins.items()}


register_op_bench(OpBench(
    name="chunk_gla", family="matrix",
    make_inputs=lambda B, T, dtype, device: _inputs(B, T, dtype, device, "vector"),
    forms={"reference": G.naive_recurrent_gla, "fused_recurrent": G.fused_recurrent_gla, "chunk": G.chunk_gla},
    flops=chunk_gla_flops,
))
register_op_bench(OpBench(
    name="chunk_simple_gla", family="matrix",
    make_inputs=lambda B, T, dtype, device: _inputs(B, T, dtype, device, "scalar"),
    forms={"reference": G.naive_recurrent_simple_gla, "fused_recurrent": G.fused_recurrent_simple_gla, "chunk": G.chunk_simple_gla},
    flops=chunk_gla_flops,
))
register_op_bench(OpBench(
    name="chunk_linear_attn", family="matrix",
    make_inputs=lambda B, T, dtype, device: _inputs(B, T, dtype, device, None),
    forms={"reference": G.naive_recurrent_linear_attn, "fused_recurrent": G.fused_recurrent_linear_attn, "chunk": G.chunk_linear_attn},
    flops=chunk_gla_flops,
))
