"""numba kernels of rnnlab.ops.rnn (CPU, float32): one call runs the forward over the whole sequence,
one call the backward through time. Cached on disk (``cache=True``).

    KERNELS[cell] = (fwd, bwd)
    fwd(flag, gx, WT, bias, s0, hs, acts, aux, sT, nparts)
    bwd(flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, ds0, nparts)

One pair of entry points per cell, each compiled on its first use (only that cell's branch: the cell
reaches the shared row loops as a compile-time literal) and cached. ``flag``: elman 1 = relu,
slstm 1 = exponential forget gate. Layout (see reference.py): gx (B, T, G*H) gate-major; the recurrent
weights per head WT (NH, Kh, G*Kh) (forward: h_n @ WT[n]) and W (NH, G*Kh, Kh) (backward: drec_n @ W[n]);
bias (G*H,) is b_hh.

Speed (measured, see benchmarks/nonlinear.py): the recurrent matmul of every step goes to
``_simd.matmul_into`` (an explicit 16-lane sgemm micro-kernel; a plain numba triple loop, OpenBLAS
via numba's np.dot and torch.mm all measured 1.5-4x slower at these skinny shapes). The batch rows
are split into ``nparts`` contiguous groups, one per thread (prange): RNN rows are independent, so
the groups never synchronise inside the time loop. Gate non-linearities go through ``_exp_into``, a vectorisable
float32 exp (Cephes polynomial, relative error ~1e-7): numba has no vector libm here (no SVML).
The per-step element-wise work runs row by row on 1-D C-contiguous views (``acts[b, t]``) in short
loops over few arrays each: strided 2-D views or loops touching many arrays (LLVM then gives up on
the run-time alias checks) measured 2-3x slower.

Saved for the backward: h (B, T, H), acts (B, T, G*H) and aux (NA, B, T, H):
  elman: acts = h; aux empty           lstm: acts = (i, f, g, o); aux = (c, tanh c)
  gru:   acts = (r, z, n); aux = (W_hn h + b_hn,)
  slstm: acts = (i', f', tanh z, o); aux = (c, n, sel, dlogf) with sel = d m / d(log f + m_prev)
         (1, 0, or 1/2 at a tie, as torch.maximum) and dlogf = d log f / d f~.
"""
from __future__ import annotations

import numpy as np
from numba import literally, njit, prange

from rnnlab.ops.rnn._simd import matmul_into

ELMAN, LSTM, GRU, SLSTM = 0, 1, 2, 3
F32 = np.float32
# error_model="numpy": no ZeroDivisionError branch in every division (it blocks vectorisation)
_OPTS = dict(cache=True, fastmath=True, error_model="numpy")


@njit(**_OPTS)
def _exp_into(x, out, ibuf):  # pragma: no cover - compiled
    """out = exp(x) for 1-D float32 x (clamped to [-87, 88]); ibuf int32 scratch of the same length."""
    n = x.shape[0]
    for i in range(n):
        v = min(max(x[i], F32(-87.0)), F32(88.0))
        kf = np.floor(v * F32(1.4426950408889634) + F32(0.5))
        r = v - kf * F32(0.693359375) + kf * F32(2.12194440e-4)
        p = F32(1.9875691500e-4)
        p = p * r + F32(1.3981999507e-3)
        p = p * r + F32(8.3334519073e-3)
        p = p * r + F32(4.1665795894e-2)
        p = p * r + F32(1.6666665459e-1)
        p = p * r + F32(5.0000001201e-1)
        out[i] = p * r * r + r + F32(1.0)
        ibuf[i] = (np.int32(kf) + np.int32(127)) << 23
    f = ibuf.view(np.float32)
    for i in range(n):
        out[i] *= f[i]


