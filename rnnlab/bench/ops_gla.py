"""Op benchmarks of the matrix-state (gated linear attention) family: chunk_gla (per-key decay),
chunk_simple_gla (scalar decay per head), chunk_linear_attn (no decay), chunk_rwkv6 (per-key decay,
state read before the update, bonus u), chunk_mlstm (exponential input gate, normalizer, stabilizer).

Shapes: H = 4 heads, K = V = 64 (the issue-7 benchmark shape), chunk C = 64; every form timed
against the reference loop. Gates drawn in the ranges the layers produce at initialization.
FLOPs: see :func:`chunk_gla_flops`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnlab.bench.registry import OpBench, register_op_bench
from rnnlab.ops import gla as G
from rnnlab.ops import mlstm as M
from rnnlab.ops import rwkv6 as R

__all__ = ["OP_FORMS", "make_inputs", "chunk_gla_flops"]

H, K, V, C = 4, 64, 64, 64


def chunk_gla_flops(B: int, T: int) -> float:
    """Forward matmul FLOPs of the chunkwise form: per (token, head) QKᵀ (C·K) and AV (C·V) over the
    full C×C block (the causal half is computed, then masked), the inter-chunk read-out q S (K·V) and
    the chunk-local state kᵀv (K·V); × 2 for multiply-add. Element-wise work (decays, masks,
    normalizers) is not counted. The same count serves every op of the family."""
    return 2.0 * B * T * H * (C * K + C * V + 2 * K * V)


def make_inputs(op: str, B: int, T: int, dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    """Keyword inputs of ``op`` (a key of OP_FORMS): q/k/v (or r/k/v) in ``dtype``, gates in float32."""
    randn = lambda *s: torch.randn(*s, device=device)  # noqa: E731
    ins = dict(q=randn(B, T, H, K), k=randn(B, T, H, K), v=randn(B, T, H, V))
    if op == "gla":  # GLA's gate: logsigmoid(.) / 16
        ins["g"] = F.logsigmoid(randn(B, T, H, K)) / 16
    elif op == "simple_gla":  # Mamba-2's Δ·A
        ins["g"] = -0.1 * torch.rand(B, T, H, device=device)
    elif op == "rwkv6":  # -exp(decay) with RWKV-6's initial decay speeds in [-6, -1]
        ins = dict(r=ins["q"], k=ins["k"], v=ins["v"], w=-torch.exp(-6 + 5 * torch.rand(B, T, H, K, device=device)), u=randn(H, K))
    elif op == "mlstm":  # xLSTM's init: input gate ~ N(0, 1)-ish, forget gate pre-activation 3..6
        ins.update(i=randn(B, T, H), f=3 + 3 * torch.rand(B, T, H, device=device))
    return {n: t.to(dtype if n in ("q", "r", "k", "v") else torch.float32).requires_grad_() for n, t in ins.items()}


# op -> (reference loop, fused recurrent, chunkwise)
OP_FORMS = {
    "gla": (G.naive_recurrent_gla, G.fused_recurrent_gla, G.chunk_gla),
    "simple_gla": (G.naive_recurrent_simple_gla, G.fused_recurrent_simple_gla, G.chunk_simple_gla),
    "linear_attn": (G.naive_recurrent_linear_attn, G.fused_recurrent_linear_attn, G.chunk_linear_attn),
    "rwkv6": (R.naive_recurrent_rwkv6, R.fused_recurrent_rwkv6, R.chunk_rwkv6),
    "mlstm": (M.naive_recurrent_mlstm, M.fused_recurrent_mlstm, M.chunk_mlstm),
}

for _op, (_ref, _fused, _chunk) in OP_FORMS.items():
    register_op_bench(OpBench(
        name=f"chunk_{_op}", family="matrix",
        make_inputs=lambda B, T, dtype, device, op=_op: make_inputs(op, B, T, dtype, device),
        forms={"reference": _ref, "fused_recurrent": _fused, "chunk": _chunk},
        flops=chunk_gla_flops,
    ))
