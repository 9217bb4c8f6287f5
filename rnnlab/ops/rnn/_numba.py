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
via numba's np.dot and torch.mm all measured 2-4x slower at these skinny shapes). The batch rows are split into ``nparts``
contiguous groups, one per thread (prange): RNN rows are independent, so the groups never
synchronise inside the time loop. Gate non-linearities go through ``_exp_into``, a vectorisable
float32 exp (Cephes polynomial, relative error ~1e-7): numba has no vector libm here (no SVML).

Saved for the backward: h (B, T, H), acts (B, T, G*H) and aux (NA, B, T, H):
  elman: acts = h; aux unused          lstm: acts = (i, f, g, o); aux = (c, tanh c)
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
_OPTS = dict(cache=True, fastmath=True)


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


# --- forward gates, one step for a group of R rows -----------------------------------------------
# Every array here is a local C-contiguous buffer (strided views of the (B, T, ...) arrays would keep
# LLVM from vectorising): pre (R, GH) = gx_t + W h + b_hh, rb (R, GH) = W h + b_hh (the GRU needs it
# apart), st (NS, R, H) the state (updated in place, h in st[0]), at (R, GH) / ax (NA, R, H) the
# activations saved for the backward; a1/e1/i1 (R*GH) and a2/e2/i2 (R*H) scratch for _exp_into.

@njit(**_OPTS)
def _elman_fwd(flag, pre, st, at, a1, e1, i1):  # pragma: no cover - compiled
    R, H = pre.shape
    p, h = pre.reshape(R * H), at.reshape(R * H)
    if flag == 1:
        for q in range(R * H):
            h[q] = max(p[q], F32(0.0))
    else:
        for q in range(R * H):
            a1[q] = F32(-2.0) * p[q]
        _exp_into(a1, e1, i1)
        for q in range(R * H):
            h[q] = F32(2.0) / (F32(1.0) + e1[q]) - F32(1.0)
    st[0] = at


@njit(**_OPTS)
def _lstm_fwd(pre, st, at, ax, a1, e1, i1, a2, e2, i2):  # pragma: no cover - compiled
    R, GH = pre.shape
    H = GH // 4
    for r in range(R):  # i, f, o: sigmoid(x) = 1 / (1 + exp(-x)); g: tanh(x) = 2 sigmoid(2x) - 1
        for q in range(GH):
            a1[r * GH + q] = -pre[r, q]
        for q in range(2 * H, 3 * H):
            a1[r * GH + q] *= F32(2.0)
    _exp_into(a1, e1, i1)
    for r in range(R):
        for q in range(GH):
            at[r, q] = F32(1.0) / (F32(1.0) + e1[r * GH + q])
        for q in range(2 * H, 3 * H):
            at[r, q] = F32(2.0) * at[r, q] - F32(1.0)
        for u in range(H):
            st[1, r, u] = at[r, H + u] * st[1, r, u] + at[r, u] * at[r, 2 * H + u]
        for u in range(H):
            a2[r * H + u] = F32(-2.0) * st[1, r, u]
    _exp_into(a2, e2, i2)
    for r in range(R):
        for u in range(H):
            ax[1, r, u] = F32(2.0) / (F32(1.0) + e2[r * H + u]) - F32(1.0)
        for u in range(H):
            st[0, r, u] = at[r, 3 * H + u] * ax[1, r, u]
    ax[0] = st[1]


@njit(**_OPTS)
def _gru_fwd(pre, rb, gxn, st, at, ax, a1, e1, i1, a2, e2, i2):  # pragma: no cover - compiled
    """gxn (R, H): the input side of the n gate, gx_n (pre holds gx + rb for r and z)."""
    R, GH = pre.shape
    H = GH // 3
    for r in range(R):
        for q in range(2 * H):
            a1[r * GH + q] = -pre[r, q]
    _exp_into(a1, e1, i1)
    for r in range(R):  # n = tanh(gx_n + r * (W_hn h + b_hn))
        for q in range(2 * H):
            at[r, q] = F32(1.0) / (F32(1.0) + e1[r * GH + q])
        for u in range(H):
            ax[0, r, u] = rb[r, 2 * H + u]
        for u in range(H):
            a2[r * H + u] = F32(-2.0) * (gxn[r, u] + at[r, u] * ax[0, r, u])
    _exp_into(a2, e2, i2)
    for r in range(R):
        for u in range(H):
            at[r, 2 * H + u] = F32(2.0) / (F32(1.0) + e2[r * H + u]) - F32(1.0)
        for u in range(H):
            n = at[r, 2 * H + u]
            st[0, r, u] = n + at[r, H + u] * (st[0, r, u] - n)