@njit(**_OPTS)
def _log1p_unit(e):  # pragma: no cover - compiled
    """log(1 + e) for e in [0, 1]: 2 atanh(s), s = e / (2 + e) in [0, 1/3] (series to s^17)."""
    s = e / (F32(2.0) + e)
    s2 = s * s
    p = F32(1.0 / 17.0)
    p = p * s2 + F32(1.0 / 15.0)
    p = p * s2 + F32(1.0 / 13.0)
    p = p * s2 + F32(1.0 / 11.0)
    p = p * s2 + F32(1.0 / 9.0)
    p = p * s2 + F32(1.0 / 7.0)
    p = p * s2 + F32(1.0 / 5.0)
    p = p * s2 + F32(1.0 / 3.0)
    return F32(2.0) * s * (p * s2 + F32(1.0))


# --- forward: one step of one batch row, on 1-D views ----------------------------------------------
# p (GH,) pre-activations gx_t + W h + b_hh; at (GH,) activations saved for the backward (acts[b, t]);
# state rows (H,) updated in place (h last); a1/e1/i1 (GH,) and a2/e2/i2 (H,) scratch for _exp_into.

@njit(inline="always", **_OPTS)
def _elman_row(flag, p, h, at, a1, e1, i1):  # pragma: no cover - compiled
    H = p.shape[0]
    if flag == 1:
        for u in range(H):
            at[u] = max(p[u], F32(0.0))
    else:
        for u in range(H):
            a1[u] = F32(-2.0) * p[u]
        _exp_into(a1, e1, i1)
        for u in range(H):
            at[u] = F32(2.0) / (F32(1.0) + e1[u]) - F32(1.0)
    h[:] = at


@njit(inline="always", **_OPTS)
def _lstm_row(p, h, c, at, c_out, tc_out, a1, e1, i1, a2, e2, i2):  # pragma: no cover - compiled
    GH = p.shape[0]
    H = GH // 4
    for q in range(GH):  # i, f, o: sigmoid(x) = 1 / (1 + exp(-x)); g: tanh(x) = 2 sigmoid(2x) - 1
        a1[q] = -p[q]
    for q in range(2 * H, 3 * H):
        a1[q] *= F32(2.0)
    _exp_into(a1, e1, i1)
    for q in range(GH):
        at[q] = F32(1.0) / (F32(1.0) + e1[q])
    for q in range(2 * H, 3 * H):
        at[q] = F32(2.0) * at[q] - F32(1.0)
    for u in range(H):
        c[u] = at[H + u] * c[u] + at[u] * at[2 * H + u]
    for u in range(H):
        c_out[u] = c[u]
        a2[u] = F32(-2.0) * c[u]
    _exp_into(a2, e2, i2)
    for u in range(H):
        tc_out[u] = F32(2.0) / (F32(1.0) + e2[u]) - F32(1.0)
    for u in range(H):
        h[u] = at[3 * H + u] * tc_out[u]


@njit(inline="always", **_OPTS)
def _gru_row(p, rb, gxn, h, at, rn_out, a1, e1, i1, a2, e2, i2):  # pragma: no cover - compiled
    """p[:2H] = gx + rb for r and z; n = tanh(gx_n + r * (W_hn h + b_hn)) needs gxn and rb[2H:] apart."""
    H = h.shape[0]
    for q in range(2 * H):
        a1[q] = -p[q]
    _exp_into(a1[: 2 * H], e1[: 2 * H], i1[: 2 * H])
    for q in range(2 * H):
        at[q] = F32(1.0) / (F32(1.0) + e1[q])
    for u in range(H):
        rn_out[u] = rb[2 * H + u]
    for u in range(H):
        a2[u] = F32(-2.0) * (gxn[u] + at[u] * rn_out[u])
    _exp_into(a2, e2, i2)
    for u in range(H):
        at[2 * H + u] = F32(2.0) / (F32(1.0) + e2[u]) - F32(1.0)
    for u in range(H):
        h[u] = at[2 * H + u] + at[H + u] * (h[u] - at[2 * H + u])


