"""numba kernels of rnnlab.ops.selective_scan (CPU, float32/float64), cached on disk.

Loop order t -> d -> n keeps the (D, N) state of one sequence in cache and reads every
input row contiguously.  The forward stores the state only at chunk starts
(B, n_chunks, D, N); the backward recomputes each chunk's states from its checkpoint
and runs the adjoint backwards through it, so neither direction holds (B, T, D, N).

transition codes: 0 "exp": a = exp(dt*A); 1 "exp_neg": a = 2 exp(dt*A) - 1;
2 "longhorn": a = 1 - dt*B^2.  The input term is dt*B*x for all three.

exp: numba has no vector libm on this platform (no SVML), and a scalar libm exp per
state element costs ~4x the rest of the step.  For float32 the N exponentials of one
(t, d) row are computed by a vectorizable range reduction (x = k ln2 + r, degree-7
polynomial for exp(r), k added into the exponent bits; relative error < 1e-7, argument
clamped to [-87, 88], i.e. decays below 1.6e-38 are rounded up to that).  float64 uses
math.exp.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_FM = {"reassoc", "contract"}  # lets the n-loop reductions vectorize; no NaN/inf assumptions


@njit(cache=True, fastmath=_FM)
def _copy2(dst, src):  # pragma: no cover - compiled
    """dst[:] = src for 2-D arrays, as loops: an array slice assignment compiles numba's shape-mismatch error
    formatting (string code), measured 3.7 s of the forward's 6.4 s cold compile."""
    for i in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[i, j] = src[i, j]


@njit(cache=True, inline="always", fastmath=_FM)
def _fill_exp(dtv, A, d, ebuf, fast):  # pragma: no cover - compiled
    """ebuf[n] = exp(dtv * A[d, n]) for all n."""
    N = ebuf.shape[0]
    if fast:
        ibuf = ebuf.view(np.int32)
        for n in range(N):
            v = min(max(np.float32(dtv * A[d, n]), np.float32(-87.0)), np.float32(88.0))
            k = math.floor(v * np.float32(1.4426950408889634) + np.float32(0.5))
            r = (v - k * np.float32(0.693145751953125)) - k * np.float32(1.4286068203094173e-06)
            ebuf[n] = np.float32(1.0) + r * (np.float32(1.0) + r * (np.float32(0.5) + r * (np.float32(1 / 6) + r * (
                np.float32(1 / 24) + r * (np.float32(1 / 120) + r * (np.float32(1 / 720) + r * np.float32(1 / 5040)))))))
            ibuf[n] += np.int32(k) << 23
    else:
        for n in range(N):
            ebuf[n] = math.exp(dtv * A[d, n])


@njit(cache=True, inline="always", fastmath=_FM)
def _fill_a(dtv, A, Bm, b, t, d, mode, e, fast):  # pragma: no cover - compiled
    """e[n] = the transition a_t[d, n] of ``mode``."""
    N = e.shape[0]
    if mode == 2:
        for n in range(N):
            e[n] = 1.0 - dtv * Bm[b, t, n] * Bm[b, t, n]
    else:
        _fill_exp(dtv, A, d, e, fast)
        if mode == 1:
            for n in range(N):
                e[n] = 2.0 * e[n] - 1.0