@njit(**_OPTS)
def _slstm_fwd(flag, pre, st, at, ax, a1, e1, i1, a2, e2, i2):  # pragma: no cover - compiled
    R, GH = pre.shape
    H = GH // 4
    for r in range(R):  # exponents: exp(-|f~|) (log-sigmoid), -, exp(-2 z~) (tanh), exp(-o~) (sigmoid)
        for u in range(H):
            a1[r * GH + u] = -abs(pre[r, H + u])
        for u in range(H):
            a1[r * GH + H + u] = F32(0.0)
        for u in range(H):
            a1[r * GH + 2 * H + u] = F32(-2.0) * pre[r, 2 * H + u]
        for u in range(H):
            a1[r * GH + 3 * H + u] = -pre[r, 3 * H + u]
    _exp_into(a1, e1, i1)
    for r in range(R):
        for u in range(H):
            pf = pre[r, H + u]
            if flag == 1:  # exponential forget gate: log f = f~
                logf = pf
                dlogf = F32(1.0)
            else:  # sigmoid forget gate: log f = logsigmoid(f~) = min(f~, 0) - log(1 + exp(-|f~|))
                e = e1[r * GH + u]
                logf = min(pf, F32(0.0)) - _log1p_unit(e)
                dlogf = e / (F32(1.0) + e) if pf >= F32(0.0) else F32(1.0) / (F32(1.0) + e)
            pi = pre[r, u]  # log i = i~
            a = logf + st[3, r, u]
            m = max(a, pi)
            ax[2, r, u] = F32(1.0) if a > pi else (F32(0.0) if a < pi else F32(0.5))
            ax[3, r, u] = dlogf
            a2[r * H + u] = pi - m
            a1[r * GH + H + u] = a - m  # exponent of f' (slot unused above)
            st[3, r, u] = m
        for u in range(H):
            at[r, 2 * H + u] = F32(2.0) / (F32(1.0) + e1[r * GH + 2 * H + u]) - F32(1.0)
        for u in range(H):
            at[r, 3 * H + u] = F32(1.0) / (F32(1.0) + e1[r * GH + 3 * H + u])
    _exp_into(a2, e2, i2)  # i'
    for r in range(R):
        for u in range(H):
            at[r, u] = e2[r * H + u]
        for u in range(H):
            a2[r * H + u] = a1[r * GH + H + u]
    _exp_into(a2, e2, i2)  # f'
    for r in range(R):
        for u in range(H):
            at[r, H + u] = e2[r * H + u]
        for u in range(H):
            fg, ig = at[r, H + u], at[r, u]
            st[1, r, u] = fg * st[1, r, u] + ig * at[r, 2 * H + u]
            st[2, r, u] = fg * st[2, r, u] + ig
        for u in range(H):
            st[0, r, u] = at[r, 3 * H + u] * st[1, r, u] / st[2, r, u]
    ax[0] = st[1]
    ax[1] = st[2]


@njit(**_OPTS)
def _fwd_rows(cell, flag, gx, WT, bias, s0, hs, acts, aux, sT, lo, hi):  # pragma: no cover - compiled
    """The whole forward for batch rows [lo, hi)."""
    literally(cell)
    T, GH = gx.shape[1], gx.shape[2]
    NH, Kh, GK = WT.shape
    G = GK // Kh
    H = NH * Kh
    R = hi - lo
    NA = aux.shape[0]
    st = np.empty((s0.shape[0], R, H), np.float32)
    st[:] = s0[:, lo:hi]
    hloc = np.empty((NH, R, Kh), np.float32)  # h_{t-1} head by head: the matmul operand
    rec = np.empty((NH, R, GK), np.float32)
    rb, pre, at = np.empty((R, GH), np.float32), np.empty((R, GH), np.float32), np.empty((R, GH), np.float32)
    ax, gxn = np.empty((NA, R, H), np.float32), np.empty((R, H), np.float32)
    a1, e1, i1 = np.empty(R * GH, np.float32), np.empty(R * GH, np.float32), np.empty(R * GH, np.int32)
    a2, e2, i2 = np.empty(R * H, np.float32), np.empty(R * H, np.float32), np.empty(R * H, np.int32)
    for r in range(R):
        for n in range(NH):
            for j in range(Kh):
                hloc[n, r, j] = st[0, r, n * Kh + j]
    for t in range(T):
        for n in range(NH):
            matmul_into(hloc[n], WT[n], rec[n])
        for r in range(R):  # head-major -> gate-major, + b_hh; + gx
            for g in range(G):
                for n in range(NH):
                    o = g * H + n * Kh
                    for j in range(Kh):
                        rb[r, o + j] = rec[n, r, g * Kh + j] + bias[o + j]
            for q in range(GH):
                pre[r, q] = gx[lo + r, t, q] + rb[r, q]
        if cell == ELMAN:
            _elman_fwd(flag, pre, st, at, a1, e1, i1)
        elif cell == LSTM:
            _lstm_fwd(pre, st, at, ax, a1, e1, i1, a2, e2, i2)
        elif cell == GRU:
            for r in range(R):
                for u in range(H):
                    gxn[r, u] = gx[lo + r, t, 2 * H + u]
            _gru_fwd(pre, rb, gxn, st, at, ax, a1, e1, i1, a2, e2, i2)
        else:
            _slstm_fwd(flag, pre, st, at, ax, a1, e1, i1, a2, e2, i2)
        for r in range(R):  # save for the backward; h -> the next step's matmul operand
            for q in range(GH):
                acts[lo + r, t, q] = at[r, q]
            for k in range(NA if cell != ELMAN else 0):
                for u in range(H):
                    aux[k, lo + r, t, u] = ax[k, r, u]
            for u in range(H):
                hs[lo + r, t, u] = st[0, r, u]
            for n in range(NH):
                for j in range(Kh):
                    hloc[n, r, j] = st[0, r, n * Kh + j]
    sT[:, lo:hi] = st


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