@njit(inline="always", **_OPTS)
def _slstm_row(flag, p, h, c, n, m, at, c_out, n_out, sel_out, dlogf_out, a1, e1, i1, a2, e2, i2):  # pragma: no cover
    GH = p.shape[0]
    H = GH // 4
    for u in range(H):  # exponents: exp(-|f~|) (log-sigmoid), exp(-2 z~) (tanh), exp(-o~) (sigmoid)
        a1[u] = -abs(p[H + u])
    for u in range(H):
        a1[H + u] = F32(-2.0) * p[2 * H + u]
    for u in range(H):
        a1[2 * H + u] = -p[3 * H + u]
    _exp_into(a1[: 3 * H], e1[: 3 * H], i1[: 3 * H])
    for u in range(H):
        pf = p[H + u]
        if flag == 1:  # exponential forget gate: log f = f~
            logf = pf
            dlogf_out[u] = F32(1.0)
        else:  # sigmoid forget gate: log f = logsigmoid(f~) = min(f~, 0) - log(1 + exp(-|f~|))
            e = e1[u]
            logf = min(pf, F32(0.0)) - _log1p_unit(e)
            dlogf_out[u] = e / (F32(1.0) + e) if pf >= F32(0.0) else F32(1.0) / (F32(1.0) + e)
        a = logf + m[u]  # log f + m_{t-1}; log i = i~
        mn = max(a, p[u])
        sel_out[u] = F32(1.0) if a > p[u] else (F32(0.0) if a < p[u] else F32(0.5))
        a2[u] = p[u] - mn  # exponent of i'
        a1[3 * H + u] = a - mn  # exponent of f'
        m[u] = mn
    for u in range(H):
        at[2 * H + u] = F32(2.0) / (F32(1.0) + e1[H + u]) - F32(1.0)
    for u in range(H):
        at[3 * H + u] = F32(1.0) / (F32(1.0) + e1[2 * H + u])
    _exp_into(a2, e2, i2)  # i'
    for u in range(H):
        at[u] = e2[u]
    _exp_into(a1[3 * H :], e2, i2)  # f'
    for u in range(H):
        at[H + u] = e2[u]
    for u in range(H):
        c[u] = at[H + u] * c[u] + at[u] * at[2 * H + u]
    for u in range(H):
        n[u] = at[H + u] * n[u] + at[u]
    for u in range(H):
        h[u] = at[3 * H + u] * c[u] / n[u]
    c_out[:] = c
    n_out[:] = n


@njit(**_OPTS)
def _fwd_rows(cell, flag, gx, WT, bias, s0, hs, acts, aux, sT, lo, hi):  # pragma: no cover - compiled
    """The whole forward for batch rows [lo, hi)."""
    literally(cell)
    T, GH = gx.shape[1], gx.shape[2]
    NH, Kh, GK = WT.shape
    G = GK // Kh
    H = NH * Kh
    R = hi - lo
    st = np.empty((s0.shape[0], R, H), np.float32)
    st[:] = s0[:, lo:hi]
    hloc = np.empty((NH, R, Kh), np.float32)  # h_{t-1} head by head: the matmul operand
    rec = np.empty((NH, R, GK), np.float32)
    rb, p = np.empty(GH, np.float32), np.empty(GH, np.float32)
    a1, e1, i1 = np.empty(GH, np.float32), np.empty(GH, np.float32), np.empty(GH, np.int32)
    a2, e2, i2 = np.empty(H, np.float32), np.empty(H, np.float32), np.empty(H, np.int32)
    for r in range(R):
        for n in range(NH):
            hloc[n, r] = st[0, r, n * Kh : (n + 1) * Kh]
    for t in range(T):
        for n in range(NH):
            matmul_into(hloc[n], WT[n], rec[n])
        for r in range(R):
            b = lo + r
            for g in range(G):  # head-major -> gate-major, + b_hh
                for n in range(NH):
                    o = g * H + n * Kh
                    for j in range(Kh):
                        rb[o + j] = rec[n, r, g * Kh + j] + bias[o + j]
            x = gx[b, t]
            for q in range(GH):
                p[q] = x[q] + rb[q]
            if cell == ELMAN:
                _elman_row(flag, p, st[0, r], acts[b, t], a1, e1, i1)
            elif cell == LSTM:
                _lstm_row(p, st[0, r], st[1, r], acts[b, t], aux[0, b, t], aux[1, b, t], a1, e1, i1, a2, e2, i2)
            elif cell == GRU:
                _gru_row(p, rb, x[2 * H :], st[0, r], acts[b, t], aux[0, b, t], a1, e1, i1, a2, e2, i2)
            else:
                _slstm_row(flag, p, st[0, r], st[1, r], st[2, r], st[3, r], acts[b, t], aux[0, b, t], aux[1, b, t],
                           aux[2, b, t], aux[3, b, t], a1, e1, i1, a2, e2, i2)
            hs[b, t] = st[0, r]
            for n in range(NH):
                hloc[n, r] = st[0, r, n * Kh : (n + 1) * Kh]
    sT[:, lo:hi] = st


