"""Op benchmarks of the test-time-memory family (rnnlab/ops/ttt.py, rnnlab/ops/lact.py): TTT's rule with a linear and
an MLP inner model (f = x + LN(g), ½‖f(k) − v‖², mini-batch b = 16), Titans' rule with a linear and an MLP memory
(‖M(k) − v‖², momentum and forgetting, b = 16), the Miras rules (Yaad, Moneta, Memora: two-layer memories, b = 16)
LaCT (SwiGLU fast weights, chunks of 256) and ATLAS (the Omega rule over 4 tokens, degree-2 polynomial features: a memory
input of Σ_{i<=2} K^i = 4161 features, 2 layers, Newton–Schulz "cubic", b = 16; rnnlab/ops/atlas.py). Every form — the reference token loop (autograd inner gradients), the fused
recurrent loop (hand-written gradients) and the chunk (mini-batch dual) form — against the reference.

Shapes: H = 4 heads, K = V = 64 (d_model 256 split as the mixers do), MLP hidden 4K; gates drawn in the ranges the
layers produce at initialization; keys ℓ2-normalized for Titans (its layer normalizes them). FLOPs: see
:func:`chunk_flops`.
"""
from __future__ import annotations

import math

import torch

from rnnlab.bench.registry import OpBench, register_op_bench
from rnnlab.ops import atlas as AT
from rnnlab.ops import lact as LA
from rnnlab.ops import ttt as M

__all__ = ["make_inputs", "miras_inputs", "lact_inputs", "atlas_inputs", "chunk_flops"]

H, K, C = 4, 64, 16
# the token loops' train rows run in segments above these lengths (OpBench.segments): their graphs hold several memory
# copies per token (saved tensors of the fused loop at B 4: ~1 MB per token with a linear memory, 6-8.5 MB with an MLP,
# Moneta 23 MB, LaCT 25 MB; ATLAS's 4161-wide memory is 17 MB a copy), so a segment's backward (≤ ~6 GB) is what fits
# the bench's memory cap at T 8192
LOOP_SEGMENTS = {"reference": 256, "fused_recurrent": 256}


def chunk_flops(B: int, T: int, depth: int, carried: int) -> float:
    """Forward matmul FLOPs of the chunk form per (token, head), F the hidden size (K at depth 1): the key pass at
    the chunk's weights (K·F + F·K at depth 2, plus the layer-2 backward F·K), the query read against every carried
    copy (carried · the same), the (C, C) products and their application (C·(K + F) per layer pair), the weight
    updates at the chunk end (each carried copy: K·F per layer, per token); × 2 for multiply-add."""
    F = K if depth == 1 else 4 * K
    weights = K * F if depth == 1 else 2 * K * F
    per = weights * (1 + carried + carried) + (weights if depth == 2 else 0) + C * (K + F) * depth
    return 2.0 * B * T * H * per


