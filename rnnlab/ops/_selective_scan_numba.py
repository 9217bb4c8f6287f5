"""numba kernels of rnnlab.ops.selective_scan (CPU, float32/float64), cached on disk.

Layout: the state of one sequence is kept transposed, (N, D), so every inner loop runs over the
D channels, a long contiguous row (x, dt, y and dy rows are (D,), B_t[n] and C_t[n] are scalars
broadcast over it). With the state (D, N) the inner loops ran over N = 16 elements with a
horizontal reduction per (t, d): measured (B=4, T=2048, D=512, N=16, one thread) 1.3x slower forward
and 2.4-3x slower backward. Time runs t -> n -> d. The forward stores
the state only at chunk starts (B, n_chunks, N, D); the backward recomputes each chunk's states and
transitions from its checkpoint and runs the adjoint backwards through it, so neither direction
holds (B, T, D, N).

transition codes: 0 "exp": a = exp(dt*A); 1 "exp_neg": a = 2 exp(dt*A) - 1;
2 "longhorn": a = 1 - dt*B^2.  The input term is dt*B*x for all three.

exp: numba has no vector libm on this platform (no SVML), and a scalar libm exp per state element
costs ~4x the rest of the step. For float32 a row of exponentials is a vectorizable range reduction
(``_exp_numba.exp_row_f32``, called by ``_transition``, the one place both kernels form a_t). Its argument is clamped
to [-30, 88]: a decay below e^-30 ≈ 9e-14 is rounded up to it, which keeps a_t·h out of float32's
denormal range, where every multiply is slow (forward+backward at dt·A down to -320 measured 3x the time
of mild decays with the old floor of -87; rnnlab/ops/_exp.py does the same for the chunk forms).
float64 uses math.exp.

Every array, scratch rows included, is an argument (allocated by the caller, one row per batch
element) and the kernels are compiled with LLVM ``noalias`` (``_noalias.py``): LLVM then knows that
no two rows overlap and vectorizes loops that touch ten arrays without run-time overlap checks. Each
kernel runs batch rows [lo, hi) without the GIL; ``_threads.run_rows`` splits them over threads.
"""
from __future__ import annotations

import math

from numba import njit

from rnnlab.ops._exp_numba import exp_row_f32
from rnnlab.ops._noalias import NoAliasCompiler

_FM = {"reassoc", "contract"}  # lets the d-loop reductions vectorize; no NaN/inf assumptions
_KERNEL = dict(cache=True, nogil=True, fastmath=_FM, error_model="numpy", pipeline_class=NoAliasCompiler)


@njit(cache=True, inline="always", fastmath=_FM)
def _copy(dst, src):  # pragma: no cover - compiled
    """dst[...] = src for C-contiguous arrays of one size, as a loop: an array slice assignment compiles
    numba's shape-mismatch error formatting (string code), measured 3.7 s of a 6.4 s cold compile."""
    d, s = dst.reshape(dst.size), src.reshape(src.size)
    for i in range(d.shape[0]):
        d[i] = s[i]


@njit(cache=True, inline="always", fastmath=_FM)
def _transition(dtr, An, bn, mode, a, ib, fast):  # pragma: no cover - compiled
    """a[d] = the transition a_t[n, d] of ``mode`` for one state index n: dtr (D,) the step's dt row, An (D,) row
    n of A transposed, bn = B_t[n]; ib (D,) int32 scratch, where the float32 exp builds 2^k in the exponent bits."""
    D = a.shape[0]
    if mode == 2:
        for d in range(D):
            a[d] = 1.0 - dtr[d] * bn * bn
        return
    if fast:
        for d in range(D):
            a[d] = dtr[d] * An[d]
        exp_row_f32(a, ib, D, -30.0)
    else:
        for d in range(D):
            a[d] = math.exp(dtr[d] * An[d])
    if mode == 1:
        for d in range(D):
            a[d] = 2.0 * a[d] - 1.0


