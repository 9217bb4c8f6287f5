"""numba kernels of rnnlab.ops.rnn (CPU, float32): one call runs the forward over the whole sequence
for a range of batch rows, one call the backward through time. Cached on disk (``cache=True``).

    KERNELS[cell] = (fwd, bwd)
    fwd(flag, gx, WT, bias, s0, hs, acts, aux, sT, lo, hi)
    bwd(flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, dhm, ds0, lo, hi)

``flag``: elman 1 = relu, slstm 1 = exponential forget gate. Layout (see reference.py): gx (B, T, G*H)
gate-major; the recurrent weights per head WT (NH, Kh, G*Kh) (forward: h_n @ WT[n]) and W (NH, G*Kh, Kh)
(backward: drec_n @ W[n]); bias (G*H,) is b_hh; states s0, sT, ds0 (B, NS, H) (h first); rows [lo, hi);
dhm (NH, B, T, G*Kh) receives drec head-major when NH > 1 (for dW_hh's bmm), else it is empty.

One generic time loop per direction (``_fwd_rows`` / ``_bwd_rows``); the cell's step is chosen at
typing time from the literal cell number (``_step`` / ``_step_bwd`` overloads), so each cell compiles only
its own step, on first use, and is cached. First-call cost, measured (fresh NUMBA_CACHE_DIR, fwd + bwd,
2 busy cores): cold 8-13 s per cell, warm (cache loaded) < 1.3 s; 45 s for the lstm when the loop was one
``parallel=True`` function branching on the cell inside (parfors pass; all four steps typed for every cell;
array slice assignments, which compile numba's string formatting: hence ``_copy``). The entry points
release the GIL (``nogil``): kernel.py runs batch-row groups on Python threads, not numba's pool.

Speed (measured, see benchmarks/nonlinear.py): the recurrent matmul of every step goes to
``_simd.matmul_into`` (an explicit 16-lane sgemm micro-kernel; a plain numba triple loop, OpenBLAS
via numba's np.dot and torch.mm all measured 1.5-4x slower at these skinny shapes). Gate
non-linearities go through ``_exp_into``, a vectorisable float32 exp (Cephes polynomial, relative
error ~1e-7): numba has no vector libm here (no SVML). The per-step element-wise work runs row by
row on 1-D C-contiguous views in short loops over few arrays each: strided 2-D views or loops
touching many arrays (LLVM then gives up on the run-time alias checks) measured 2-3x slower.

Saved for the backward: h (B, T, H), acts (B, T, G*H) and aux (B, T, NA, H):
  elman: acts = h; aux empty           lstm: acts = (i, f, g, o); aux = (c, tanh c)
  gru:   acts = (r, z, n); aux = (W_hn h + b_hn,)
  slstm: acts = (i', f', tanh z, o); aux = (c, n, sel, dlogf) with sel = d m / d(log f + m_prev)
         (1, 0, or 1/2 at a tie, as torch.maximum) and dlogf = d log f / d f~.
aux starts with the non-h states (c; c, n), so aux[b, t-1] (or s0 at t = 0) gives the step's previous ones.
"""
from __future__ import annotations

import numpy as np
from numba import literally, njit, types
from numba.extending import overload

from rnnlab.ops.rnn._simd import matmul_into

F32 = np.float32
# error_model="numpy": no ZeroDivisionError branch in every division (it blocks vectorisation)
_OPTS = dict(cache=True, fastmath=True, error_model="numpy")


@njit(**_OPTS)
def _copy(src, dst):  # pragma: no cover - compiled
    """dst[:] = src for 1-D arrays (an array slice assignment compiles numba's string formatting: seconds)."""
    for i in range(dst.shape[0]):
        dst[i] = src[i]


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


# --- forward step of one batch row: step(flag, p, rb, x, st, at, ax, sf, si) ------------------------
# p (GH,) pre-activations gx_t + W h + b_hh; rb (GH,) W h + b_hh; x (GH,) gx_t; st (NS, H) the state rows,
# updated in place; at (GH,) = acts[b, t] and ax (NA, H) = aux[b, t], saved for the backward;
# sf (4, GH) float32 and si (2, GH) int32 scratch (for _exp_into).