def make_inputs(rule: str, depth: int, B: int, T: int, dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    """Keyword inputs of the ``rule`` ops ("ttt" or "titans") with a depth-``depth`` memory: q/k/v in ``dtype``
    (leaves), gates float32 (leaves), the initial state (learned weights as leaves, accumulators zero)."""
    F = K if depth == 1 else 4 * K
    shapes = {"w1": (B, H, K, F), "b1": (B, H, F), "w2": (B, H, F, K), "b2": (B, H, K)}
    bias = rule == "ttt"
    leaf = lambda t, dt=torch.float32: t.to(dt).requires_grad_()  # noqa: E731
    rand = lambda *s: torch.rand(*s, device=device)  # noqa: E731
    q, k, v = (torch.randn(B, T, H, K, device=device) for _ in range(3))
    state = {}
    carried = ("g_",) if rule == "ttt" else ("m_", "s_")
    for n in M.memory_keys(depth, bias):
        w = (0.02 if rule == "ttt" else shapes[n][2] ** -0.5) * torch.randn(shapes[n], device=device) if n[0] == "w" else torch.zeros(shapes[n], device=device)
        state[n] = leaf(w)
        for c in carried:
            state[c + n] = w.clone() if c == "m_" else torch.zeros_like(w)
    state["pos"] = torch.zeros(B, dtype=torch.int64, device=device)
    if rule == "ttt":  # lr = base_lr · σ(·) / K around σ = 0.5; τ = 1/(r+1); LN γ = 1, β = 0
        return dict(q=leaf(q, dtype), k=leaf(k, dtype), v=leaf(v, dtype), lr=leaf((1.0 if depth == 1 else 0.1) * rand(B, T, H) / K),
                    tau=leaf(1 / torch.arange(1, C + 1, dtype=torch.float32, device=device)), initial_state=state,
                    ln_weight=leaf(torch.ones(H, K, device=device)), ln_bias=leaf(torch.zeros(H, K, device=device)), residual=True)
    k = torch.nn.functional.normalize(k, dim=-1)
    q = torch.nn.functional.normalize(q, dim=-1)
    return dict(q=leaf(q, dtype), k=leaf(k, dtype), v=leaf(v, dtype), theta=leaf(0.1 * rand(B, T, H)),
                log_eta=leaf(torch.log(0.3 + 0.4 * rand(B, T, H))), log_decay=leaf(torch.log1p(-0.002 * rand(B, T, H))),
                initial_state=state, chunk_size=C)


def miras_inputs(rule: str, B: int, T: int, dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    """Inputs of the Miras ops (yaad, moneta, memora) as their layers build them: a two-layer memory (hidden 4K, no
    biases), f = x + LN(g), unit keys, η ≈ 0.005, α ≈ 0.999 (Memora: logits N(0, 2²))."""
    F = 4 * K
    leaf = lambda t, dt=torch.float32: t.to(dt).requires_grad_()  # noqa: E731
    q, k = (torch.nn.functional.normalize(torch.randn(B, T, H, K, device=device), dim=-1) for _ in range(2))
    state = {}
    for n, shape in (("w1", (B, H, K, F)), ("w2", (B, H, F, K))):
        w = 2.0 * torch.randn(shape, device=device) if rule == "memora" else torch.randn(shape, device=device) / shape[2] ** 0.5
        state[n] = leaf(w)
        state["m_" + n] = w.clone()
    state["pos"] = torch.zeros(B, dtype=torch.int64, device=device)
    ins = dict(q=leaf(q, dtype), k=leaf(k, dtype), v=leaf(torch.randn(B, T, H, K, device=device), dtype),
               theta=leaf(0.01 * torch.rand(B, T, H, device=device)), log_decay=leaf(torch.full((B, T, H), -1e-3, device=device)),
               initial_state=state, ln_weight=leaf(torch.ones(H, K, device=device)), ln_bias=leaf(torch.zeros(H, K, device=device)),
               residual=True, chunk_size=C)
    if rule == "yaad":
        ins["delta"] = leaf(K ** 0.5 * torch.rand(B, T, H, device=device))
    return ins


def lact_inputs(B: int, T: int, dtype: torch.dtype = torch.float32, device="cpu", chunk: int = 256) -> dict:
    """Inputs of the LaCT ops as the `lact` layer builds them: SwiGLU fast weights (hidden 2K), chunks of 256."""
    F = 2 * K
    leaf = lambda t, dt=torch.float32: t.to(dt).requires_grad_()  # noqa: E731
    state = {}
    for n, shape in (("w1", (B, H, K, F)), ("w3", (B, H, K, F)), ("w2", (B, H, F, K))):
        state[n] = leaf(torch.randn(shape, device=device) / shape[2] ** 0.5)
        state["g_" + n] = torch.zeros(shape, device=device)
        state["m_" + n] = torch.zeros(shape, device=device)
    state["pos"] = torch.zeros(B, dtype=torch.int64, device=device)
    q, k = (torch.nn.functional.normalize(torch.randn(B, T, H, K, device=device), dim=-1) for _ in range(2))
    return dict(q=leaf(q, dtype), k=leaf(k, dtype), v=leaf(torch.randn(B, T, H, K, device=device), dtype),
                lr=leaf(0.1 * torch.rand(B, T, H, device=device)), initial_state=state, chunk_size=chunk, beta=0.5)


def atlas_inputs(B: int, T: int, dtype: torch.dtype = torch.float32, device="cpu", head_dim: int = K, degree: int | None = 2) -> dict:
    """Inputs of the ATLAS ops as the `atlas` layer builds them at its defaults: unit q, k; a two-layer memory (hidden
    head_dim) on degree-``degree`` features (coefficients 1/√(i!)); η ≈ 0.05, θ ≈ 0.5, α ≈ 0.99, γ ≈ 0.5; window 4."""
    c, Kf = 4, AT.feature_dim(head_dim, degree)
    leaf = lambda t, dt=torch.float32: t.to(dt).requires_grad_()  # noqa: E731
    rand = lambda *s: torch.rand(*s, device=device)  # noqa: E731
    q, k = (torch.nn.functional.normalize(torch.randn(B, T, H, head_dim, device=device), dim=-1) for _ in range(2))
    state = {}
    for n, shape in (("w1", (B, H, Kf, head_dim)), ("w2", (B, H, head_dim, head_dim))):
        w = torch.randn(shape, device=device) / shape[2] ** 0.5
        state.update({n: leaf(w), "m_" + n: w.clone(), "s_" + n: torch.zeros(shape, device=device)})
    state.update(buf_k=torch.zeros(B, H, c - 1, head_dim, device=device), buf_v=torch.zeros(B, H, c - 1, head_dim, device=device),
                 buf_gamma=torch.zeros(B, H, c - 1, device=device), pos=torch.zeros(B, dtype=torch.int64, device=device))
    coef = None if degree is None else leaf(torch.tensor([1 / math.sqrt(math.factorial(i)) for i in range(degree + 1)], device=device))
    return dict(q=leaf(q, dtype), k=leaf(k, dtype), v=leaf(torch.randn(B, T, H, head_dim, device=device), dtype),
                lr=leaf(0.05 + 0.01 * rand(B, T, H)), log_momentum=leaf(torch.log(0.4 + 0.2 * rand(B, T, H))),
                log_decay=leaf(torch.log(0.98 + 0.01 * rand(B, T, H))), gamma=leaf(0.4 + 0.2 * rand(B, T, H)), initial_state=state,
                window=c, feature_coef=coef, newton_schulz="cubic", chunk_size=C)


register_op_bench(OpBench(
    name="chunk_atlas", family="ttt", make_inputs=atlas_inputs,
    forms={"reference": AT.naive_recurrent_atlas, "fused_recurrent": AT.fused_recurrent_atlas, "chunk": AT.chunk_atlas},
    segments={"reference": 64, "fused_recurrent": 64},
))
for _rule in ("yaad", "moneta", "memora"):
    register_op_bench(OpBench(
        name=f"chunk_{_rule}", family="ttt",
        make_inputs=lambda B, T, dtype, device, r=_rule: miras_inputs(r, B, T, dtype, device),
        forms={"reference": getattr(M, f"naive_recurrent_{_rule}"), "fused_recurrent": getattr(M, f"fused_recurrent_{_rule}"),
               "chunk": getattr(M, f"chunk_{_rule}")},
        flops=lambda B, T: chunk_flops(B, T, 2, 1), segments=LOOP_SEGMENTS,
    ))
register_op_bench(OpBench(
    name="chunk_lact", family="ttt", make_inputs=lact_inputs,
    forms={"reference": LA.naive_recurrent_lact, "fused_recurrent": LA.fused_recurrent_lact, "chunk": LA.chunk_lact},
    segments=LOOP_SEGMENTS,
))

for _rule in ("ttt", "titans"):
    for _depth, _kind in ((1, "linear"), (2, "mlp")):
        register_op_bench(OpBench(
            name=f"chunk_{_rule}_{_kind}", family="ttt",
            make_inputs=lambda B, T, dtype, device, r=_rule, d=_depth: make_inputs(r, d, B, T, dtype, device),
            forms={"reference": getattr(M, f"naive_recurrent_{_rule}"), "fused_recurrent": getattr(M, f"fused_recurrent_{_rule}"),
                   "chunk": getattr(M, f"chunk_{_rule}")},
            flops=lambda B, T, d=_depth, c=(1 if _rule == "ttt" else 2): chunk_flops(B, T, d, c), segments=LOOP_SEGMENTS,
        ))