@njit(**_KERNEL)
def sscan_fwd(x, dt, At, Bm, Cm, h0, mode, L, y, h, ckpt, e, ib, dtx, fast, lo, hi):  # pragma: no cover - compiled
    """x, dt, y (B, T, D); At (N, D) = Aᵀ; Bm, Cm (B, T, N); h0, h (B, N, D) the initial and final state
    (h carries the state); ckpt (B, nc, N, D); scratch rows e, dtx (B, D) float and ib (B, D) int32;
    fast: float32 arrays (use the vectorized exp)."""
    T, D, N = x.shape[1], x.shape[2], Bm.shape[2]
    for b in range(lo, hi):
        hb, eb, ibb, dtxb = h[b], e[b], ib[b], dtx[b]
        _copy(hb, h0[b])
        for t in range(T):
            if t % L == 0:
                _copy(ckpt[b, t // L], hb)
            dtr, xr, yr = dt[b, t], x[b, t], y[b, t]
            for d in range(D):
                dtxb[d] = dtr[d] * xr[d]
                yr[d] = 0.0
            for n in range(N):
                bn, cn, hn = Bm[b, t, n], Cm[b, t, n], hb[n]
                _transition(dtr, At[n], bn, mode, eb, ibb, fast)
                for d in range(D):
                    v = eb[d] * hn[d] + bn * dtxb[d]
                    hn[d] = v
                    yr[d] += cn * v


@njit(**_KERNEL)
def sscan_bwd(x, dt, At, Bm, Cm, mode, L, ckpt, dy, dh_last, dx, ddt, dAt, dB, dC, g, hbuf, abuf, gb, gas, dtx, ib,
              fast, lo, hi):  # pragma: no cover - compiled
    """Adjoint of sscan_fwd. dh_last, g (B, N, D): g carries the adjoint of the state and ends as dh0;
    dAt (B, N, D) per sequence, zero on entry (summed by the caller); scratch hbuf (B, L+1, N, D) the
    recomputed states of a chunk, abuf (B, L, N, D) their transitions, rows gb, gas, dtx (B, D), ib (B, D) int32.

    Per step, backwards, for each n over the D channels (g_n: adjoint of h_t[n], then of h_{t-1}[n]):
        g_n += C_n dy;  dC_n = Σ_d dy h_t[n];  gb += g_n B_n;  dB_n = Σ_d g_n dt x;
        s = (∂a/∂(dt A)) g_n h_{t-1}[n]: gas += s A_n, dA_n += s dt;  g_n <- a_n g_n
    (longhorn: ∂a/∂dt = -B_n², ∂a/∂B_n = -2 dt B_n), then ddt = gb x + gas, dx = gb dt."""
    T, D = x.shape[1], x.shape[2]
    N = Bm.shape[2]
    nc = ckpt.shape[1]
    for b in range(lo, hi):
        gbb, gasb, dtxb, ibb, hbb, abb, gg, dAb = gb[b], gas[b], dtx[b], ib[b], hbuf[b], abuf[b], g[b], dAt[b]
        _copy(gg, dh_last[b])
        for c in range(nc - 1, -1, -1):
            t0 = c * L
            t1 = min(T, t0 + L)
            _copy(hbb[0], ckpt[b, c])
            for t in range(t0, t1):  # recompute the chunk's states and transitions
                j = t - t0
                dtr, xr = dt[b, t], x[b, t]
                for d in range(D):
                    dtxb[d] = dtr[d] * xr[d]
                for n in range(N):
                    bn, a, hp, hn = Bm[b, t, n], abb[j, n], hbb[j, n], hbb[j + 1, n]
                    _transition(dtr, At[n], bn, mode, a, ibb, fast)
                    for d in range(D):
                        hn[d] = a[d] * hp[d] + bn * dtxb[d]
            for t in range(t1 - 1, t0 - 1, -1):
                j = t - t0
                dtr, xr, dyr = dt[b, t], x[b, t], dy[b, t]
                for d in range(D):
                    dtxb[d] = dtr[d] * xr[d]
                    gbb[d] = 0.0
                    gasb[d] = 0.0
                for n in range(N):
                    bn, cn = Bm[b, t, n], Cm[b, t, n]
                    a, hp, hn, gn_, An, dAn = abb[j, n], hbb[j, n], hbb[j + 1, n], gg[n], At[n], dAb[n]
                    dc = 0.0
                    db = 0.0
                    if mode == 2:
                        for d in range(D):
                            gv = gn_[d] + cn * dyr[d]
                            ga = gv * hp[d]
                            dc += dyr[d] * hn[d]
                            gbb[d] += gv * bn
                            gasb[d] -= ga * bn * bn
                            db += dtr[d] * (gv * xr[d] - 2.0 * ga * bn)
                            gn_[d] = a[d] * gv
                    else:
                        off = 0.0 if mode == 0 else 1.0  # ∂a/∂(dt A) = e = a (exp) or 2e = a + 1 (exp_neg)
                        for d in range(D):
                            gv = gn_[d] + cn * dyr[d]
                            s = gv * hp[d] * (a[d] + off)
                            dc += dyr[d] * hn[d]
                            db += gv * dtxb[d]
                            gbb[d] += gv * bn
                            gasb[d] += s * An[d]
                            dAn[d] += s * dtr[d]
                            gn_[d] = a[d] * gv
                    dC[b, t, n] = dc
                    dB[b, t, n] = db
                ddtr, dxr = ddt[b, t], dx[b, t]
                for d in range(D):
                    ddtr[d] = gbb[d] * xr[d] + gasb[d]
                    dxr[d] = gbb[d] * dtr[d]