def _elman_step(cell, flag, p, rb, x, st, at, ax, sf, si):  # pragma: no cover - compiled
    H = p.shape[0]
    if flag == 1:
        for u in range(H):
            at[u] = max(p[u], F32(0.0))
    else:
        a1, e1 = sf[0], sf[1]
        for u in range(H):
            a1[u] = F32(-2.0) * p[u]
        _exp_into(a1, e1, si[0])
        for u in range(H):
            at[u] = F32(2.0) / (F32(1.0) + e1[u]) - F32(1.0)
    _copy(at, st[0])


def _lstm_step(cell, flag, p, rb, x, st, at, ax, sf, si):  # pragma: no cover - compiled
    GH = p.shape[0]
    H = GH // 4
    h, c, tc = st[0], st[1], ax[1]
    a1, e1, a2, e2 = sf[0], sf[1], sf[2, :H], sf[3, :H]
    for q in range(GH):  # i, f, o: sigmoid(x) = 1 / (1 + exp(-x)); g: tanh(x) = 2 sigmoid(2x) - 1
        a1[q] = -p[q]
    for q in range(2 * H, 3 * H):
        a1[q] *= F32(2.0)
    _exp_into(a1, e1, si[0])
    for q in range(GH):
        at[q] = F32(1.0) / (F32(1.0) + e1[q])
    for q in range(2 * H, 3 * H):
        at[q] = F32(2.0) * at[q] - F32(1.0)
    for u in range(H):
        c[u] = at[H + u] * c[u] + at[u] * at[2 * H + u]
    _copy(c, ax[0])
    for u in range(H):
        a2[u] = F32(-2.0) * c[u]
    _exp_into(a2, e2, si[1, :H])
    for u in range(H):
        tc[u] = F32(2.0) / (F32(1.0) + e2[u]) - F32(1.0)
    for u in range(H):
        h[u] = at[3 * H + u] * tc[u]


def _gru_step(cell, flag, p, rb, x, st, at, ax, sf, si):  # pragma: no cover - compiled
    """p[:2H] = gx + rb for r and z; n = tanh(gx_n + r * (W_hn h + b_hn)) needs x and rb's n parts apart."""
    h, rn = st[0], ax[0]
    H = h.shape[0]
    a1, e1, a2, e2 = sf[0, : 2 * H], sf[1, : 2 * H], sf[2, :H], sf[3, :H]
    for q in range(2 * H):
        a1[q] = -p[q]
    _exp_into(a1, e1, si[0, : 2 * H])
    for q in range(2 * H):
        at[q] = F32(1.0) / (F32(1.0) + e1[q])
    for u in range(H):
        rn[u] = rb[2 * H + u]
    for u in range(H):
        a2[u] = F32(-2.0) * (x[2 * H + u] + at[u] * rn[u])
    _exp_into(a2, e2, si[1, :H])
    for u in range(H):
        at[2 * H + u] = F32(2.0) / (F32(1.0) + e2[u]) - F32(1.0)
    for u in range(H):
        h[u] = at[2 * H + u] + at[H + u] * (h[u] - at[2 * H + u])


def _slstm_step(cell, flag, p, rb, x, st, at, ax, sf, si):  # pragma: no cover - compiled
    GH = p.shape[0]
    H = GH // 4
    h, c, n, m = st[0], st[1], st[2], st[3]
    sel_out, dlogf_out = ax[2], ax[3]
    a1, e1, a2, e2, i2 = sf[0], sf[1], sf[2, :H], sf[3, :H], si[1, :H]
    for u in range(H):  # exponents: exp(-|f~|) (log-sigmoid), exp(-2 z~) (tanh), exp(-o~) (sigmoid)
        a1[u] = -abs(p[H + u])
    for u in range(H):
        a1[H + u] = F32(-2.0) * p[2 * H + u]
    for u in range(H):
        a1[2 * H + u] = -p[3 * H + u]
    _exp_into(a1[: 3 * H], e1[: 3 * H], si[0, : 3 * H])
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
    _copy(c, ax[0])
    _copy(n, ax[1])


