"""numba kernels of rnnlab.ops.rnn (CPU, float32), compiled once and cached on disk (``cache=True``).

One forward call runs the whole sequence; one backward call runs the whole backward through time.
Layout (see reference.py): gx (B, T, G*H) gate-major, the recurrent weights per head as
WT (NH, Kh, G*Kh) (forward: h_n @ WT[n]) and W (NH, G*Kh, Kh) (backward: drec_n @ W[n]).
Per step the recurrent matmul goes to ``_mm`` and the gate non-linearities are evaluated over the
whole (B, G*H) step buffer with ``_exp_into``, a vectorisable float32 exp (Cephes polynomial,
relative error ~1e-7): numba has no vector libm here (no SVML), and scalar libm exp would cost
more than the matmul.

Saved for the backward: h (B, T, H), acts (B, T, G*H) and aux (NA, B, T, H):
  elman: acts = h; aux unused          lstm: acts = (i, f, g, o); aux = (c, tanh c)
  gru:   acts = (r, z, n); aux = (W_hn h + b_hn,)
  slstm: acts = (i', f', tanh z, o); aux = (c, n, sel, dlogf) with sel = d m / d(log f + m_prev)
         (1, 0, or 1/2 at a tie, as torch.maximum) and dlogf = d log f / d f~.
"""
from __future__ import annotations

import numpy as np
from numba import njit

ELMAN, LSTM, GRU, SLSTM = 0, 1, 2, 3
F32 = np.float32


@njit(cache=True, fastmath=True, inline="always")
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


@njit(cache=True, fastmath=True, inline="always")
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


@njit(cache=True, fastmath=True, inline="always")
def _mm(a, b, out):  # pragma: no cover - compiled
    """out = a @ b; a (M, K), b (K, N), out (M, N), all C-contiguous float32."""
    M, K = a.shape
    N = b.shape[1]
    for m in range(M):
        for j in range(N):
            out[m, j] = F32(0.0)
        for k in range(K):
            amk = a[m, k]
            for j in range(N):
                out[m, j] += amk * b[k, j]