# --- backward: one step of one batch row, on 1-D views ---------------------------------------------
# dh (H,) = dL/dh_t (output + carried); at = acts[b, t]; dg (GH,) = dL/d gx_t (dgx[b, t]); ds* (H,) the
# carried state gradients, updated in place to dL/d state_{t-1} (ds0 = dh's direct part only: the
# recurrent part drec @ W is added by the caller); prev state rows (H,) from aux[:, b, t-1] or s0.

@njit(inline="always", **_OPTS)
def _elman_row_bwd(flag, dh, at, dg, ds0):  # pragma: no cover - compiled
    H = dh.shape[0]
    if flag == 1:
        for u in range(H):
            dg[u] = dh[u] if at[u] > F32(0.0) else F32(0.0)
    else:
        for u in range(H):
            dg[u] = dh[u] * (F32(1.0) - at[u] * at[u])
    ds0[:] = F32(0.0)


@njit(inline="always", **_OPTS)
def _lstm_row_bwd(dh, at, tc, c_prev, dg, ds0, ds1, dc):  # pragma: no cover - compiled
    H = dh.shape[0]
    for u in range(H):
        dc[u] = ds1[u] + dh[u] * at[3 * H + u] * (F32(1.0) - tc[u] * tc[u])
    for u in range(H):
        dg[u] = dc[u] * at[2 * H + u] * at[u] * (F32(1.0) - at[u])
    for u in range(H):
        dg[H + u] = dc[u] * c_prev[u] * at[H + u] * (F32(1.0) - at[H + u])
    for u in range(H):
        dg[2 * H + u] = dc[u] * at[u] * (F32(1.0) - at[2 * H + u] * at[2 * H + u])
    for u in range(H):
        dg[3 * H + u] = dh[u] * tc[u] * at[3 * H + u] * (F32(1.0) - at[3 * H + u])
    for u in range(H):
        ds1[u] = dc[u] * at[H + u]
    ds0[:] = F32(0.0)


@njit(inline="always", **_OPTS)
def _gru_row_bwd(dh, at, rn, h_prev, dg, dr, ds0):  # pragma: no cover - compiled
    """dr (GH,) = dL/d(W h + b_hh): the n gate's part is r times the input side's."""
    H = dh.shape[0]
    for u in range(H):
        dg[2 * H + u] = dh[u] * (F32(1.0) - at[H + u]) * (F32(1.0) - at[2 * H + u] * at[2 * H + u])
    for u in range(H):
        dr[2 * H + u] = dg[2 * H + u] * at[u]
    for u in range(H):
        dg[u] = dg[2 * H + u] * rn[u] * at[u] * (F32(1.0) - at[u])
    for u in range(H):
        dg[H + u] = dh[u] * (h_prev[u] - at[2 * H + u]) * at[H + u] * (F32(1.0) - at[H + u])
    for u in range(2 * H):
        dr[u] = dg[u]
    for u in range(H):
        ds0[u] = dh[u] * at[H + u]  # direct path h_{t-1} -> h_t