@njit(**_OPTS)
def _fwd_rows(cell, flag, gx, WT, bias, s0, hs, acts, aux, sT, lo, hi):  # pragma: no cover - compiled
    """The whole forward for batch rows [lo, hi) of cell number ``cell`` (a compile-time constant)."""
    literally(cell)
    T, GH = gx.shape[1], gx.shape[2]
    NH, Kh, GK = WT.shape
    G, H, R, NS = GK // Kh, NH * Kh, hi - lo, s0.shape[1]
    st = np.empty((R, NS, H), F32)
    hloc = np.empty((NH, R, Kh), F32)  # h_{t-1} head by head: the matmul operand
    rec = np.empty((NH, R, GK), F32)
    rb, p = np.empty(GH, F32), np.empty(GH, F32)
    sf, si = np.empty((4, GH), F32), np.empty((2, GH), np.int32)
    for r in range(R):
        for k in range(NS):
            _copy(s0[lo + r, k], st[r, k])
        for n in range(NH):
            for j in range(Kh):
                hloc[n, r, j] = st[r, 0, n * Kh + j]
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
            _step(cell, flag, p, rb, x, st[r], acts[b, t], aux[b, t], sf, si)
            _copy(st[r, 0], hs[b, t])
            for n in range(NH):
                for j in range(Kh):
                    hloc[n, r, j] = st[r, 0, n * Kh + j]
    for r in range(R):
        for k in range(NS):
            _copy(st[r, k], sT[lo + r, k])


# --- backward step of one batch row: step_bwd(flag, dh, at, ax, hp, axp, dg, dr, ds, sc) ----------------
# dh (H,) = dL/dh_t (output + carried); at = acts[b, t], ax = aux[b, t]; hp (H,) h_{t-1} and axp (NA, H)
# whose first rows are the other previous states; dg (GH,) = dL/d gx_t (dgx[b, t]); dr (GH,) = drec[b, t]
# (only the GRU writes it: elsewhere it is dg); ds (NS, H) the carried state gradients, updated in place to
# dL/d state_{t-1} (ds[0] = dh's direct part only: the recurrent part drec @ W is added by the caller);
# sc (4, H) scratch.

def _elman_step_bwd(cell, flag, dh, at, ax, hp, axp, dg, dr, ds, sc):  # pragma: no cover - compiled
    H = dh.shape[0]
    if flag == 1:
        for u in range(H):
            dg[u] = dh[u] if at[u] > F32(0.0) else F32(0.0)
    else:
        for u in range(H):
            dg[u] = dh[u] * (F32(1.0) - at[u] * at[u])
    ds[0, :] = F32(0.0)


def _lstm_step_bwd(cell, flag, dh, at, ax, hp, axp, dg, dr, ds, sc):  # pragma: no cover - compiled
    H = dh.shape[0]
    tc, c_prev, dc, dcarry = ax[1], axp[0], sc[0], ds[1]
    for u in range(H):
        dc[u] = dcarry[u] + dh[u] * at[3 * H + u] * (F32(1.0) - tc[u] * tc[u])
    for u in range(H):
        dg[u] = dc[u] * at[2 * H + u] * at[u] * (F32(1.0) - at[u])
    for u in range(H):
        dg[H + u] = dc[u] * c_prev[u] * at[H + u] * (F32(1.0) - at[H + u])
    for u in range(H):
        dg[2 * H + u] = dc[u] * at[u] * (F32(1.0) - at[2 * H + u] * at[2 * H + u])
    for u in range(H):
        dg[3 * H + u] = dh[u] * tc[u] * at[3 * H + u] * (F32(1.0) - at[3 * H + u])
    for u in range(H):
        dcarry[u] = dc[u] * at[H + u]
    ds[0, :] = F32(0.0)