@njit(cache=True, parallel=True, fastmath=_FM)
def sscan_fwd(x, dt, A, Bm, Cm, h0, mode, L, y, h_last, ckpt, fast):  # pragma: no cover - compiled
    """x, dt, y (B, T, D); A (D, N); Bm, Cm (B, T, N); h0, h_last (B, D, N); ckpt (B, nc, D, N);
    fast: float32 arrays (use the vectorized exp)."""
    Bsz, T, D = x.shape
    N = Bm.shape[2]
    for b in prange(Bsz):
        h = np.empty((D, N), dtype=x.dtype)
        _copy2(h, h0[b])
        e = np.empty(N, dtype=x.dtype)
        for t in range(T):
            if t % L == 0:
                _copy2(ckpt[b, t // L], h)
            for d in range(D):
                dtv = dt[b, t, d]
                xv = dtv * x[b, t, d]
                _fill_a(dtv, A, Bm, b, t, d, mode, e, fast)
                acc = 0.0
                for n in range(N):
                    hn = e[n] * h[d, n] + Bm[b, t, n] * xv
                    h[d, n] = hn
                    acc += Cm[b, t, n] * hn
                y[b, t, d] = acc
        _copy2(h_last[b], h)


@njit(cache=True, parallel=True, fastmath=_FM)
def sscan_bwd(x, dt, A, Bm, Cm, mode, L, ckpt, dy, dh_last, dx, ddt, dA, dB, dC, dh0, fast):  # pragma: no cover - compiled
    """Adjoint of sscan_fwd. dA is per sequence (B, D, N) (summed by the caller).

    The recompute pass keeps each step's transition a (abuf) next to its state (hbuf), so the
    adjoint pass needs no exp and its n-loops hold no branch (they vectorize):
        g <- g + C dy;  dC += dy h_t;  dB += g dt x;  dx += g dt B;  ddt += g B x + (∂a/∂dt) g h_{t-1};
        (∂a/∂A) g h_{t-1} into dA;  (longhorn: ∂a/∂B = −2 dt B into dB);  g <- a g."""
    Bsz, T, D = x.shape
    N = Bm.shape[2]
    nc = ckpt.shape[1]
    for b in prange(Bsz):
        g = np.empty((D, N), dtype=x.dtype)  # adjoint of the state after the current step
        _copy2(g, dh_last[b])
        hbuf = np.empty((L + 1, D, N), dtype=x.dtype)
        abuf = np.empty((L, D, N), dtype=x.dtype)
        dAb = np.zeros((D, N), dtype=x.dtype)
        dCb = np.empty(N, dtype=x.dtype)
        dBb = np.empty(N, dtype=x.dtype)
        gbuf = np.empty(N, dtype=x.dtype)
        sbuf = np.empty(N, dtype=x.dtype)
        for c in range(nc - 1, -1, -1):
            t0 = c * L
            t1 = min(T, t0 + L)
            _copy2(hbuf[0], ckpt[b, c])
            for t in range(t0, t1):  # recompute the chunk's states and transitions
                j = t - t0
                for d in range(D):
                    dtv = dt[b, t, d]
                    xv = dtv * x[b, t, d]
                    e = abuf[j, d]
                    _fill_a(dtv, A, Bm, b, t, d, mode, e, fast)
                    for n in range(N):
                        hbuf[j + 1, d, n] = e[n] * hbuf[j, d, n] + Bm[b, t, n] * xv
            for t in range(t1 - 1, t0 - 1, -1):
                j = t - t0
                for n in range(N):
                    dCb[n] = 0.0
                    dBb[n] = 0.0
                Ct, Bt = Cm[b, t], Bm[b, t]
                for d in range(D):
                    dtv = dt[b, t, d]
                    xv = x[b, t, d]
                    dyv = dy[b, t, d]
                    gb = 0.0  # Σ_n g B
                    ga_s = 0.0  # Σ_n (∂a/∂dt) g h_{t-1}
                    dtx = dtv * xv
                    a = abuf[j, d]
                    hp = hbuf[j, d]
                    if mode == 2:
                        for n in range(N):
                            bn = Bm[b, t, n]
                            gn = g[d, n] + Cm[b, t, n] * dyv
                            ga = gn * hp[n]
                            dCb[n] += dyv * hbuf[j + 1, d, n]
                            gb += gn * bn
                            ga_s -= ga * bn * bn
                            dBb[n] += dtv * (gn * xv - 2.0 * ga * bn)
                            g[d, n] = a[n] * gn
                    else:  # split loops over 1-D rows: few arrays per loop, so each one vectorizes
                        off = 0.0 if mode == 0 else 1.0  # ∂a/∂(dt A) = e = a (exp) or 2e = a + 1 (exp_neg)
                        gd, Ad, dAd, hn1 = g[d], A[d], dAb[d], hbuf[j + 1, d]
                        for n in range(N):
                            gn = gd[n] + Ct[n] * dyv
                            gbuf[n] = gn
                            sbuf[n] = gn * hp[n] * (a[n] + off)
                        for n in range(N):
                            gb += gbuf[n] * Bt[n]
                            ga_s += sbuf[n] * Ad[n]
                        for n in range(N):
                            dCb[n] += dyv * hn1[n]
                            dBb[n] += gbuf[n] * dtx
                        for n in range(N):
                            dAd[n] += sbuf[n] * dtv
                            gd[n] = a[n] * gbuf[n]
                    ddt[b, t, d] = gb * xv + ga_s
                    dx[b, t, d] = gb * dtv
                for n in range(N):
                    dC[b, t, n] = dCb[n]
                    dB[b, t, n] = dBb[n]
        _copy2(dh0[b], g)
        _copy2(dA[b], dAb)