@njit(cache=True, fastmath=True)
def rnn_fwd(cell, flag, gx, WT, bias, s0, hs, acts, aux, sT):  # pragma: no cover - compiled
    """Forward over the whole sequence.

    cell: ELMAN/LSTM/GRU/SLSTM; flag: elman 1 = relu, slstm 1 = exponential forget gate.
    gx (B, T, GH), WT (NH, Kh, GK), bias (GH), s0 (NS, B, H) -> writes hs (B, T, H),
    acts (B, T, GH), aux (NA, B, T, H), sT (NS, B, H)."""
    B, T, GH = gx.shape
    NH, Kh, GK = WT.shape
    G = GK // Kh
    H = NH * Kh
    st = s0.copy()
    hloc = np.empty((NH, B, Kh), np.float32)
    rec = np.empty((NH, B, GK), np.float32)
    pre = np.empty(B * GH, np.float32)
    arg = np.empty(B * GH, np.float32)
    ex = np.empty(B * GH, np.float32)
    ibuf = np.empty(B * GH, np.int32)
    arg2 = np.empty(B * H, np.float32)
    ex2 = np.empty(B * H, np.float32)
    ibuf2 = np.empty(B * H, np.int32)
    for b in range(B):
        for n in range(NH):
            for j in range(Kh):
                hloc[n, b, j] = st[0, b, n * Kh + j]
    for t in range(T):
        for n in range(NH):
            _mm(hloc[n], WT[n], rec[n])
        # pre-activations, gate-major per batch row: pre[b*GH + g*H + n*Kh + j]
        for b in range(B):
            for g in range(G):
                for n in range(NH):
                    o = g * H + n * Kh
                    for j in range(Kh):
                        pre[b * GH + o + j] = gx[b, t, o + j] + bias[o + j] + rec[n, b, g * Kh + j]
        if cell == ELMAN:
            if flag == 1:
                for q in range(B * GH):
                    ex[q] = max(pre[q], F32(0.0))
            else:
                for q in range(B * GH):
                    arg[q] = F32(-2.0) * pre[q]
                _exp_into(arg, ex, ibuf)
                for q in range(B * GH):
                    ex[q] = F32(2.0) / (F32(1.0) + ex[q]) - F32(1.0)
            for b in range(B):
                for u in range(H):
                    h = ex[b * GH + u]
                    acts[b, t, u] = h
                    st[0, b, u] = h
        elif cell == LSTM:
            for b in range(B):
                for q in range(GH):
                    s = F32(-2.0) if (q >= 2 * H and q < 3 * H) else F32(-1.0)
                    arg[b * GH + q] = s * pre[b * GH + q]
            _exp_into(arg, ex, ibuf)
            for b in range(B):
                for q in range(GH):
                    a = F32(1.0) / (F32(1.0) + ex[b * GH + q])
                    if q >= 2 * H and q < 3 * H:
                        a = F32(2.0) * a - F32(1.0)
                    acts[b, t, q] = a
                for u in range(H):
                    c = acts[b, t, H + u] * st[1, b, u] + acts[b, t, u] * acts[b, t, 2 * H + u]
                    st[1, b, u] = c
                    aux[0, b, t, u] = c
                    arg2[b * H + u] = F32(-2.0) * c
            _exp_into(arg2, ex2, ibuf2)
            for b in range(B):
                for u in range(H):
                    tc = F32(2.0) / (F32(1.0) + ex2[b * H + u]) - F32(1.0)
                    aux[1, b, t, u] = tc
                    st[0, b, u] = acts[b, t, 3 * H + u] * tc
        elif cell == GRU:
            # r, z from the summed pre-activations; n = tanh(gx_n + r * (rec_n + b_hn)) needs them apart
            for b in range(B):
                for q in range(2 * H):
                    arg[b * GH + q] = -pre[b * GH + q]
            _exp_into(arg, ex, ibuf)
            for b in range(B):
                for q in range(2 * H):
                    acts[b, t, q] = F32(1.0) / (F32(1.0) + ex[b * GH + q])
                for g in range(1):
                    for n in range(NH):
                        for j in range(Kh):
                            u = n * Kh + j
                            rn = rec[n, b, 2 * Kh + j] + bias[2 * H + u]
                            aux[0, b, t, u] = rn
                            arg2[b * H + u] = F32(-2.0) * (gx[b, t, 2 * H + u] + acts[b, t, u] * rn)
            _exp_into(arg2, ex2, ibuf2)
            for b in range(B):
                for u in range(H):
                    nn_ = F32(2.0) / (F32(1.0) + ex2[b * H + u]) - F32(1.0)
                    acts[b, t, 2 * H + u] = nn_
                    st[0, b, u] = nn_ + acts[b, t, H + u] * (st[0, b, u] - nn_)
        else:  # SLSTM, gates i, f, z, o
            for b in range(B):
                for u in range(H):
                    pf = pre[b * GH + H + u]
                    arg[b * GH + u] = -abs(pf)  # exp(-|f~|) for the log-sigmoid
                    arg[b * GH + H + u] = F32(0.0)
                    arg[b * GH + 2 * H + u] = F32(-2.0) * pre[b * GH + 2 * H + u]
                    arg[b * GH + 3 * H + u] = -pre[b * GH + 3 * H + u]
            _exp_into(arg, ex, ibuf)
            for b in range(B):
                for u in range(H):
                    pf = pre[b * GH + H + u]
                    if flag == 1:
                        logf = pf
                        dlogf = F32(1.0)
                    else:
                        e = ex[b * GH + u]
                        logf = min(pf, F32(0.0)) - _log1p_unit(e)
                        dlogf = e / (F32(1.0) + e) if pf >= F32(0.0) else F32(1.0) / (F32(1.0) + e)
                    pi = pre[b * GH + u]
                    a = logf + st[3, b, u]
                    m = max(a, pi)
                    sel = F32(1.0) if a > pi else (F32(0.0) if a < pi else F32(0.5))
                    aux[2, b, t, u] = sel
                    aux[3, b, t, u] = dlogf
                    arg2[b * H + u] = pi - m
                    arg[b * GH + u] = a - m  # reuse: exponent of f'
                    st[3, b, u] = m
                    acts[b, t, 2 * H + u] = F32(2.0) / (F32(1.0) + ex[b * GH + 2 * H + u]) - F32(1.0)
                    acts[b, t, 3 * H + u] = F32(1.0) / (F32(1.0) + ex[b * GH + 3 * H + u])
            _exp_into(arg2, ex2, ibuf2)
            for b in range(B):
                for u in range(H):
                    arg2[b * H + u] = arg[b * GH + u]
            _exp_into(arg2, arg2, ibuf2)  # f' (in place)
            for b in range(B):
                for u in range(H):
                    ig = ex2[b * H + u]
                    fg = arg2[b * H + u]
                    c = fg * st[1, b, u] + ig * acts[b, t, 2 * H + u]
                    nn_ = fg * st[2, b, u] + ig
                    st[1, b, u] = c
                    st[2, b, u] = nn_
                    aux[0, b, t, u] = c
                    aux[1, b, t, u] = nn_
                    acts[b, t, u] = ig
                    acts[b, t, H + u] = fg
                    st[0, b, u] = acts[b, t, 3 * H + u] * c / nn_
        for b in range(B):
            for n in range(NH):
                for j in range(Kh):
                    h = st[0, b, n * Kh + j]
                    hloc[n, b, j] = h
                    hs[b, t, n * Kh + j] = h
    sT[:] = st