def _gru_step_bwd(cell, flag, dh, at, ax, hp, axp, dg, dr, ds, sc):  # pragma: no cover - compiled
    """dr (GH,) = dL/d(W h + b_hh): the n gate's part is r times the input side's."""
    H = dh.shape[0]
    rn, dhp = ax[0], ds[0]
    for u in range(H):
        dg[2 * H + u] = dh[u] * (F32(1.0) - at[H + u]) * (F32(1.0) - at[2 * H + u] * at[2 * H + u])
    for u in range(H):
        dr[2 * H + u] = dg[2 * H + u] * at[u]
    for u in range(H):
        dg[u] = dg[2 * H + u] * rn[u] * at[u] * (F32(1.0) - at[u])
    for u in range(H):
        dg[H + u] = dh[u] * (hp[u] - at[2 * H + u]) * at[H + u] * (F32(1.0) - at[H + u])
    for u in range(2 * H):
        dr[u] = dg[u]
    for u in range(H):
        dhp[u] = dh[u] * at[H + u]  # direct path h_{t-1} -> h_t


def _slstm_step_bwd(cell, flag, dh, at, ax, hp, axp, dg, dr, ds, sc):  # pragma: no cover - compiled
    H = dh.shape[0]
    c, n, sel, dlogf, c_prev, n_prev = ax[0], ax[1], ax[2], ax[3], axp[0], axp[1]
    ds1, ds2, ds3 = ds[1], ds[2], ds[3]
    dc, dn, t1 = sc[0], sc[1], sc[2]
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
    ds[0, :] = F32(0.0)


# The cell's step chosen at typing time from the literal cell number: only that step is typed and compiled
# (a branch on the cell inside the loop types all four; a step function passed as an argument makes
# numba embed its address, which disables the disk cache).
ELMAN, LSTM, GRU, SLSTM = 0, 1, 2, 3
_STEPS = (_elman_step, _lstm_step, _gru_step, _slstm_step)
_STEPS_BWD = (_elman_step_bwd, _lstm_step_bwd, _gru_step_bwd, _slstm_step_bwd)


def _step(cell, *args):  # pragma: no cover - typed by the overload below
    raise NotImplementedError


def _step_bwd(cell, *args):  # pragma: no cover - typed by the overload below
    raise NotImplementedError


@overload(_step, jit_options=_OPTS)
def _step_typed(cell, flag, p, rb, x, st, at, ax, sf, si):
    return _STEPS[cell.literal_value] if isinstance(cell, types.IntegerLiteral) else None


@overload(_step_bwd, jit_options=_OPTS)
def _step_bwd_typed(cell, flag, dh, at, ax, hp, axp, dg, dr, ds, sc):
    return _STEPS_BWD[cell.literal_value] if isinstance(cell, types.IntegerLiteral) else None