@njit(inline="always", **_OPTS)
def _slstm_row_bwd(dh, at, c, n, sel, dlogf, c_prev, n_prev, dg, ds0, ds1, ds2, ds3, dc, dn, t1):  # pragma: no cover
    H = dh.shape[0]
    for u in range(H):  # h = o c / n
        t1[u] = F32(1.0) / n[u]
    for u in range(H):
        dc[u] = ds1[u] + dh[u] * at[3 * H + u] * t1[u]
    for u in range(H):
        dn[u] = ds2[u] - dh[u] * at[3 * H + u] * c[u] * t1[u] * t1[u]
    for u in range(H):
        dg[3 * H + u] = dh[u] * c[u] * t1[u] * at[3 * H + u] * (F32(1.0) - at[3 * H + u])
    for u in range(H):
        dg[2 * H + u] = dc[u] * at[u] * (F32(1.0) - at[2 * H + u] * at[2 * H + u])
    for u in range(H):  # d f' and d i' (into dg's i and f slots, overwritten below)
        dg[H + u] = dc[u] * c_prev[u] + dn[u] * n_prev[u]
    for u in range(H):
        dg[u] = dc[u] * at[2 * H + u] + dn[u]
    for u in range(H):  # m_t enters i' and f' with a minus sign; a = log f + m_{t-1}
        t1[u] = ds3[u] - dg[H + u] * at[H + u] - dg[u] * at[u]  # d m_t
    for u in range(H):
        ds3[u] = dg[H + u] * at[H + u] + sel[u] * t1[u]  # d a = d m_{t-1}
    for u in range(H):
        dg[u] = dg[u] * at[u] + (F32(1.0) - sel[u]) * t1[u]
    for u in range(H):
        dg[H + u] = ds3[u] * dlogf[u]
    for u in range(H):
        ds1[u] = dc[u] * at[H + u]
    for u in range(H):
        ds2[u] = dn[u] * at[H + u]
    ds0[:] = F32(0.0)


@njit(**_OPTS)
def _bwd_rows(cell, flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, ds0, lo, hi):  # pragma: no cover - compiled
    """The whole backward through time for batch rows [lo, hi); ds carries d(state_t) backwards."""
    literally(cell)
    T, H = hs.shape[1], hs.shape[2]
    NH, GK, Kh = W.shape
    G = GK // Kh
    R = hi - lo
    ds = np.empty((dsT.shape[0], R, H), np.float32)
    ds[:] = dsT[:, lo:hi]
    dloc = np.empty((NH, R, GK), np.float32)
    dhl = np.empty((NH, R, Kh), np.float32)
    dh, t1, t2, t3 = np.empty(H, np.float32), np.empty(H, np.float32), np.empty(H, np.float32), np.empty(H, np.float32)
    for t in range(T - 1, -1, -1):
        for r in range(R):
            b = lo + r
            for u in range(H):
                dh[u] = dhs[b, t, u] + ds[0, r, u]
            if cell == ELMAN:
                _elman_row_bwd(flag, dh, acts[b, t], dgx[b, t], ds[0, r])
            elif cell == LSTM:
                c_prev = aux[0, b, t - 1] if t > 0 else s0[1, b]
                _lstm_row_bwd(dh, acts[b, t], aux[1, b, t], c_prev, dgx[b, t], ds[0, r], ds[1, r], t1)
            elif cell == GRU:
                h_prev = hs[b, t - 1] if t > 0 else s0[0, b]
                _gru_row_bwd(dh, acts[b, t], aux[0, b, t], h_prev, dgx[b, t], drec[b, t], ds[0, r])
            else:
                c_prev = aux[0, b, t - 1] if t > 0 else s0[1, b]
                n_prev = aux[1, b, t - 1] if t > 0 else s0[2, b]
                _slstm_row_bwd(dh, acts[b, t], aux[0, b, t], aux[1, b, t], aux[2, b, t], aux[3, b, t], c_prev, n_prev,
                               dgx[b, t], ds[0, r], ds[1, r], ds[2, r], ds[3, r], t1, t2, t3)
            d = drec[b, t]
            for g in range(G):  # gate-major -> head-major
                for n in range(NH):
                    o = g * H + n * Kh
                    for j in range(Kh):
                        dloc[n, r, g * Kh + j] = d[o + j]
        for n in range(NH):  # d h_{t-1} += drec_t @ W, head by head
            matmul_into(dloc[n], W[n], dhl[n])
        for r in range(R):
            for n in range(NH):
                for j in range(Kh):
                    ds[0, r, n * Kh + j] += dhl[n, r, j]
    ds0[:, lo:hi] = ds


