"""Op benchmarks of log-linear attention (rnnlab/ops/log_linear.py): the Fenwick hierarchy over a scalar decay
(log-linear Mamba-2) and over the gated delta rule (log-linear Gated DeltaNet).

Shapes: H = 4 heads, K = V = 64, chunk C = 64, 15 level weights (the layers' default). The baseline is the batched
decode loop (``fused_recurrent``): the per-row reference loop is kept for the tests only (Python dicts per row and
token), timed up to T = 256. FLOPs: the underlying chunk form's plus the level reads, see :func:`log_linear_flops`.
"""
from __future__ import annotations

import math

import torch

from rnnlab.bench.registry import OpBench, register_op_bench
from rnnlab.ops import log_linear as LL

H, K, V, C, NL = 4, 64, 64, 64, 15


def log_linear_flops(B: int, T: int) -> float:
    """Forward matmul FLOPs per (token, head): Q Kᵀ and (M ⊙ Λ) V over the C×C block (C·K + C·V), the chunk's
    source map Z_src V (K·V) and, per level above the chunk (log2(T / C) of them), one read q S (K·V); × 2."""
    levels = max(math.log2(max(T / C, 1.0)), 1.0)
    return 2.0 * B * T * H * (C * K + C * V + K * V + levels * K * V)


def _inputs(B, T, dtype, device, delta):
    ins = dict(q=torch.randn(B, T, H, K, device=device), k=torch.randn(B, T, H, K, device=device),
               v=torch.randn(B, T, H, V, device=device), g=-0.1 * torch.rand(B, T, H, device=device))
    if delta:
        ins["k"] = torch.nn.functional.normalize(ins["k"], dim=-1)
        ins["beta"] = torch.rand(B, T, H, device=device)
    ins["level_scales"] = torch.nn.functional.softplus(torch.randn(B, T, H, NL, device=device))
    return {n: t.to(dtype if n in ("q", "k", "v") else torch.float32).requires_grad_() for n, t in ins.items()}


for _kind, _delta in (("simple_gla", False), ("gated_delta_rule", True)):
    register_op_bench(OpBench(
        name=f"chunk_log_linear_{_kind}", family="log_linear",
        make_inputs=lambda B, T, dtype, device, _d=_delta: _inputs(B, T, dtype, device, _d),
        forms={"reference": getattr(LL, f"naive_recurrent_log_linear_{_kind}"),
               "fused_recurrent": getattr(LL, f"fused_recurrent_log_linear_{_kind}"),
               "chunk": getattr(LL, f"chunk_log_linear_{_kind}")},
        flops=log_linear_flops, baseline="fused_recurrent", max_baseline_len=2048,
    ))