@njit(**_OPTS)
def _bwd_rows(cell, flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, dhm, ds0, lo, hi):  # pragma: no cover
    """The whole backward through time for batch rows [lo, hi) of cell number ``cell`` (compile-time constant)."""
    literally(cell)
    T, H = hs.shape[1], hs.shape[2]
    NH, GK, Kh = W.shape
    G, R, NS, NA = GK // Kh, hi - lo, s0.shape[1], aux.shape[2]
    ds = np.empty((R, NS, H), F32)  # d state_t, carried backwards
    dloc = np.empty((NH, R, GK), F32)
    dhl = np.empty((NH, R, Kh), F32)
    dh, sc = np.empty(H, F32), np.empty((4, H), F32)
    ax0 = np.zeros((NA, H), F32)  # aux-shaped previous states at t = 0, from s0
    for r in range(R):
        for k in range(NS):
            _copy(dsT[lo + r, k], ds[r, k])
    for t in range(T - 1, -1, -1):
        for r in range(R):
            b = lo + r
            for u in range(H):
                dh[u] = dhs[b, t, u] + ds[r, 0, u]
            if t > 0:
                hp, axp = hs[b, t - 1], aux[b, t - 1]
            else:
                for k in range(min(NS - 1, NA)):
                    _copy(s0[b, k + 1], ax0[k])
                hp, axp = s0[b, 0], ax0
            _step_bwd(cell, flag, dh, acts[b, t], aux[b, t], hp, axp, dgx[b, t], drec[b, t], ds[r], sc)
            d = drec[b, t]
            for g in range(G):  # gate-major -> head-major
                for n in range(NH):
                    o = g * H + n * Kh
                    for j in range(Kh):
                        dloc[n, r, g * Kh + j] = d[o + j]
            if dhm.shape[0] > 0:  # head-major copy for dW_hh (a torch permute of drec measured 2-6x the bmm)
                for n in range(NH):
                    _copy(dloc[n, r], dhm[n, b, t])
        for n in range(NH):  # d h_{t-1} += drec_t @ W, head by head
            matmul_into(dloc[n], W[n], dhl[n])
        for r in range(R):
            for n in range(NH):
                for j in range(Kh):
                    ds[r, 0, n * Kh + j] += dhl[n, r, j]
    for r in range(R):
        for k in range(NS):
            _copy(ds[r, k], ds0[lo + r, k])


# Entry points, one per cell and direction (the cell reaches the loop as a compile-time constant; a
# literal argument from Python re-types on every call). nogil: kernel.py runs row groups on threads.
_ENTRY = dict(_OPTS, nogil=True)


@njit(**_ENTRY)
def elman_fwd(flag, gx, WT, bias, s0, hs, acts, aux, sT, lo, hi):  # pragma: no cover - compiled
    _fwd_rows(ELMAN, flag, gx, WT, bias, s0, hs, acts, aux, sT, lo, hi)


@njit(**_ENTRY)
def lstm_fwd(flag, gx, WT, bias, s0, hs, acts, aux, sT, lo, hi):  # pragma: no cover - compiled
    _fwd_rows(LSTM, flag, gx, WT, bias, s0, hs, acts, aux, sT, lo, hi)


@njit(**_ENTRY)
def gru_fwd(flag, gx, WT, bias, s0, hs, acts, aux, sT, lo, hi):  # pragma: no cover - compiled
    _fwd_rows(GRU, flag, gx, WT, bias, s0, hs, acts, aux, sT, lo, hi)


@njit(**_ENTRY)
def slstm_fwd(flag, gx, WT, bias, s0, hs, acts, aux, sT, lo, hi):  # pragma: no cover - compiled
    _fwd_rows(SLSTM, flag, gx, WT, bias, s0, hs, acts, aux, sT, lo, hi)


@njit(**_ENTRY)
def elman_bwd(flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, dhm, ds0, lo, hi):  # pragma: no cover - compiled
    _bwd_rows(ELMAN, flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, dhm, ds0, lo, hi)


@njit(**_ENTRY)
def lstm_bwd(flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, dhm, ds0, lo, hi):  # pragma: no cover - compiled
    _bwd_rows(LSTM, flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, dhm, ds0, lo, hi)


@njit(**_ENTRY)
def gru_bwd(flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, dhm, ds0, lo, hi):  # pragma: no cover - compiled
    _bwd_rows(GRU, flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, dhm, ds0, lo, hi)


@njit(**_ENTRY)
def slstm_bwd(flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, dhm, ds0, lo, hi):  # pragma: no cover - compiled
    _bwd_rows(SLSTM, flag, W, hs, acts, aux, s0, dhs, dsT, dgx, drec, dhm, ds0, lo, hi)


KERNELS = {"elman": (elman_fwd, elman_bwd), "lstm": (lstm_fwd, lstm_bwd), "gru": (gru_fwd, gru_bwd),
           "slstm": (slstm_fwd, slstm_bwd)}
