"""Op benchmarks of the diagonal family owned by the minimal/gated-RNN mixers: RWKV-4's WKV
and the minGRU/minLSTM log-space scan. Shapes: C = 256 channels (the issue's d_model);
forms timed against the reference loop."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from rnnlab.bench.registry import OpBench, register_op_bench
from rnnlab.ops import log_scan as LS
from rnnlab.ops import wkv4 as W

C = 256


def _wkv4_inputs(B, T, dtype, device):
    g = torch.Generator().manual_seed(0)
    k = torch.randn(B, T, C, generator=g).to(device=device, dtype=dtype).requires_grad_()
    v = torch.randn(B, T, C, generator=g).to(device=device, dtype=dtype).requires_grad_()
    w = (-torch.exp(torch.linspace(-5, 3, C))).to(device).requires_grad_()  # RWKV-4's decay range
    u = torch.full((C,), -1.2).to(device).requires_grad_()
    return dict(k=k, v=v, w=w, u=u)


def _log_scan_inputs(B, T, dtype, device):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, T, C, generator=g)  # minGRU gate logits
    x = torch.randn(B, T, C, generator=g)
    log_a, log_b = -F.softplus(z), -F.softplus(-z) + LS.log_g(x)
    return dict(log_a=log_a.to(device=device, dtype=dtype).requires_grad_(), log_b=log_b.to(device=device, dtype=dtype).requires_grad_())


register_op_bench(OpBench(
    name="wkv4", family="diagonal", make_inputs=_wkv4_inputs,
    forms={"reference": W.wkv4_ref, "kernel": functools.partial(W.wkv4, backend="kernel"),
           "parallel": functools.partial(W.wkv4, backend="parallel")},
))
register_op_bench(OpBench(
    name="log_scan", family="diagonal", make_inputs=_log_scan_inputs,
    forms={"reference": LS.log_scan_ref, "logaddexp_chunked": LS.log_scan,
           "heinsen_chunked": functools.partial(LS.log_scan, method="heinsen"),
           "logaddexp_chunked_parallel": functools.partial(LS.log_scan, backend="parallel")},
))