@njit(cache=True, fastmath=True)
def rnn_bwd(cell, flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, ds0):  # pragma: no cover - compiled
    """Backward through time over the whole sequence.

    W (NH, GK, Kh); hs (B, T, H), acts (B, T, GH), aux (NA, B, T, H), s0 (NS, B, H) from the forward;
    dhs (B, T, H), dsT (NS, B, H) incoming -> writes dgx (B, T, GH) (grad of the gx pre-activations),
    drec (B, T, GH) (grad of the recurrent term W h + b_hh; the same array as dgx except for the GRU),
    ds0 (NS, B, H)."""
    B, T, H = hs.shape
    NH, GK, Kh = W.shape
    G = GK // Kh
    GH = G * H
    ds = dsT.copy()  # running gradients of the state (h carry from the recurrence in ds[0])
    dloc = np.empty((NH, B, GK), np.float32)
    dhl = np.empty((NH, B, Kh), np.float32)
    for t in range(T - 1, -1, -1):
        for b in range(B):
            for u in range(H):
                dh = dhs[b, t, u] + ds[0, b, u]
                hp = hs[b, t - 1, u] if t > 0 else s0[0, b, u]
                if cell == ELMAN:
                    h = acts[b, t, u]
                    if flag == 1:
                        dp = dh if h > F32(0.0) else F32(0.0)
                    else:
                        dp = dh * (F32(1.0) - h * h)
                    dgx[b, t, u] = dp
                    ds[0, b, u] = F32(0.0)
                elif cell == LSTM:
                    i = acts[b, t, u]
                    f = acts[b, t, H + u]
                    g = acts[b, t, 2 * H + u]
                    o = acts[b, t, 3 * H + u]
                    tc = aux[1, b, t, u]
                    cp = aux[0, b, t - 1, u] if t > 0 else s0[1, b, u]
                    dc = ds[1, b, u] + dh * o * (F32(1.0) - tc * tc)
                    dgx[b, t, u] = dc * g * i * (F32(1.0) - i)
                    dgx[b, t, H + u] = dc * cp * f * (F32(1.0) - f)
                    dgx[b, t, 2 * H + u] = dc * i * (F32(1.0) - g * g)
                    dgx[b, t, 3 * H + u] = dh * tc * o * (F32(1.0) - o)
                    ds[1, b, u] = dc * f
                    ds[0, b, u] = F32(0.0)
                elif cell == GRU:
                    r = acts[b, t, u]
                    z = acts[b, t, H + u]
                    nn_ = acts[b, t, 2 * H + u]
                    rn = aux[0, b, t, u]
                    dpn = dh * (F32(1.0) - z) * (F32(1.0) - nn_ * nn_)
                    dpr = dpn * rn * r * (F32(1.0) - r)
                    dpz = dh * (hp - nn_) * z * (F32(1.0) - z)
                    dgx[b, t, u] = dpr
                    dgx[b, t, H + u] = dpz
                    dgx[b, t, 2 * H + u] = dpn
                    drec[b, t, u] = dpr
                    drec[b, t, H + u] = dpz
                    drec[b, t, 2 * H + u] = dpn * r
                    ds[0, b, u] = dh * z  # direct path h_{t-1} -> h_t
                else:  # SLSTM
                    ig = acts[b, t, u]
                    fg = acts[b, t, H + u]
                    tz = acts[b, t, 2 * H + u]
                    o = acts[b, t, 3 * H + u]
                    c = aux[0, b, t, u]
                    nn_ = aux[1, b, t, u]
                    sel = aux[2, b, t, u]
                    dlogf = aux[3, b, t, u]
                    cp = aux[0, b, t - 1, u] if t > 0 else s0[1, b, u]
                    np_ = aux[1, b, t - 1, u] if t > 0 else s0[2, b, u]
                    inv_n = F32(1.0) / nn_
                    dc = ds[1, b, u] + dh * o * inv_n
                    dn = ds[2, b, u] - dh * o * c * inv_n * inv_n
                    dfg = dc * cp + dn * np_
                    dig = dc * tz + dn
                    dm = ds[3, b, u] - dfg * fg - dig * ig  # m_t enters i' and f' with a minus sign
                    da = dfg * fg + sel * dm  # a = log f + m_{t-1}
                    dgx[b, t, u] = dig * ig + (F32(1.0) - sel) * dm
                    dgx[b, t, H + u] = da * dlogf
                    dgx[b, t, 2 * H + u] = dc * ig * (F32(1.0) - tz * tz)
                    dgx[b, t, 3 * H + u] = dh * c * inv_n * o * (F32(1.0) - o)
                    ds[1, b, u] = dc * fg
                    ds[2, b, u] = dn * fg
                    ds[3, b, u] = da
                    ds[0, b, u] = F32(0.0)
        # d h_{t-1} += drec_t @ W, head by head
        for b in range(B):
            for g in range(G):
                for n in range(NH):
                    o_ = g * H + n * Kh
                    for j in range(Kh):
                        dloc[n, b, g * Kh + j] = drec[b, t, o_ + j]
        for n in range(NH):
            _mm(dloc[n], W[n], dhl[n])
        for b in range(B):
            for n in range(NH):
                for j in range(Kh):
                    ds[0, b, n * Kh + j] += dhl[n, b, j]
    ds0[:] = ds
