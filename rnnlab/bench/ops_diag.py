"""Op benchmarks of the diagonal family: the element-wise linear scan (real, and complex as in
LRU/HGRN/S5), Mamba's selective scan (d_inner = 2·256, N = 16), RWKV-4's WKV and the
minGRU/minLSTM log-space scan.  Shapes: C = 256 channels (the issue's d_model); every form is
timed against the reference loop (``benchmarks/diag_mixers.py`` prints the same forms)."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from rnnlab.bench.registry import OpBench, register_op_bench
from rnnlab.ops import log_scan as LS
from rnnlab.ops import scan as S
from rnnlab.ops import selective_scan as SS
from rnnlab.ops import wkv4 as W

C = 256
N_SSM = 16  # Mamba's d_state; its scan runs over d_inner = 2·C channels


def _scan_inputs(B, T, dtype, device, complex_=False):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(B, T, C, generator=g) * 0.5 + 0.5  # RG-LRU / HGRN-like decays
    b = torch.randn(B, T, C, generator=g)
    if complex_:
        a = torch.polar(a, torch.randn(B, T, C, generator=g) * 0.1)
        b = torch.complex(b, torch.randn(B, T, C, generator=g))
    return dict(a=a.to(device).requires_grad_(), b=b.to(device).requires_grad_())


def _selective_inputs(B, T, dtype, device):
    g = torch.Generator().manual_seed(0)
    D = 2 * C
    t = dict(x=torch.randn(B, T, D, generator=g), dt=F.softplus(torch.randn(B, T, D, generator=g) - 3),
             A=-torch.arange(1, N_SSM + 1).float().repeat(D, 1), B=torch.randn(B, T, N_SSM, generator=g),
             C=torch.randn(B, T, N_SSM, generator=g), D=torch.ones(D), z=torch.randn(B, T, D, generator=g))
    return {k: v.to(device=device, dtype=dtype if v.dim() == 3 else torch.float32).requires_grad_() for k, v in t.items()}


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
    name="linear_scan", family="diagonal", make_inputs=_scan_inputs,
    forms={"reference": S.linear_scan_ref, "kernel": functools.partial(S.linear_scan, backend="kernel"),
           "parallel": functools.partial(S.linear_scan, backend="parallel")},
))
register_op_bench(OpBench(
    name="linear_scan_complex", family="diagonal", make_inputs=functools.partial(_scan_inputs, complex_=True),
    forms={"reference": S.linear_scan_ref, "kernel": functools.partial(S.linear_scan, backend="kernel"),
           "parallel": functools.partial(S.linear_scan, backend="parallel")},
))
register_op_bench(OpBench(
    name="selective_scan", family="diagonal", make_inputs=_selective_inputs,
    forms={"reference": SS.selective_scan_ref, "kernel": functools.partial(SS.selective_scan, backend="kernel"),
           "chunked": functools.partial(SS.selective_scan, backend="chunked")},
    flops=lambda B, T: 9.0 * B * T * 2 * C * N_SSM,  # per state element: exp, 2 mul-adds of h, 1 of y (exp ~ 5)
))
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
