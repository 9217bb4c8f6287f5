"""out = x @ AT for the small per-step products of the RNN kernels, with explicit 16-lane vectors.

    matmul_into(x, AT, out)   x (R, K), AT (K, N), out (R, N); C-contiguous float32; R is a few batch rows

Why not a plain numba loop: LLVM's auto-vectoriser uses 256-bit vectors on AVX-512 CPUs (the
"prefer-256-bit" tuning), and numba offers no per-function switch; a triple loop then runs at ~20-40
GFLOP/s here. ``_tile(RB, CB)`` writes the sgemm micro-kernel itself as an LLVM intrinsic: RB rows x
CB 16-float vectors of accumulators held in registers over the whole k loop, one broadcast of
x[r, k] and CB vector loads of AT[k, :] per k, fused multiply-adds. On this machine it reaches
70-90 GFLOP/s single-threaded at (8 x 256) @ (256 x 1024), where torch.mm (MKL) gets ~45. The
<16 x float> type is legal LLVM on every target (split into narrower registers without AVX-512).

Editing this file does not invalidate numba's on-disk cache of the kernels in _numba.py that inline
it (numba checks only the caller's own source file): delete ``rnnlab/ops/rnn/__pycache__/*.nb?``.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["matmul_into"]

LANES = 16
F32 = np.float32


def _tile(RB: int, CB: int):
    """Intrinsic tile(x, r0, AT, j0, out): out[r0:r0+RB, j0:j0+16*CB] = x[r0:r0+RB] @ AT[:, j0:j0+16*CB]."""

    @intrinsic
    def tile(typingctx, x, r0, at, j0, out):
        def codegen(context, builder, sig, args):
            xa, aa, oa = (context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 2, 4))
            r0v, j0v = args[1], args[3]
            i64, i32 = ir.IntType(64), ir.IntType(32)
            vty = ir.VectorType(ir.FloatType(), LANES)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3), "llvm.fma.v16f32")
            K = builder.extract_value(xa.shape, 1)
            N = builder.extract_value(aa.shape, 1)

            def vec_ptr(row_ptr, c):
                return builder.bitcast(builder.gep(row_ptr, [ir.Constant(i64, LANES * c)]), vty.as_pointer())

            xrows = [builder.gep(xa.data, [builder.mul(builder.add(r0v, ir.Constant(i64, r)), K)]) for r in range(RB)]
            acol = builder.gep(aa.data, [j0v])
            entry = builder.block
            loop, done = builder.append_basic_block("tile.loop"), builder.append_basic_block("tile.done")
            builder.branch(loop)
            builder.position_at_end(loop)  # k = 0 .. K-1 (K >= 1)
            k = builder.phi(i64)
            k.add_incoming(ir.Constant(i64, 0), entry)
            accs = [builder.phi(vty) for _ in range(RB * CB)]
            for acc in accs:
                acc.add_incoming(ir.Constant(vty, [0.0] * LANES), entry)
            arow = builder.gep(acol, [builder.mul(k, N)])
            avs = [builder.load(vec_ptr(arow, c), align=4) for c in range(CB)]
            splat = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)
            new = []
            for r in range(RB):
                s = builder.load(builder.gep(xrows[r], [k]))
                s = builder.insert_element(ir.Constant(vty, ir.Undefined), s, ir.Constant(i32, 0))
                s = builder.shuffle_vector(s, ir.Constant(vty, ir.Undefined), splat)
                new += [builder.call(fma, [s, avs[c], accs[r * CB + c]]) for c in range(CB)]
            k1 = builder.add(k, ir.Constant(i64, 1))
            k.add_incoming(k1, loop)
            for acc, v in zip(accs, new):
                acc.add_incoming(v, loop)
            builder.cbranch(builder.icmp_signed("<", k1, K), loop, done)
            builder.position_at_end(done)
            for r in range(RB):
                orow = builder.gep(oa.data, [builder.add(builder.mul(builder.add(r0v, ir.Constant(i64, r)), N), j0v)])
                for c in range(CB):
                    builder.store(new[r * CB + c], vec_ptr(orow, c), align=4)
            return context.get_dummy_value()

        return types.void(x, r0, at, j0, out), codegen

    return tile


_t44, _t41, _t14, _t11 = _tile(4, 4), _tile(4, 1), _tile(1, 4), _tile(1, 1)


@njit(cache=True, fastmath=True, error_model="numpy")
def matmul_into(x, AT, out):  # pragma: no cover - compiled
    """out = x @ AT; x (R, K), AT (K, N), out (R, N), C-contiguous float32, K >= 1."""
    R, K = x.shape
    N = AT.shape[1]
    N64, N16 = N - N % 64, N - N % 16
    r0 = 0
    while r0 < R:
        full = r0 + 4 <= R  # 4-row tiles, then single rows
        j0 = 0
        while j0 < N64:
            if full:
                _t44(x, r0, AT, j0, out)
            else:
                _t14(x, r0, AT, j0, out)
            j0 += 64
        while j0 < N16:
            if full:
                _t41(x, r0, AT, j0, out)
            else:
                _t11(x, r0, AT, j0, out)
            j0 += 16
        for r in range(r0, r0 + 4 if full else r0 + 1):  # the last N % 16 columns
            for j in range(N16, N):
                acc = F32(0.0)
                for k in range(K):
                    acc += x[r, k] * AT[k, j]
                out[r, j] = acc
        r0 += 4 if full else 1
