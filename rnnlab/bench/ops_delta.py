"""Op benchmarks of the delta-rule family: (gated) delta rule, DeltaProduct, RWKV-7.

Shapes: H = 4 heads, K = V = 64 (the issue-8 benchmark shape); forms timed against the
reference loop. FLOPs are the forward multiply-adds × 2 of the chunkwise form (C = 64).
"""
from __future__ import annotations

import torch

from rnnlab.bench.registry import OpBench, register_op_bench
from rnnlab.ops import delta as D
from rnnlab.ops import rwkv7 as R

H, K, V, C = 4, 64, 64, 64


def _leaf(t, dtype):
    return t.to(dtype).requires_grad_()


def _delta_inputs(B, T, dtype, device, gated=True, nh=None):
    extra = () if nh is None else (nh,)
    ins = dict(q=torch.randn(B, T, H, K, device=device), k=D.l2norm(torch.randn(B, T, H, *extra, K, device=device)),
               v=torch.randn(B, T, H, *extra, V, device=device))
    if gated:
        ins["g"] = -0.1 * torch.rand(B, T, H, device=device)
    ins["beta"] = torch.rand(B, T, H, *extra, device=device)
    return {n: _leaf(t, dtype if n in ("q", "k", "v") else torch.float32) for n, t in ins.items()}


def chunk_delta_flops(B: int, T: int, nh: int = 1) -> float:
    """Forward FLOPs of the chunkwise WY form per (token, head): KKᵀ and QKᵀ (C·K each), the UT
    transform applied to [βV, βK] (C·(V+K)), the inverse (≈ C²/6), the chunk pass (2·K·V),
    the inter-chunk output (K·V) and the intra-chunk output (C·V); × 2 for multiply-add."""
    per = 2 * C * K + C * (V + K) + C * C / 6 + 3 * K * V + C * V
    return 2.0 * B * T * nh * H * per


def _rwkv7_inputs(B, T, dtype, device):
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, K, device=device), dim=-1)
    ins = dict(q=torch.randn(B, T, H, K, device=device), k=torch.randn(B, T, H, K, device=device) * K**-0.5,
               v=torch.randn(B, T, H, V, device=device), w=-0.6 * torch.rand(B, T, H, K, device=device),
               a=-kk, b=kk * torch.rand(B, T, H, K, device=device))
    return {n: _leaf(t, dtype if n in ("q", "k", "v") else torch.float32) for n, t in ins.items()}


register_op_bench(OpBench(
    name="chunk_gated_delta_rule", family="delta",
    make_inputs=lambda B, T, dtype, device: _delta_inputs(B, T, dtype, device, gated=True),
    forms={"reference": D.naive_recurrent_gated_delta_rule, "fused_recurrent": D.fused_recurrent_gated_delta_rule,
           "chunk": D.chunk_gated_delta_rule},
    flops=chunk_delta_flops,
))
register_op_bench(OpBench(
    name="chunk_delta_rule", family="delta",
    make_inputs=lambda B, T, dtype, device: _delta_inputs(B, T, dtype, device, gated=False),
    forms={"reference": D.naive_recurrent_delta_rule, "fused_recurrent": D.fused_recurrent_delta_rule, "chunk": D.chunk_delta_rule},
    flops=chunk_delta_flops,
))
register_op_bench(OpBench(
    name="chunk_delta_product", family="delta",
    make_inputs=lambda B, T, dtype, device: _delta_inputs(B, T, dtype, device, gated=True, nh=2),
    forms={"reference": lambda **kw: D.naive_recurrent_delta_product(**kw, num_householder=2),
           "fused_recurrent": lambda **kw: D.fused_recurrent_delta_product(**kw, num_householder=2),
           "chunk": lambda **kw: D.chunk_delta_product(**kw, num_householder=2)},
    flops=lambda B, T: chunk_delta_flops(B, T, nh=2),
    max_baseline_len=512,
))
def chunk_rwkv7_flops(B: int, T: int, C: int = 16) -> float:
    """Forward FLOPs of chunk_rwkv7 per (token, head): four decay-weighted Gram matrices (C·K each),
    M_ak·V (C·V), the UT transform ((C²/6 + C·(V+K))), the chunk-local K̃ᵀV (K·V), the chunk pass
    (2·K·V) and the three output products (K·V + 2·C·V); × 2 for multiply-add."""
    per = 4 * C * K + C * V + C * C / 6 + C * (V + K) + 3 * K * V + K * V + 2 * C * V
    return 2.0 * B * T * H * per


register_op_bench(OpBench(
    name="rwkv7", family="delta",
    make_inputs=_rwkv7_inputs,
    forms={"reference": R.naive_recurrent_rwkv7, "fused_recurrent": R.fused_recurrent_rwkv7, "chunk": R.chunk_rwkv7},
    flops=chunk_rwkv7_flops,
    max_baseline_len=512,
))