# One entry point per cell and direction: ``cell`` reaches _fwd_rows/_bwd_rows as a compile-time constant
# (each cell compiles only its own branch, on first use), while the call from Python stays a plain
# dispatch (a ``literally`` argument at the Python boundary measured ~30 ms of re-typing per call).

@njit(parallel=True, **_OPTS)
def elman_fwd(flag, gx, WT, bias, s0, hs, acts, aux, sT, nparts):  # pragma: no cover - compiled
    B = gx.shape[0]
    for p in prange(nparts):
        _fwd_rows(ELMAN, flag, gx, WT, bias, s0, hs, acts, aux, sT, p * B // nparts, (p + 1) * B // nparts)


@njit(parallel=True, **_OPTS)
def lstm_fwd(flag, gx, WT, bias, s0, hs, acts, aux, sT, nparts):  # pragma: no cover - compiled
    B = gx.shape[0]
    for p in prange(nparts):
        _fwd_rows(LSTM, flag, gx, WT, bias, s0, hs, acts, aux, sT, p * B // nparts, (p + 1) * B // nparts)


@njit(parallel=True, **_OPTS)
def gru_fwd(flag, gx, WT, bias, s0, hs, acts, aux, sT, nparts):  # pragma: no cover - compiled
    B = gx.shape[0]
    for p in prange(nparts):
        _fwd_rows(GRU, flag, gx, WT, bias, s0, hs, acts, aux, sT, p * B // nparts, (p + 1) * B // nparts)


@njit(parallel=True, **_OPTS)
def slstm_fwd(flag, gx, WT, bias, s0, hs, acts, aux, sT, nparts):  # pragma: no cover - compiled
    B = gx.shape[0]
    for p in prange(nparts):
        _fwd_rows(SLSTM, flag, gx, WT, bias, s0, hs, acts, aux, sT, p * B // nparts, (p + 1) * B // nparts)


@njit(parallel=True, **_OPTS)
def elman_bwd(flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, ds0, nparts):  # pragma: no cover - compiled
    B = hs.shape[0]
    for p in prange(nparts):
        _bwd_rows(ELMAN, flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, ds0, p * B // nparts, (p + 1) * B // nparts)


@njit(parallel=True, **_OPTS)
def lstm_bwd(flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, ds0, nparts):  # pragma: no cover - compiled
    B = hs.shape[0]
    for p in prange(nparts):
        _bwd_rows(LSTM, flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, ds0, p * B // nparts, (p + 1) * B // nparts)


@njit(parallel=True, **_OPTS)
def gru_bwd(flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, ds0, nparts):  # pragma: no cover - compiled
    B = hs.shape[0]
    for p in prange(nparts):
        _bwd_rows(GRU, flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, ds0, p * B // nparts, (p + 1) * B // nparts)


@njit(parallel=True, **_OPTS)
def slstm_bwd(flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, ds0, nparts):  # pragma: no cover - compiled
    B = hs.shape[0]
    for p in prange(nparts):
        _bwd_rows(SLSTM, flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, ds0, p * B // nparts, (p + 1) * B // nparts)


KERNELS = {"elman": (elman_fwd, elman_bwd), "lstm": (lstm_fwd, lstm_bwd), "gru": (gru_fwd, gru_bwd),
           "slstm": (slstm_fwd, slstm_bwd)}
