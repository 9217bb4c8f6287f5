"""Op benchmarks of the expressive-transition family: ``matrix_scan`` with block-diagonal transitions as
block_diag_lrnn uses them at d_model 256 (32 blocks of 8×8, with inputs b), and one normalized 64×64 transition as
bilinear's full factorization (d_state 64). Every form against the reference loop (autograd step by step)."""
from __future__ import annotations

import functools

import torch

from rnnlab.bench.registry import OpBench, register_op_bench
from rnnlab.ops import matrix_scan as MS

FORMS = ("recurrent", "chunk", "scan")


def _inputs(B, T, dtype, device, H, n, affine):
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(B, T, H, n, n, generator=g))[0]  # near-orthogonal: what state tracking learns
    A = (Q * (1 + 0.1 * torch.randn(B, T, H, n, 1, generator=g))).to(device=device, dtype=dtype).requires_grad_()
    out = dict(A=A, initial_state=torch.randn(B, H, n, generator=g).to(device))
    if affine:
        out["b"] = torch.randn(B, T, H, n, generator=g).to(device=device, dtype=dtype).requires_grad_()
    return out


for name, H, n, affine in (("matrix_scan_block8", 32, 8, True), ("matrix_scan_full64_normalized", 1, 64, False)):
    register_op_bench(OpBench(
        name=name, family="expressive",
        make_inputs=functools.partial(_inputs, H=H, n=n, affine=affine),
        forms={"reference": functools.partial(MS.matrix_scan_ref, normalize=not affine),
               **{f: functools.partial(MS.matrix_scan, normalize=not affine, backend=f) for f in FORMS}},
        flops=lambda B, T, H=H, n=n: 2.0 * B * T * H * n * n,  # the loop's matrix-vector products
    ))