# --- backward ---------------------------------------------------------------------------------------

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
    for t in range(T - 1, -1, -1):
        for r in range(R):
            b = lo + r
            for u in range(H):
                dh = dhs[b, t, u] + ds[0, r, u]
                if cell == ELMAN:
                    h = acts[b, t, u]
                    if flag == 1:
                        dp = dh if h > F32(0.0) else F32(0.0)
                    else:
                        dp = dh * (F32(1.0) - h * h)
                    dgx[b, t, u] = dp
                    ds[0, r, u] = F32(0.0)
                elif cell == LSTM:
                    i = acts[b, t, u]
                    f = acts[b, t, H + u]
                    g = acts[b, t, 2 * H + u]
                    o = acts[b, t, 3 * H + u]
                    tc = aux[1, b, t, u]
                    cp = aux[0, b, t - 1, u] if t > 0 else s0[1, b, u]
                    dc = ds[1, r, u] + dh * o * (F32(1.0) - tc * tc)
                    dgx[b, t, u] = dc * g * i * (F32(1.0) - i)
                    dgx[b, t, H + u] = dc * cp * f * (F32(1.0) - f)
                    dgx[b, t, 2 * H + u] = dc * i * (F32(1.0) - g * g)
                    dgx[b, t, 3 * H + u] = dh * tc * o * (F32(1.0) - o)
                    ds[1, r, u] = dc * f
                    ds[0, r, u] = F32(0.0)
                elif cell == GRU:
                    hp = hs[b, t - 1, u] if t > 0 else s0[0, b, u]
                    rg = acts[b, t, u]
                    z = acts[b, t, H + u]
                    n = acts[b, t, 2 * H + u]
                    rn = aux[0, b, t, u]
                    dpn = dh * (F32(1.0) - z) * (F32(1.0) - n * n)
                    dpr = dpn * rn * rg * (F32(1.0) - rg)
                    dpz = dh * (hp - n) * z * (F32(1.0) - z)
                    dgx[b, t, u] = dpr
                    dgx[b, t, H + u] = dpz
                    dgx[b, t, 2 * H + u] = dpn
                    drec[b, t, u] = dpr
                    drec[b, t, H + u] = dpz
                    drec[b, t, 2 * H + u] = dpn * rg
                    ds[0, r, u] = dh * z  # direct path h_{t-1} -> h_t
                else:  # SLSTM
                    ig = acts[b, t, u]
                    fg = acts[b, t, H + u]
                    tz = acts[b, t, 2 * H + u]
                    o = acts[b, t, 3 * H + u]
                    c = aux[0, b, t, u]
                    n = aux[1, b, t, u]
                    sel = aux[2, b, t, u]
                    dlogf = aux[3, b, t, u]
                    cp = aux[0, b, t - 1, u] if t > 0 else s0[1, b, u]
                    np_ = aux[1, b, t - 1, u] if t > 0 else s0[2, b, u]
                    inv_n = F32(1.0) / n
                    dc = ds[1, r, u] + dh * o * inv_n
                    dn = ds[2, r, u] - dh * o * c * inv_n * inv_n
                    dfg = dc * cp + dn * np_
                    dig = dc * tz + dn
                    dm = ds[3, r, u] - dfg * fg - dig * ig  # m_t enters i' and f' with a minus sign
                    da = dfg * fg + sel * dm  # a = log f + m_{t-1}
                    dgx[b, t, u] = dig * ig + (F32(1.0) - sel) * dm
                    dgx[b, t, H + u] = da * dlogf
                    dgx[b, t, 2 * H + u] = dc * ig * (F32(1.0) - tz * tz)
                    dgx[b, t, 3 * H + u] = dh * c * inv_n * o * (F32(1.0) - o)
                    ds[1, r, u] = dc * fg
                    ds[2, r, u] = dn * fg
                    ds[3, r, u] = da
                    ds[0, r, u] = F32(0.0)
            for g in range(G):  # gate-major -> head-major
                for n_ in range(NH):
                    o_ = g * H + n_ * Kh
                    for j in range(Kh):
                        dloc[n_, r, g * Kh + j] = drec[b, t, o_ + j]
        for n_ in range(NH):  # d h_{t-1} += drec_t @ W, head by head
            matmul_into(dloc[n_], W[n_], dhl[n_])
        for r in range(R):
            for n_ in range(NH):
                for j in range(Kh):
                    ds[0, r, n_ * Kh + j] += dhl[n_, r, j]
    ds0[:, lo:hi] = ds


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
