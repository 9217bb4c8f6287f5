"""numba kernels of rnnlab.ops.decode: one decode token of a layer, from its input projection's output to its output
projection's input, in one compiled call (CPU, float32/float64).

A layer's step in PyTorch is 40-80 small ATen calls at ~2-8 µs each (views, a conv over a 4-wide window, norms,
gates, a rank-one update), against 60-100 µs of real work in its two projections: the calls, not the arithmetic,
cost the time (issue 20; docs/benchmarks.md). Each kernel here does that middle in one pass over the row, in
the same order of operations as the layer's torch step (which stays the reference: tests/ops/test_decode.py).

Every array is an argument (outputs allocated by the caller); each kernel runs batch rows [lo, hi) without the GIL
(``_threads.run_rows``). Arithmetic is in the arrays' dtype (float32, or float64 for a float64 module): a scalar that
multiplies a state's entries in a loop (a decay, a gate, a scale; computed in float64 by ``math``) is cast to the state's
dtype first (``S.dtype.type``), as torch's float32 tensors are, since a float64 factor widens every product to double
at half the vector width (the mLSTM head's loop ran 1.7x slower so; docs/benchmarks.md).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from rnnlab.ops._exp_numba import exp_row_f32
from rnnlab.ops._noalias import NoAliasCompiler

_FM = {"reassoc", "contract"}  # vectorizable reductions; no NaN/inf assumptions
_KERNEL = dict(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
_INLINE = dict(cache=True, inline="always", fastmath=_FM, error_model="numpy")


@njit(**_INLINE)
def _silu(x):  # pragma: no cover - compiled
    return x / (1.0 + math.exp(-x))


@njit(**_INLINE)
def _sigmoid(x):  # pragma: no cover - compiled
    return 1.0 / (1.0 + math.exp(-x))


@njit(**_INLINE)
def _logsigmoid(x):  # pragma: no cover - compiled
    """log σ(x) without overflow (torch's logsigmoid)."""
    return min(x, 0.0) - math.log1p(math.exp(-abs(x)))


@njit(**_INLINE)
def _gelu_tanh(x):  # pragma: no cover - compiled
    return 0.5 * x * (1.0 + math.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


@njit(**_INLINE)
def _softplus(x):  # pragma: no cover - compiled
    """torch's softplus (beta 1, threshold 20)."""
    return x if x > 20.0 else math.log1p(math.exp(x))


@njit(**_INLINE)
def _conv(x, state, w, bias, has_bias, silu, y, new_state):  # pragma: no cover - compiled
    """One token of the depthwise causal conv, with SiLU when ``silu`` (rnnlab.ops.conv): x (C,) the new input, state
    (W-1, C) the last W-1 inputs (older first), w (C, W), bias (C,) -> y (C,), new_state (W-1, C) = [state[1:], x]."""
    W, C = w.shape[1], w.shape[0]
    for c in range(C):
        acc = bias[c] if has_bias else 0.0
        for j in range(W - 1):
            acc += state[j, c] * w[c, j]
        acc += x[c] * w[c, W - 1]
        y[c] = _silu(acc) if silu else acc
    for j in range(W - 2):
        for c in range(C):
            new_state[j, c] = state[j + 1, c]
    if W > 1:
        for c in range(C):
            new_state[W - 2, c] = x[c]


@njit(**_INLINE)
def _l2norm(x, lo, n, eps):  # pragma: no cover - compiled
    """x[lo:lo+n] /= sqrt(‖x[lo:lo+n]‖² + eps) (rnnlab.ops.delta.l2norm)."""
    s = 0.0
    for i in range(lo, lo + n):
        s += x[i] * x[i]
    r = 1.0 / math.sqrt(s + eps)
    for i in range(lo, lo + n):
        x[i] = x[i] * r


@njit(**_INLINE)
def _conv_qkv_l2(x, cq, ck, cv, wq, wk, wv, q, k, v, cq2, ck2, cv2, K):  # pragma: no cover - compiled
    """A row's q, k, v = SiLU(conv) of [q | k | v] in x (widths those of the rows q, k, v; states cq, ck, cv -> cq2, ck2,
    cv2), q and k ℓ2-normalized in heads of K (the delta rule's and the conv-fed memories' front)."""
    nq, nk, nv = q.shape[0], k.shape[0], v.shape[0]
    _conv(x[0:nq], cq, wq, wq[:, 0], False, True, q, cq2)
    _conv(x[nq:nq + nk], ck, wk, wk[:, 0], False, True, k, ck2)
    _conv(x[nq + nk:nq + nk + nv], cv, wv, wv[:, 0], False, True, v, cv2)
    for h in range(nq // K):
        _l2norm(q, h * K, K, 1e-6)
    for h in range(nk // K):
        _l2norm(k, h * K, K, 1e-6)


@njit(**_INLINE)
def _rotate_pair(q, k, p, inv_freq):  # pragma: no cover - compiled
    """q, k (K,) rotated in place at the integer position p: pairs (i, i + K/2) by the angle p · inv_freq[i] computed in
    float32 (``parts.rotary_cos_sin``): [x1 c − x2 s, x1 s + x2 c]."""
    half = q.shape[0] // 2
    pf = np.float32(p)
    for i in range(half):
        ang = pf * inv_freq[i]
        c, s = math.cos(ang), math.sin(ang)
        a1, a2 = q[i], q[half + i]
        q[i], q[half + i] = a1 * c - a2 * s, a1 * s + a2 * c
        a1, a2 = k[i], k[half + i]
        k[i], k[half + i] = a1 * c - a2 * s, a1 * s + a2 * c


@njit(**_INLINE)
def _rms_gate(o, w, eps, gate, act, out):  # pragma: no cover - compiled
    """out = o / sqrt(mean(o²) + eps) · w · act(gate): RMSNorm (act 0: no gate) / GatedRMSNorm over one head, act 1
    SiLU, 2 σ."""
    n = o.shape[0]
    s = 0.0
    for j in range(n):
        s += o[j] * o[j]
    r = 1.0 / math.sqrt(s / n + eps)
    for j in range(n):
        v = o[j] * r * w[j]
        out[j] = v if act == 0 else v * (_silu(gate[j]) if act == 1 else _sigmoid(gate[j]))


@njit(**_KERNEL)
def delta_decode(proj, cq, ck, cv, S, wq, wk, wv, negA, dt_bias, norm_w, out, cq2, ck2, cv2, S2, qc, kc, vc, o,
                 H, nh, eps, beta_scale, forget, gated, lo, hi):  # pragma: no cover - compiled
    """The delta-rule layers' token (rnnlab.layers.deltanet ``_DeltaRuleMixer``), per row b:
    proj (B, P) = [q (H·K) | k (n_h·H·K) | v (n_h·HV·V) | b (n_h·HV) | a (HV) if forget | g (HV·V) if gated];
    q, k, v = SiLU(conv) with states cq, ck, cv (B, W-1, ·) and weights wq, wk, wv (·, W); q, k L2-normalized per
    head; β = beta_scale·σ(b); α = exp(negA · softplus(a + dt_bias)); per value head h (key head h // (HV/H)):
    S ← αS, then n_h times u = β(v − Sᵀk), S ← S + k uᵀ; o = Sᵀ(scale·q); out = (Gated)RMSNorm(o) (B, HV·V).
    New states cq2, ck2, cv2, S2; scratch rows qc, kc, vc, o (B, ·); scale = 1/√K."""
    HV, K, V = S.shape[1], S.shape[2], S.shape[3]
    f32 = S.dtype.type  # the state's dtype for every product (float64 scalars would widen each one)
    scale = f32(1.0 / math.sqrt(K))
    QK, KK, VV = H * K, nh * H * K, nh * HV * V
    ob = QK + KK + VV
    oa = ob + nh * HV
    og = oa + (HV if forget else 0)
    G = HV // H
    for b in range(lo, hi):
        x, q, k, v, ob_ = proj[b], qc[b], kc[b], vc[b], o[b]
        _conv_qkv_l2(x, cq[b], ck[b], cv[b], wq, wk, wv, q, k, v, cq2[b], ck2[b], cv2[b], K)
        for h in range(HV):
            Sb, Sn = S[b, h], S2[b, h]
            alpha = f32(math.exp(negA[h] * _softplus(x[oa + h] + dt_bias[h]))) if forget else f32(1.0)
            for i in range(K):
                for j in range(V):
                    Sn[i, j] = alpha * Sb[i, j]
            for n in range(nh):
                kh = (n * H + h // G) * K
                vh = (n * HV + h) * V
                beta = f32(beta_scale * _sigmoid(x[ob + n * HV + h]))
                _matvec_t(Sn, k[kh:kh + K], ob_, False, ob_)  # Sᵀk
                for j in range(V):
                    ob_[j] = beta * (v[vh + j] - ob_[j])
                for i in range(K):
                    ki = k[kh + i]
                    for j in range(V):
                        Sn[i, j] += ki * ob_[j]
            for j in range(V):
                ob_[j] = 0.0
            qh = (h // G) * K
            for i in range(K):
                qi = scale * q[qh + i]
                for j in range(V):
                    ob_[j] += qi * Sn[i, j]
            _rms_gate(ob_[:V], norm_w, eps, x[og + h * V:og + (h + 1) * V], 1 if gated else 0, out[b, h * V:(h + 1) * V])


@njit(**_KERNEL)
def ssd_decode(proj, conv, h, conv_w, conv_b, dt_bias, neg_A, D, norm_w, out, conv2, h2, xbc, has_bias, G, eps,
               lo, hi):  # pragma: no cover - compiled
    """Mamba-2's token (rnnlab.layers.mamba2), per row b: proj (B, ·) = [z (H·P) | xBC (H·P + 2·G·N) | dt (H) | ...];
    xBC = SiLU(conv) with state conv (B, W-1, ·), weights conv_w, conv_b; x, B, C = xBC's parts; per head i (group
    i // (H/G)): Δ = softplus(dt + dt_bias), h ← exp(neg_A·Δ) h + B (Δx)ᵀ, y = hᵀC + D x; out = RMSNorm over each
    group's channels of y ⊙ SiLU(z), times norm_w. New states conv2, h2; scratch xbc (B, H·P + 2·G·N)."""
    H, N, P = h.shape[1], h.shape[2], h.shape[3]
    f32 = h.dtype.type  # the state's dtype for every product (float64 scalars would widen each one)
    E = H * P
    Cc = E + 2 * G * N
    R = H // G
    for b in range(lo, hi):
        x, u, y = proj[b], xbc[b], out[b]
        _conv(x[E:E + Cc], conv[b], conv_w, conv_b, has_bias, True, u, conv2[b])
        for i in range(H):
            delta = _softplus(x[E + Cc + i] + dt_bias[i])
            decay, delta = f32(math.exp(neg_A[i] * delta)), f32(delta)
            bo = E + (i // R) * N
            co = E + G * N + (i // R) * N
            yi = y[i * P:(i + 1) * P]
            for p in range(P):
                yi[p] = 0.0
            for n in range(N):
                bn, cn = u[bo + n], u[co + n]
                hs, hd = h[b, i, n], h2[b, i, n]
                for p in range(P):
                    v = decay * hs[p] + bn * (u[i * P + p] * delta)
                    hd[p] = v
                    yi[p] += cn * v
            for p in range(P):
                yi[p] = (yi[p] + D[i] * u[i * P + p]) * _silu(x[i * P + p])
        _group_rms(y, norm_w, G, eps)


@njit(**_INLINE)
def _rms_row(x, w, eps, y):  # pragma: no cover - compiled
    """y = x / √(mean(x²) + eps) ⊙ w over one row (nn.RMSNorm); y may be x."""
    s = x.dtype.type(0)
    for j in range(x.shape[0]):
        s += x[j] * x[j]
    r = 1.0 / math.sqrt(s / x.shape[0] + eps)
    for j in range(x.shape[0]):
        y[j] = x[j] * r * w[j]


@njit(**_KERNEL)
def implicit_ssd_decode(u, conv, h, nz_w, W_in, b_in, conv_w, conv_b, dt_bias, neg_A, D, norm_w, W_out, b_out, nf_w, out, conv2, h2,
                        z, zn, proj, xbc, y, o, has_in_bias, has_conv_bias, has_out_bias, G, eps, eps_z, eps_f, tol, max_iter, lo,
                        hi):  # pragma: no cover - compiled
    """Implicit Mamba-2's token (rnnlab.layers.implicit_mamba2, the step form's fixed-point iteration), per row b: with
    the SSM's state (conv, h) held, f(z) = RMSNorm_f(z + W_out ssd(W_in RMSNorm_z(z) + b_in + u)) (``ssd_decode``: the
    conv, the SSD update and read-out, the gated norm); z = 0, then z ← f(z) while ‖f(z) − z‖ > tol·‖f(z)‖ (a non-finite
    ratio stops too), at most max_iter applications. out[b, :Dm] = f(z*), out[b, Dm] = the applications; the new state
    (conv2, h2) is the last application's, f(z*)'s. Scratch rows z, zn, o (Dm), proj (W_in's outputs), xbc, y (E)."""
    Dm = nz_w.shape[0]
    for b in range(lo, hi):
        zb, fz = z[b], out[b, :Dm]
        zb[:] = 0.0
        n = 0
        while True:
            _rms_row(zb, nz_w, eps_z, zn[b])
            linear_rows(zn[b:b + 1], W_in, b_in, has_in_bias, proj[b:b + 1], 0, W_in.shape[0])
            for j in range(u.shape[1]):
                proj[b, j] += u[b, j]
            ssd_decode(proj, conv, h, conv_w, conv_b, dt_bias, neg_A, D, norm_w, y, conv2, h2, xbc, has_conv_bias, G, eps, b, b + 1)
            linear_rows(y[b:b + 1], W_out, b_out, has_out_bias, o[b:b + 1], 0, Dm)
            for j in range(Dm):
                o[b, j] += zb[j]
            _rms_row(o[b], nf_w, eps_f, fz)
            n += 1
            if n >= max_iter:
                break
            num, den = 0.0, 0.0
            for j in range(Dm):
                num += (fz[j] - zb[j]) * (fz[j] - zb[j])
                den += fz[j] * fz[j]
            if not math.sqrt(num) / max(math.sqrt(den), 1e-12) > tol:
                break
            zb[:] = fz
        out[b, Dm] = n


@njit(**_INLINE)
def _headwise(x, w, r0, y):  # pragma: no cover - compiled
    """y[j·R + o] = Σ_d w[j, r0 + o, d] x[j·d_in + d], o < R = y.size / nb: rows r0.. of each block (mLSTM's
    HeadwiseLinear)."""
    nb, d_in = w.shape[0], w.shape[2]
    R = y.shape[0] // nb
    for j in range(nb):
        for o in range(R):
            s = 0.0
            for d in range(d_in):
                s += w[j, r0 + o, d] * x[j * d_in + d]
            y[j * R + o] = s


@njit(**_INLINE)
def _mlstm_head(q, k, v, it, ft, m, C, n, C2, n2, sigmoid_forget, eps, norm_w, norm_eps, o):  # pragma: no cover - compiled
    """One head of the stabilized mLSTM cell (rnnlab.ops.mlstm.mlstm_step) and its norm (a LayerNorm without bias,
    weight norm_w (V,): the layer's GroupNorm over heads): q, k (K,), v (V,), gate pre-activations it, ft, the old
    state m, C (K, V), n (K,) -> o (V,) the normed h, new C2, n2;
    returns m' = max(log f + m, ĩ). C ← f'C + i'(k/√K) vᵀ, n ← f'n + i' k/√K, h = Cᵀq / (max(|nᵀq|, e^−m') + eps).
    C2, n2 may be C, n (the prompt kernel updates in place)."""
    K, V = C.shape[0], C.shape[1]
    f32 = C.dtype.type  # the state's dtype for every product: float64 scalars would widen each one (half the vector width)
    logf = _logsigmoid(ft) if sigmoid_forget else ft
    lfm = logf + m
    m_new = max(lfm, it)
    f_s, i_s, scale = f32(math.exp(lfm - m_new)), f32(math.exp(it - m_new)), f32(1.0 / math.sqrt(K))
    for j in range(V):
        o[j] = 0.0
    qn = f32(0.0)
    for a in range(K):
        ka, qa = k[a] * scale, q[a]
        nv = f_s * n[a] + ka * i_s
        n2[a] = nv
        qn += qa * nv
        kai = ka * i_s
        for j in range(V):
            cv = f_s * C[a, j] + kai * v[j]
            C2[a, j] = cv
            o[j] += qa * cv
    den = f32(max(abs(qn), math.exp(-m_new)) + eps)
    for j in range(V):
        o[j] = o[j] / den
    _ln_head(o, norm_w, norm_w, False, norm_eps, o)
    return m_new


@njit(**_INLINE)
def _cap(x, cap):  # pragma: no cover - compiled
    return cap * math.tanh(x / cap) if cap > 0.0 else x


@njit(**_KERNEL)
def mlstm_decode(up, conv, C, n, m, conv_w, conv_b, qk_w, v_w, gate_w, gate_b, norm_w, skip, out, conv2, C2, n2, m2,
                 cb, qb, kb, vb, gb, ob, cap, sigmoid_forget, eps, norm_eps, lo, hi):  # pragma: no cover - compiled
    """The mLSTM block's token (rnnlab.layers.mlstm, layout "block"), per row b: up (B, 2E) = [x_m | z]; c = SiLU(conv
    x_m); q, k = the headwise projections of c, v of x_m; [ĩ | f̃] = gate_w [q; k; v] + gate_b (soft-capped when cap > 0);
    per head (K = V = E / H) the cell and its norm with weight norm_w (``_mlstm_head``), then out = (skip ⊙ c + h) ⊙ SiLU(z).
    New states conv2, C2, n2, m2; scratch rows cb, qb, kb, vb (B, E), gb (B, 2H), ob (B, V)."""
    H, K = C.shape[1], C.shape[2]
    E = H * K
    for b in range(lo, hi):
        xm, z, c, q, k, v, g, o, y = up[b, :E], up[b, E:], cb[b], qb[b], kb[b], vb[b], gb[b], ob[b], out[b]
        _conv(xm, conv[b], conv_w, conv_b, True, True, c, conv2[b])
        bs = qk_w.shape[2]
        _headwise(c, qk_w, 0, q)
        _headwise(c, qk_w, bs, k)
        _headwise(xm, v_w, 0, v)
        for r in range(2 * H):
            s = gate_b[r]
            for e in range(E):
                s += gate_w[r, e] * q[e] + gate_w[r, E + e] * k[e] + gate_w[r, 2 * E + e] * v[e]
            g[r] = _cap(s, cap)
        for h in range(H):
            sl = slice(h * K, (h + 1) * K)
            m2[b, h] = _mlstm_head(q[sl], k[sl], v[sl], g[h], g[H + h], m[b, h], C[b, h], n[b, h], C2[b, h], n2[b, h],
                                   sigmoid_forget, eps, norm_w[sl], norm_eps, o)
            for j in range(K):
                e = h * K + j
                y[e] = (skip[e] * c[e] + o[j]) * _silu(z[e])


@njit(**_KERNEL)
def mlstm_dense_decode(proj, C, n, m, norm_w, out, C2, n2, m2, ob, cap, sigmoid_forget, eps, norm_eps, lo, hi):  # pragma: no cover - compiled
    """The dense mLSTM layer's token (rnnlab.layers.mlstm, layout "dense", xLSTM 7B's), per row b: proj (B, ·) =
    [q (H·K) | k (H·K) | v (E) | o (E) | ĩ (H) | f̃ (H)] (the input projection and the gates side by side; the gates
    soft-capped when cap > 0); per head the cell and its norm with weight norm_w (``_mlstm_head``), then out = h ⊙ σ(o).
    New states C2, n2, m2; scratch ob (B, V)."""
    H, K, V = C.shape[1], C.shape[2], C.shape[3]
    QK, E = H * K, H * V
    for b in range(lo, hi):
        x, o, y = proj[b], ob[b], out[b]
        gi = 2 * QK + 2 * E
        for h in range(H):
            m2[b, h] = _mlstm_head(x[h * K:(h + 1) * K], x[QK + h * K:QK + (h + 1) * K], x[2 * QK + h * V:2 * QK + (h + 1) * V],
                                   _cap(x[gi + h], cap), _cap(x[gi + H + h], cap), m[b, h], C[b, h], n[b, h], C2[b, h],
                                   n2[b, h], sigmoid_forget, eps, norm_w[h * V:(h + 1) * V], norm_eps, o)
            for j in range(V):
                y[h * V + j] = o[j] * _sigmoid(x[2 * QK + E + h * V + j])


@njit(**_INLINE)
def _exp_row(s, n, fast):  # pragma: no cover - compiled
    """s[:n] = exp(s[:n]) for arguments <= 0: float32 rows (``fast``) by ``_exp_numba.exp_row_f32`` (floored at -87),
    float64 rows by math.exp."""
    if fast:
        exp_row_f32(s, np.empty(n, np.int32), n, -87.0)
    else:
        for i in range(n):
            s[i] = math.exp(s[i])


@njit(pipeline_class=NoAliasCompiler, **_KERNEL)
def mlstm_prefill(q, k, v, o, g, C, n, m, norm_w, out, C2, n2, m2, ob, q0, k0, v0, o0, g0, gate_out, cap, sigmoid_forget, eps,
                  norm_eps, fast, lo, hi):  # pragma: no cover - compiled
    """A prompt of the mLSTM cell with its norm (rnnlab.layers.mlstm's prefill without autograd), units u = b·H + h in
    [lo, hi): per token t, head h reads q[b, t, q0 + h·K ...], k[.., k0 + h·K ...], v[.., v0 + h·V ...] and the gate
    pre-activations g[b, t, g0 + h] (ĩ), g[b, t, g0 + H + h] (f̃) (soft-capped when cap > 0), runs ``_mlstm_head`` on
    its state in place and writes out[b, t, h·V ...] = the normed h (⊙ σ(o[b, t, o0 + h·V ...]) when gate_out: the
    dense layout's output gate, its exps at the vector width when ``fast``, float32). q, k, v, o, g may be one array
    (the dense layout's projection) at different offsets. The state starts at C, n, m and ends in C2, n2, m2; scratch
    ob (B·H, 3V)."""
    H, K, V = C.shape[1], C.shape[2], C.shape[3]
    T = out.shape[1]
    for u in range(lo, hi):
        b, h = u // H, u % H
        Cu, nu, ou, e = C2[b, h], n2[b, h], ob[u, :V], ob[u, V:2 * V]
        Cu[:, :] = C[b, h]
        nu[:] = n[b, h]
        mu = m[b, h]
        for t in range(T):
            mu = _mlstm_head(q[b, t, q0 + h * K:q0 + (h + 1) * K], k[b, t, k0 + h * K:k0 + (h + 1) * K],
                             v[b, t, v0 + h * V:v0 + (h + 1) * V], _cap(g[b, t, g0 + h], cap), _cap(g[b, t, g0 + H + h], cap), mu,
                             Cu, nu, Cu, nu, sigmoid_forget, eps, norm_w[h * V:(h + 1) * V], norm_eps, ou)
            y = out[b, t, h * V:(h + 1) * V]
            if not gate_out:
                y[:] = ou
                continue
            for j in range(V):  # σ(x) = 1 / (1 + e^−x)
                e[j] = -o[b, t, o0 + h * V + j]
            if fast:
                exp_row_f32(e, ob[u, 2 * V:].view(np.int32), V, -87.0)
            else:
                for j in range(V):
                    e[j] = math.exp(e[j])
            for j in range(V):
                y[j] = ou[j] / (1.0 + e[j])
        m2[b, h] = mu


@njit(**_INLINE)
def _rms_rotate(x, w, normed, eps, rotate, C, S, rd):  # pragma: no cover - compiled
    """In place on one head x (d,): RMSNorm with weight w when ``normed``, then the rotation of its first rd entries by
    a row (C, S) of ``parts.rotary_rows`` (pairs i, i + rd/2: x·C + roll(x)·S, as ``parts.rotary_at``)."""
    if normed:
        _rms_gate(x, w, eps, x, 0, x)
    if rotate:
        half = rd // 2
        for i in range(half):
            a, b = x[i], x[i + half]
            x[i] = a * C[i] + b * S[i]
            x[i + half] = b * C[i + half] + a * S[i + half]


@njit(**_KERNEL)
def attention_decode(qkv, rows, idx, first, kbuf, vbuf, pk, pv, q_w, k_w, kstart, vstart, L, out, sc, qr, kr, H, rotate, normed,
                     eps, gated, fast, lo, hi):  # pragma: no cover - compiled
    """Softmax attention's token (rnnlab.layers.attention ``step``) for units u = b·H + h in [lo, hi): qkv (B, P) =
    [q (H·d) | k (H_kv·d) | v (H_kv·d) | gate (H·d) if gated]; q and k RMS-normed per head with weights q_w, k_w when
    ``normed`` (eps), then their first rd entries rotated by row idx[b] − first of rows (n, 2, rd) = (C, S) of
    ``parts.rotary_rows`` when ``rotate``; head h reads kv head h // (H / H_kv) of the persistent tokens' keys and
    values pk, pv (H_kv, N_p, d) (N_p may be 0), then kbuf, vbuf (B, H_kv, cap, d) at [kstart, kstart + L), [vstart,
    vstart + L) and the new token; out (B, H·d) = softmax(q kᵀ/√d) v (· σ(gate)). The first query head of each kv head
    writes the new k, v at slots kstart + L, vstart + L (no unit reads them). fast: float32 rows (the vectorized exp).
    Scratch: sc (B·H, N_p + L + 1), qr, kr (B·H, d)."""
    hkv, d, NP = kbuf.shape[1], kbuf.shape[3], pk.shape[1]
    G = H // hkv
    rd = rows.shape[2]
    scale = 1.0 / math.sqrt(d)
    n = NP + L + 1
    for u in range(lo, hi):
        b, h = u // H, u % H
        j = h // G
        x, q, k, s = qkv[b], qr[u], kr[u], sc[u]
        qo, ko, vo = h * d, (H + j) * d, (H + hkv + j) * d
        for i in range(d):
            q[i] = x[qo + i]
            k[i] = x[ko + i]
        C, S = rows[idx[b] - first, 0], rows[idx[b] - first, 1]
        _rms_rotate(q, q_w, normed, eps, rotate, C, S, rd)
        _rms_rotate(k, k_w, normed, eps, rotate, C, S, rd)
        Kb, Vb, Kp, Vp = kbuf[b, j], vbuf[b, j], pk[j], pv[j]
        zero = q.dtype.type(0)  # accumulate in the rows' dtype (float32 vectorizes twice as wide as float64)
        for t in range(NP):
            a = zero
            for i in range(d):
                a += q[i] * Kp[t, i]
            s[t] = a * scale
        for t in range(L):
            a = zero
            for i in range(d):
                a += q[i] * Kb[kstart + t, i]
            s[NP + t] = a * scale
        a = zero
        for i in range(d):
            a += q[i] * k[i]
        s[n - 1] = a * scale
        top = s[0]
        for t in range(1, n):
            top = max(top, s[t])
        for t in range(n):
            s[t] -= top
        _exp_row(s, n, fast)
        o = out[b, h * d:(h + 1) * d]
        z = zero
        for t in range(n):
            z += s[t]
        for i in range(d):
            o[i] = s[n - 1] * x[vo + i]
        for t in range(NP):
            p = s[t]
            for i in range(d):
                o[i] += p * Vp[t, i]
        for t in range(L):
            p = s[NP + t]
            for i in range(d):
                o[i] += p * Vb[vstart + t, i]
        for i in range(d):
            o[i] = o[i] / z
            if gated:
                o[i] = o[i] * _sigmoid(x[(H + 2 * hkv + h) * d + i])
        if h % G == 0:
            for i in range(d):
                Kb[kstart + L, i] = k[i]
                Vb[vstart + L, i] = x[vo + i]


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def attention_decode_parallel(qkv, rows, idx, first, kbuf, vbuf, pk, pv, q_w, k_w, kstart, vstart, L, out, sc, qr, kr, H, rotate,
                              normed, eps, gated, fast):  # pragma: no cover - compiled
    """``attention_decode`` with its units spread over numba's threads (the OpenMP pool torch uses: a fork costs a few µs,
    where a Python thread hand-off costs ~25; measured at 4 heads × 64, L = 512: 18.5 µs against 28 on one thread)."""
    for u in prange(qkv.shape[0] * H):
        attention_decode(qkv, rows, idx, first, kbuf, vbuf, pk, pv, q_w, k_w, kstart, vstart, L, out, sc, qr, kr, H, rotate, normed,
                         eps, gated, fast, u, u + 1)


@njit(**_KERNEL)
def attention_token(xin, Wp, bp, has_bp, Wo, bo, has_bo, y, qkv, rows, idx, first, kbuf, vbuf, pk, pv, q_w, k_w, kstart, vstart, L,
                    o, sc, qr, kr, H, rotate, normed, eps, gated, fast):  # pragma: no cover - compiled
    """Attention's whole token: qkv = xin Wpᵀ (+ bp) (``linear_rows``), ``attention_decode`` over every unit into o,
    y = o Woᵀ (+ bo); xin (B, D), y (B, D_out), qkv and o scratch rows (B, P), (B, H·d)."""
    linear_rows(xin, Wp, bp, has_bp, qkv, 0, Wp.shape[0])
    attention_decode(qkv, rows, idx, first, kbuf, vbuf, pk, pv, q_w, k_w, kstart, vstart, L, o, sc, qr, kr, H, rotate, normed, eps,
                     gated, fast, 0, qkv.shape[0] * H)
    linear_rows(o, Wo, bo, has_bo, y, 0, Wo.shape[0])


@njit(cache=True, parallel={"fusion": False}, nogil=True, fastmath=_FM, error_model="numpy")
def attention_token_parallel(xin, Wp, bp, has_bp, Wo, bo, has_bo, y, qkv, rows, idx, first, kbuf, vbuf, pk, pv, q_w, k_w, kstart,
                             vstart, L, o, sc, qr, kr, H, rotate, normed, eps, gated, fast, parts):  # pragma: no cover - compiled
    """``attention_token`` in one fork of numba's threads per phase: the projections' outputs cut into ``parts`` blocks
    (multiples of four), the attention's (row, head) units one each; no Python between the phases."""
    for p in prange(parts):
        lo, hi = _block(p, parts, Wp.shape[0])
        linear_rows(xin, Wp, bp, has_bp, qkv, lo, hi)
    for u in prange(qkv.shape[0] * H):
        attention_decode(qkv, rows, idx, first, kbuf, vbuf, pk, pv, q_w, k_w, kstart, vstart, L, o, sc, qr, kr, H, rotate, normed,
                         eps, gated, fast, u, u + 1)
    for p in prange(parts):
        lo, hi = _block(p, parts, Wo.shape[0])
        linear_rows(o, Wo, bo, has_bo, y, lo, hi)


@njit(**_KERNEL)
def hippo_rnn_decode(x, dt, h, c, t, W, bias, W_f, bias_f, A, Bv, out, h2, c2, t2, z, pre, f, rhs, has_dt, alpha, legs, scale,
                     lo, hi):  # pragma: no cover - compiled
    """HiPPO-RNN's token (rnnlab.ops.hippo_rnn's cell with hippo.step's bilinear-family update, A lower triangular:
    LegS or LagT), per row b: z = [h, c, x], pre = W z + bias, h' = (1 − σ(pre_g)) ⊙ h + σ(pre_g) ⊙ tanh(pre_τ) (= out);
    the clock t' = t + Δ (Δ = dt[b, 0] if has_dt else 1); f = W_f h' + bias_f; per feature m, with s = Δ / t' (LegS) or
    Δ·scale: (I − α s A) c'_m = c_m + (1 − α) s A c_m + s f_m B by forward substitution (α = 0: the right side).
    Scratch rows z (H + M·N + D), pre (2H), f (M), rhs (N)."""
    H = h.shape[1]
    M, N = c.shape[1], c.shape[2]
    for b in range(lo, hi):
        zb, pb, fb, rb = z[b], pre[b], f[b], rhs[b]
        zb[:H] = h[b]
        for m in range(M):
            zb[H + m * N:H + (m + 1) * N] = c[b, m]
        zb[H + M * N:] = x[b]
        linear_rows(z[b:b + 1], W, bias, True, pre[b:b + 1], 0, W.shape[0])
        for j in range(H):
            g = _sigmoid(pb[H + j])
            v = (1.0 - g) * h[b, j] + g * math.tanh(pb[j])
            h2[b, j] = v
            out[b, j] = v
        step = dt[b, 0] if has_dt else 1.0
        tn = t[b] + step
        t2[b] = tn
        sc = (step / tn if tn > 0 else 0.0) if legs else step * scale
        linear_rows(h2[b:b + 1], W_f, bias_f, True, f[b:b + 1], 0, M)
        zero = c.dtype.type(0)
        for m in range(M):
            cm = c[b, m]
            for n in range(N):
                ac = zero
                for k in range(n + 1):
                    ac += A[n, k] * cm[k]
                rb[n] = cm[n] + (1.0 - alpha) * sc * ac + sc * fb[m] * Bv[n]
            out_m = c2[b, m]
            for n in range(N):
                if alpha == 0.0:
                    out_m[n] = rb[n]
                else:
                    acc = rb[n]
                    for k in range(n):
                        acc += alpha * sc * A[n, k] * out_m[k]
                    out_m[n] = acc / (1.0 - alpha * sc * A[n, n])


@njit(**_KERNEL)
def rwkv4_decode(kvr, wkv, w, u, out, wkv2, lo, hi):  # pragma: no cover - compiled
    """RWKV-4 time-mix's token (rnnlab.layers.rwkv4) after its projections, per row b: kvr (B, 3D) = [k | v | r], the
    state wkv (B, 3, D) = [num, den, max], w = −exp(time_decay), u = time_first (D,) -> out (B, D) = σ(r) ⊙ WKV and the
    new state wkv2; WKV in the official kernel's stabilized arithmetic (rnnlab.ops.wkv4.wkv4_ref)."""
    D = w.shape[0]
    for b in range(lo, hi):
        x = kvr[b]
        for c in range(D):
            k, v, r = x[c], x[D + c], x[2 * D + c]
            aa, bb, pp = wkv[b, 0, c], wkv[b, 1, c], wkv[b, 2, c]
            ww = u[c] + k
            q = max(pp, ww)
            e1, e2 = math.exp(pp - q), math.exp(ww - q)
            out[b, c] = (e1 * aa + e2 * v) / (e1 * bb + e2) * _sigmoid(r)
            ww = pp + w[c]
            p = max(ww, k)
            e1, e2 = math.exp(ww - p), math.exp(k - p)
            wkv2[b, 0, c] = e1 * aa + e2 * v
            wkv2[b, 1, c] = e1 * bb + e2
            wkv2[b, 2, c] = p


@njit(**_KERNEL)
def lru_decode(x, h, w_in, lam, w_out, d_skip, out, h2, lo, hi):  # pragma: no cover - compiled
    """A complex diagonal SSM's token, per row b: x (B, H), the state h (B, N, 2) (real, imaginary), w_in (2N, H) the
    input map's real and imaginary rows interleaved, lam (N, 2) λ's parts, w_out (H, 2N) the columns [Re C_j, −Im C_j]
    interleaved -> h2 = λ ⊙ h + B x and out (B, H) = Re(C h2) + D ⊙ x = w_out · h2 + D ⊙ x. The LRU (rnnlab.layers.lru:
    B = γ B) and S5 (rnnlab.layers.s5: B = B̄, C = 2 C̃)."""
    N, H = lam.shape[0], x.shape[1]
    zero = x.dtype.type(0)
    for b in range(lo, hi):
        xb, hb, nb = x[b], h[b], h2[b].reshape(-1)
        for j in range(N):
            ur, ui = zero, zero
            wr, wi = w_in[2 * j], w_in[2 * j + 1]
            for i in range(H):
                ur += wr[i] * xb[i]
                ui += wi[i] * xb[i]
            lr, li, hr, hi_ = lam[j, 0], lam[j, 1], hb[j, 0], hb[j, 1]
            nb[2 * j] = (lr * hr - li * hi_) + ur
            nb[2 * j + 1] = (lr * hi_ + li * hr) + ui
        for o in range(H):
            s = zero
            wo = w_out[o]
            for i in range(2 * N):
                s += wo[i] * nb[i]
            out[b, o] = s + d_skip[o] * xb[o]


@njit(**_INLINE)
def _reservoir_row(zb, hb, w_cat, bias, O, alpha, beta, o_kind, h2b, outb):  # pragma: no cover - compiled
    """One row of a residual reservoir (rnnlab.ops.reservoir ``residual_reservoir``): h2b = outb = α O hb + β tanh(w_cat
    zb + b), zb = [the input; hb], O applied as o_kind says (0 the identity, 1 the cyclic shift, 2 dense)."""
    N = hb.shape[0]
    zero = zb.dtype.type(0)
    for n in range(N):
        s = zero
        wn = w_cat[n]
        for k in range(zb.shape[0]):
            s += wn[k] * zb[k]
        if o_kind == 0:
            r = hb[n]
        elif o_kind == 1:
            r = hb[n - 1 if n else N - 1]
        else:
            r = zero
            for k in range(N):
                r += O[n, k] * hb[k]
        v = alpha * r + beta * math.tanh(s + bias[n])
        h2b[n] = v
        outb[n] = v


@njit(**_KERNEL)
def reservoir_decode(u, h, w_cat, bias, O, out, h2, z, alpha, beta, o_kind, lo, hi):  # pragma: no cover - compiled
    """A residual reservoir's token (one DeepResESN layer, rnnlab.layers.deep_res_esn), per row b: u (B, I), the state
    h (B, N), w_cat (N, I + N) = [W_in | W] -> h2 = out = ``_reservoir_row``; scratch z (B, I + N)."""
    I = u.shape[1]
    for b in range(lo, hi):
        zb = z[b]
        zb[:I] = u[b]
        zb[I:] = h[b]
        _reservoir_row(zb, h[b], w_cat, bias, O, alpha, beta, o_kind, h2[b], out[b])


@njit(**_KERNEL)
def res_rmn_decode(x, m, h, v_in, w_cat, bias, O, out, m2, h2, z, alpha, beta, o_kind, lo, hi):  # pragma: no cover - compiled
    """ResRMN's token (rnnlab.layers.res_rmn), per row b: x (B, D), the states m (B, M), h (B, N); v_in (M, D), w_cat
    (N, D + M + N) = [W_x | W_m | W] -> m2 = roll(m, 1) + V_in x, then the reservoir on [x; m2] (``_reservoir_row``);
    scratch z (B, D + M + N)."""
    D, M = x.shape[1], m.shape[1]
    zero = x.dtype.type(0)
    for b in range(lo, hi):
        zb = z[b]
        zb[:D] = x[b]
        for i in range(M):
            s = zero
            for k in range(D):
                s += v_in[i, k] * zb[k]
            m2[b, i] = m[b, i - 1 if i else M - 1] + s
        zb[D : D + M] = m2[b]
        zb[D + M :] = h[b]
        _reservoir_row(zb, h[b], w_cat, bias, O, alpha, beta, o_kind, h2[b], out[b])


@njit(**_INLINE)
def _synapse_sums(v, sig, neg_smu, wE, w, lo, hi, z, ib, num, den):  # pragma: no cover - compiled
    """For the columns j in [lo, hi): num += Σ_i a_ij E_ij w_ij, den += Σ_i a_ij w_ij, a_ij = σ(σ_ij v_i − σ_ij μ_ij)
    (rnnlab.ops.ltc ``_fused``), row i at a time: its arguments into the scratch row z, their exps at the vector
    width (float32: exp_row_f32); z, ib (int32), num, den have hi − lo entries."""
    one = z.dtype.type(1)  # z is scratch: its entries are not yet written
    n = hi - lo
    for i in range(v.shape[0]):
        vi = v[i]
        si, ni, ei, wi = sig[i, lo:hi], neg_smu[i, lo:hi], wE[i, lo:hi], w[i, lo:hi]
        for j in range(n):
            z[j] = -(si[j] * vi + ni[j])
        if z.itemsize == 4:
            exp_row_f32(z, ib, n, -87.0)
        else:
            for j in range(n):
                z[j] = math.exp(z[j])
        for j in range(n):
            a = one / (one + z[j])
            num[j] += a * ei[j]
            den[j] += a * wi[j]


@njit(**_INLINE)
def _ltc_substep(v, sig, nsmu, wE, w, num0, den0, cm, step, lo, hi, vnew, z, ib, num, den):  # pragma: no cover - compiled
    """One fused sub-step for the columns [lo, hi): vnew[j] = (v_j + k_j (num0_j + Σ a E w)) / (1 + k_j (den0_j + Σ a
    w)), k_j = step / c_m,j, the sums at v (all of it: the sub-step's old values); scratch z, ib (int32), num, den of
    at least hi − lo entries."""
    n = hi - lo
    num, den = num[:n], den[:n]
    num[:] = num0[lo:hi]
    den[:] = den0[lo:hi]
    _synapse_sums(v, sig, nsmu, wE, w, lo, hi, z, ib, num, den)
    for j in range(n):
        k = step / cm[lo + j]
        vnew[lo + j] = (v[lo + j] + k * num[j]) / (1 + k * den[j])


@njit(**_INLINE)
def _ltc_input(x, in_w, in_b, base, u, num0, den0):  # pragma: no cover - compiled
    """u = in_w ⊙ x + in_b, and the sub-steps' constant terms' start: num0, den0 = base (g_leak v_leak, g_leak)."""
    for i in range(u.shape[0]):
        u[i] = in_w[i] * x[i] + in_b[i]
    num0[:] = base[0]
    den0[:] = base[1]


@njit(**_KERNEL)
def ltc_decode(x, dt, v, in_w, in_b, s_sig, s_nsmu, s_wE, s_w, sig, nsmu, wE, w, base, cm, out_w, out_b, out, v2, sc, has_dt,
               unfolds, lo, hi):  # pragma: no cover - compiled
    """LTC's token (rnnlab.layers.ltc; rnnlab.ops.ltc ``ltc``), per row b: u = in_w ⊙ x + in_b; the sensory sums of
    u, then ``unfolds`` fused semi-implicit sub-steps v ← (v + k (num0 + Σ a E w)) / (1 + k (den0 + Σ a w)) with
    num0 = g_leak v_leak + Σ_sensory, den0 = g_leak + Σ_sensory (base (2, H) = [g_leak v_leak, g_leak]) and k =
    (dt_b / unfolds) / c_m (dt_b = 1 without ``has_dt``); out = out_w ⊙ v + out_b. The synapse tables are (I, H) or
    (H, H): σ, −σ μ, w E, w; dt (B, 1). Scratch sc (B, D + 6H)."""
    D, H = x.shape[1], v.shape[1]
    ib = np.empty(H, np.int32)
    for b in range(lo, hi):
        s = sc[b]
        u, z, num0, den0, vt = s[:D], s[D:D + H], s[D + H:D + 2 * H], s[D + 2 * H:D + 3 * H], s[D + 3 * H:D + 4 * H]
        num, den = s[D + 4 * H:D + 5 * H], s[D + 5 * H:D + 6 * H]
        _ltc_input(x[b], in_w, in_b, base, u, num0, den0)
        _synapse_sums(u, s_sig, s_nsmu, s_wE, s_w, 0, H, z, ib, num0, den0)
        step = (dt[b, 0] if has_dt else 1.0) / unfolds
        vb = v2[b]
        vb[:] = v[b]
        for _ in range(unfolds):
            _ltc_substep(vb, sig, nsmu, wE, w, num0, den0, cm, step, 0, H, vt, z, ib, num, den)
            vb[:] = vt
        for j in range(H):
            out[b, j] = vb[j] * out_w[j] + out_b[j]


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def ltc_decode_heads(x, dt, v, in_w, in_b, s_sig, s_nsmu, s_wE, s_w, sig, nsmu, wE, w, base, cm, out_w, out_b, out, v2, sc, has_dt,
                     unfolds):  # pragma: no cover - compiled
    """``ltc_decode`` of all rows with each sum's columns cut into blocks over numba's threads (a few rows: one row's
    H² synapses per sub-step would otherwise run on one core); a barrier between sub-steps (each reads all of v)."""
    D, H = x.shape[1], v.shape[1]
    parts = max(1, min(8, H // 16))  # column blocks of >= 16 for numba's threads to share
    zs, ibs = np.empty((parts, 3, H), v.dtype), np.empty((parts, H), np.int32)  # each block's scratch [z, num, den]
    for b in range(x.shape[0]):
        s = sc[b]
        u, num0, den0, vt = s[:D], s[D + H:D + 2 * H], s[D + 2 * H:D + 3 * H], s[D + 3 * H:D + 4 * H]
        _ltc_input(x[b], in_w, in_b, base, u, num0, den0)
        for p in prange(parts):
            lo, hi = _block(p, parts, H)
            _synapse_sums(u, s_sig, s_nsmu, s_wE, s_w, lo, hi, zs[p, 0], ibs[p], num0[lo:hi], den0[lo:hi])
        step = (dt[b, 0] if has_dt else 1.0) / unfolds
        vb = v2[b]
        vb[:] = v[b]
        for _ in range(unfolds):
            for p in prange(parts):
                lo, hi = _block(p, parts, H)
                _ltc_substep(vb, sig, nsmu, wE, w, num0, den0, cm, step, lo, hi, vt, zs[p, 0], ibs[p], zs[p, 1], zs[p, 2])
            vb[:] = vt
        for j in range(H):
            out[b, j] = vb[j] * out_w[j] + out_b[j]


@njit(**_KERNEL)
def hgrn_decode(proj, h, floor, cos, sin, ln_w, ln_b, out, h2, eps, lo, hi):  # pragma: no cover - compiled
    """HGRN's token (rnnlab.layers.hgrn) after its input projections, per row b: proj (B, 5D) = [c_re | c_im | μ | g
    (2D)]; c = SiLU(c_re) + i SiLU(c_im), f = γ + (1 − γ) σ(μ) (floor γ), h2 = f e^{iθ} ⊙ h + (1 − f) c (h (B, D, 2):
    real, imaginary); out (B, 2D) = LayerNorm(SiLU(g) ⊙ [Re h2, Im h2])."""
    D = h.shape[1]
    for b in range(lo, hi):
        p, o = proj[b], out[b]
        for j in range(D):
            f = floor[j] + (1 - floor[j]) * _sigmoid(p[2 * D + j])
            lr, li = f * cos[j], f * sin[j]
            hr, hi_ = h[b, j, 0], h[b, j, 1]
            nr = (lr * hr - li * hi_) + (1 - f) * _silu(p[j])
            ni = (lr * hi_ + li * hr) + (1 - f) * _silu(p[D + j])
            h2[b, j, 0], h2[b, j, 1] = nr, ni
            o[j] = _silu(p[3 * D + j]) * nr
            o[D + j] = _silu(p[4 * D + j]) * ni
        _ln_head(o, ln_w, ln_b, True, eps, o)


@njit(**_KERNEL)
def dense_ssm_decode(x, h, Ab, Bb, C, D, out, h2, lo, hi):  # pragma: no cover - compiled
    """A dense per-channel SSM's token (LSSL, rnnlab.layers.lssl; rnnlab.ops.ssm_kernels ``dense_ssm_ref``), per row
    b and channel c: h2 = Ā_c h_c + B̄_c u_c (Ā (H, N, N), B̄ (H, N)), out = C_c · h2_c + D_c u_c (B, H)."""
    for b in range(lo, hi):
        for c in range(Bb.shape[0]):
            _dense_ssm_channel(x, h, Ab, Bb, C, D, out, h2, b, c)


@njit(**_INLINE)
def _dense_ssm_channel(x, h, Ab, Bb, C, D, out, h2, b, c):  # pragma: no cover - compiled
    """Channel c of row b in ``dense_ssm_decode``."""
    N = Bb.shape[1]
    zero = x.dtype.type(0)
    u, hc, nc, Ac = x[b, c], h[b, c], h2[b, c], Ab[c]
    y = zero
    for n in range(N):
        s = zero
        for m in range(N):
            s += Ac[n, m] * hc[m]
        s += Bb[c, n] * u
        nc[n] = s
        y += C[c, n] * s
    out[b, c] = y + D[c] * u


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def dense_ssm_decode_heads(x, h, Ab, Bb, C, D, out, h2):  # pragma: no cover - compiled
    """``dense_ssm_decode`` with the (row, channel) units over numba's threads (the O(H N²) update of a few rows)."""
    H = Bb.shape[0]
    for unit in prange(x.shape[0] * H):
        _dense_ssm_channel(x, h, Ab, Bb, C, D, out, h2, unit // H, unit % H)


@njit(**_KERNEL)
def hawk_decode(proj, conv, h, pos, conv_w, conv_b, wa, wx, ba, bx, sp, out, conv2, h2, pos2, xc, c, reset, lo, hi):  # pragma: no cover - compiled
    """Griffin's recurrent block's token (rnnlab.layers.hawk, RG-LRU) after its input projections, per row b: proj
    (B, 2R) = [y | x]; x_c = conv(x) (bias, no activation) with state conv (B, W-1, R); r = σ(W_a x_c + b_a), i = σ(W_x
    x_c + b_x) with W_a, W_x block-diagonal (nb, w, w), nb·w = R (nb = 1: dense); log a = −c·r·sp, sp = softplus(−Λ);
    h ← a h + √(1 − a²)(i ⊙ x_c), at a sequence's first token (``reset`` and pos = 0) h = i ⊙ x_c; out (B, R) =
    h ⊙ GeLU_tanh(y). New states conv2, h2, pos2 = pos + 1; scratch xc (B, R)."""
    R = h.shape[1]
    nb, w = wa.shape[0], wa.shape[2]
    for b in range(lo, hi):
        x, u = proj[b], xc[b]
        _conv(x[R:], conv[b], conv_w, conv_b, True, False, u, conv2[b])
        first = reset and pos[b] == 0
        pos2[b] = pos[b] + 1
        for n in range(nb):
            for o in range(w):
                k = n * w + o
                ra, rx = ba[k], bx[k]
                for i in range(w):
                    ra += wa[n, o, i] * u[n * w + i]
                    rx += wx[n, o, i] * u[n * w + i]
                ra, rx = _sigmoid(ra), _sigmoid(rx)
                log_a = -c * ra * sp[k]
                if first:
                    hk = rx * u[k]
                else:
                    hk = math.exp(log_a) * h[b, k] + math.sqrt(-math.expm1(2.0 * log_a)) * (rx * u[k])
                h2[b, k] = hk
                out[b, k] = hk * _gelu_tanh(x[k])


@njit(**_INLINE)
def _block(p, parts, n):  # pragma: no cover - compiled
    """Block p of ``parts`` over n outputs, [lo, hi): boundaries on multiples of four (``linear_rows``' step)."""
    return (p * n // parts) // 4 * 4, n if p == parts - 1 else ((p + 1) * n // parts) // 4 * 4


@njit(**_KERNEL)
def linear_rows(x, W, bias, has_bias, y, lo, hi):  # pragma: no cover - compiled
    """nn.Linear's outputs [lo, hi) for a few rows: y[:, o] = x W[o]ᵀ (+ bias[o]), x (B, in), W (out, in) as stored;
    four weight rows at a time, so each x entry is loaded once per four outputs and W is read once for all rows."""
    B, n = x.shape
    zero = x.dtype.type(0)  # accumulate in the rows' dtype
    o = lo
    while o + 4 <= hi:
        w0, w1, w2, w3 = W[o], W[o + 1], W[o + 2], W[o + 3]
        for r in range(B):
            xr = x[r]
            a0 = a1 = a2 = a3 = zero
            for i in range(n):
                xi = xr[i]
                a0 += w0[i] * xi
                a1 += w1[i] * xi
                a2 += w2[i] * xi
                a3 += w3[i] * xi
            if has_bias:
                a0, a1, a2, a3 = a0 + bias[o], a1 + bias[o + 1], a2 + bias[o + 2], a3 + bias[o + 3]
            y[r, o], y[r, o + 1], y[r, o + 2], y[r, o + 3] = a0, a1, a2, a3
        o += 4
    for o in range(o, hi):
        w0 = W[o]
        for r in range(B):
            a0 = zero
            for i in range(n):
                a0 += w0[i] * x[r, i]
            y[r, o] = a0 + bias[o] if has_bias else a0


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def linear_rows_parallel(x, W, bias, has_bias, y, parts):  # pragma: no cover - compiled
    """``linear_rows`` with the outputs cut into ``parts`` blocks (multiples of four) over numba's threads."""
    for p in prange(parts):
        lo, hi = _block(p, parts, W.shape[0])
        linear_rows(x, W, bias, has_bias, y, lo, hi)


@njit(**_INLINE)
def _matvec(W, x, bias, has_bias, y):  # pragma: no cover - compiled
    """y = W x (+ bias): W (out, in) row-major, one dot product per output."""
    for o in range(W.shape[0]):
        s = bias[o] if has_bias else 0.0
        for i in range(W.shape[1]):
            s += W[o, i] * x[i]
        y[o] = s


@njit(**_KERNEL)
def rwkv7_decode(x, shift, S, mu, Wr, Wk, Wv, wd, wu, wb, ad, au, ab, gd, gu, k_k, k_a, r_k, ln_w, ln_b, out, shift2, S2,
                 xs, r, k, v, lw, la, lg, low, aS, ln_eps, lo, hi):  # pragma: no cover - compiled
    """RWKV-7 time-mix's token (rnnlab.layers.rwkv7) before its output projection, per row b: x (B, D) the input,
    shift (B, D) the previous one, S (B, H, N, N) stored transposed; mu (6, D) the token-shift mixes of r, w, k, v, a, g;
    r, k, v = W x◇; log w = −e^{−1/2} σ(wb + wu tanh(wd x_w)); a = σ(ab + au ad x_a); g = gu σ(gd x_g); per head κ̂ =
    normalize(k ⊙ k_k), k̃ = k ⊙ (1 + (a − 1) ⊙ k_a); Sᵀ ← e^{log w} ⊙ Sᵀ + (κ̂ ⊙ a)(−κ̂ᵀSᵀ) + k̃ vᵀ, o = S r
    (rnnlab.ops.rwkv7.fused_recurrent_rwkv7 with a = −κ̂, b = κ̂ ⊙ a); out = (GroupNorm_head(o) + (r·(r_k ⊙ k̃)) v) ⊙ g.
    New states shift2 = x, S2; scratch rows xs (B, 6D), r, k, v, lw, la, lg (B, D), low (B, rank), aS (B, N)."""
    D = x.shape[1]
    H, N = S.shape[1], S.shape[2]
    f32 = S.dtype.type  # the state's dtype for every product (float64 scalars would widen each one)
    ew = math.exp(-0.5)
    for bi in range(lo, hi):
        xb, pb, xm = x[bi], shift[bi], xs[bi]
        for c in range(D):
            dx = pb[c] - xb[c]
            for j in range(6):
                xm[j * D + c] = xb[c] + dx * mu[j, c]
            shift2[bi, c] = xb[c]
        rb, kb, vb, wl, al, gl, lr = r[bi], k[bi], v[bi], lw[bi], la[bi], lg[bi], low[bi]
        _matvec(Wr, xm[0:D], wb, False, rb)
        _matvec(Wk, xm[2 * D:3 * D], wb, False, kb)
        _matvec(Wv, xm[3 * D:4 * D], wb, False, vb)
        h1 = lr[:wd.shape[0]]
        _matvec(wd, xm[D:2 * D], wb, False, h1)
        for i in range(h1.shape[0]):
            h1[i] = math.tanh(h1[i])
        _matvec(wu, h1, wb, True, wl)
        h1 = lr[:ad.shape[0]]
        _matvec(ad, xm[4 * D:5 * D], wb, False, h1)
        _matvec(au, h1, ab, True, al)
        h1 = lr[:gd.shape[0]]
        _matvec(gd, xm[5 * D:6 * D], wb, False, h1)
        for i in range(h1.shape[0]):
            h1[i] = _sigmoid(h1[i])
        _matvec(gu, h1, wb, False, gl)
        for c in range(D):
            wl[c] = math.exp(-ew * _sigmoid(wl[c]))  # the decay e^{log w}
            al[c] = _sigmoid(al[c])
        a_s = aS[bi]
        for h in range(H):
            o0 = h * N
            nrm = 0.0
            for i in range(N):
                kk = kb[o0 + i] * k_k[o0 + i]
                nrm += kk * kk
            nrm = f32(1.0 / max(math.sqrt(nrm), 1e-12))
            Sb, Sn = S[bi, h], S2[bi, h]
            for j in range(N):
                a_s[j] = 0.0
            for i in range(N):
                kh = -kb[o0 + i] * k_k[o0 + i] * nrm  # a = −κ̂
                for j in range(N):
                    a_s[j] += kh * Sb[i, j]
            bonus = 0.0
            for i in range(N):
                c = o0 + i
                kap = kb[c] * k_k[c] * nrm
                bb = kap * al[c]  # b = κ̂ ⊙ a
                kt = kb[c] * (f32(1.0) + (al[c] - f32(1.0)) * k_a[c])  # k̃
                bonus += rb[c] * r_k[h, i] * kt
                for j in range(N):
                    Sn[i, j] = Sb[i, j] * wl[c] + bb * a_s[j] + kt * vb[o0 + j]
            ob = out[bi, o0:o0 + N]
            _matvec_t(Sn, rb[o0:o0 + N], ob, False, ob)  # o = S r (S stored transposed)
            _ln_head(ob, ln_w[o0:o0 + N], ln_b[o0:o0 + N], True, ln_eps, ob)
            for j in range(N):
                c = o0 + j
                ob[j] = (ob[j] + bonus * vb[c]) * gl[c]


@njit(**_KERNEL)
def rwkv6_decode(x, shift, S, maa_x, maa, w1t, w2t, Wr, Wk, Wv, Wg, time_decay, dw1t, dw2t, u, ln_w, ln_b, out, shift2, S2,
                 xs, lora, r, k, v, g, dd, low, ln_eps, lo, hi):  # pragma: no cover - compiled
    """RWKV-6 time-mix's token (rnnlab.layers.rwkv6) before its output projection, per row b: x, shift (B, D), S (B, H,
    N, N); the data-dependent token shift x◇ = x + (x_{t-1} − x)(maa◇ + w2◇ tanh(w1 (x + (x_{t-1} − x) maa_x))) for
    ◇ = w, k, v, r, g (w1t, w2t transposed: (5r, D), (5, D, r)); r, k, v = W x◇, g = SiLU(W_g x_g); decay e^{−e^d},
    d = time_decay + dw2 tanh(dw1 x_w) (transposed); per head o = Sᵀr + (r·(u ⊙ k)) v, then S ← decay ⊙ S + k vᵀ
    (rnnlab.ops.rwkv6.fused_recurrent_rwkv6, scale 1); out = GroupNorm_head(o) ⊙ g. New states shift2 = x, S2;
    scratch rows xs (B, 5D), lora (B, 5r), r, k, v, g, dd (B, D), low (B, rank of the decay)."""
    D = x.shape[1]
    H, N = S.shape[1], S.shape[2]
    R = w2t.shape[2]
    for bi in range(lo, hi):
        xb, pb, xm, lr, db, lw = x[bi], shift[bi], xs[bi], lora[bi], dd[bi], low[bi]
        for c in range(D):
            db[c] = xb[c] + (pb[c] - xb[c]) * maa_x[c]  # x + xx ⊙ maa_x (dd as scratch)
            shift2[bi, c] = xb[c]
        _matvec(w1t, db, maa_x, False, lr)
        for j in range(lr.shape[0]):
            lr[j] = math.tanh(lr[j])
        for f in range(5):
            for c in range(D):
                m = maa[f, c]
                for j in range(R):
                    m += w2t[f, c, j] * lr[f * R + j]
                xm[f * D + c] = xb[c] + (pb[c] - xb[c]) * m
        rb, kb, vb, gb = r[bi], k[bi], v[bi], g[bi]
        _matvec(Wr, xm[3 * D:4 * D], maa_x, False, rb)
        _matvec(Wk, xm[D:2 * D], maa_x, False, kb)
        _matvec(Wv, xm[2 * D:3 * D], maa_x, False, vb)
        _matvec(Wg, xm[4 * D:5 * D], maa_x, False, gb)
        _matvec(dw1t, xm[0:D], maa_x, False, lw)
        for j in range(lw.shape[0]):
            lw[j] = math.tanh(lw[j])
        _matvec(dw2t, lw, time_decay, True, db)
        for c in range(D):
            db[c] = math.exp(-math.exp(db[c]))
            gb[c] = _silu(gb[c])
        for h in range(H):
            o0 = h * N
            Sb, Sn = S[bi, h], S2[bi, h]
            ob = out[bi, o0:o0 + N]
            bonus = 0.0
            for i in range(N):
                bonus += rb[o0 + i] * u[h, i] * kb[o0 + i]
            for j in range(N):
                ob[j] = bonus * vb[o0 + j]
            for i in range(N):
                ri, ki, di = rb[o0 + i], kb[o0 + i], db[o0 + i]
                for j in range(N):
                    ob[j] += ri * Sb[i, j]
                    Sn[i, j] = di * Sb[i, j] + ki * vb[o0 + j]
            _ln_head(ob, ln_w[o0:o0 + N], ln_b[o0:o0 + N], True, ln_eps, ob)
            for j in range(N):
                ob[j] *= gb[o0 + j]


@njit(**_INLINE)
def _decay_write_read(Sb, Sn, q, scale, k, v, a, per_key, o):  # pragma: no cover - compiled
    """One head of gated linear attention (rnnlab.ops.gla ``_fused``): Sn = a ⊙ Sb + k vᵀ (a (K,) per key when
    ``per_key``, else a[0] for all), then o = Snᵀ (scale · q)."""
    K, V = Sb.shape[0], Sb.shape[1]
    sc = Sb.dtype.type(scale)  # float32 products for a float32 state (a float64 scale would widen each one)
    for j in range(V):
        o[j] = 0.0
    for i in range(K):
        ai = a[i] if per_key else a[0]
        ki, qi = k[i], sc * q[i]
        for j in range(V):
            s = ai * Sb[i, j] + ki * v[j]
            Sn[i, j] = s
            o[j] += qi * s


@njit(**_KERNEL)
def gla_decode(proj, S, up_w, up_b, norm_w, out, S2, a, tau, eps, lo, hi):  # pragma: no cover - compiled
    """GLA's token (rnnlab.layers.gla) between its projections, per row b: proj (B, ·) = [q (H·K) | k (H·K) | v (H·V) |
    low (r) | og (H·V)]; the per-key decay α = exp(logσ(up_w low + up_b) / τ); per head the update and read-out
    (``_decay_write_read``, scale 1/√K); out = GatedRMSNorm(o, og) (B, H·V). New state S2; scratch a (B, H·K)."""
    H, K, V = S.shape[1], S.shape[2], S.shape[3]
    QK, E, r = H * K, H * V, up_w.shape[1]
    scale = 1.0 / math.sqrt(K)
    for b in range(lo, hi):
        x, ab = proj[b], a[b]
        _matvec(up_w, x[2 * QK + E:2 * QK + E + r], up_b, True, ab)
        for i in range(QK):
            z = ab[i]
            ab[i] = math.exp(_logsigmoid(z) / tau)
        og = 2 * QK + E + r
        for h in range(H):
            ob = out[b, h * V:(h + 1) * V]
            _decay_write_read(S[b, h], S2[b, h], x[h * K:(h + 1) * K], scale, x[QK + h * K:QK + (h + 1) * K],
                              x[2 * QK + h * V:2 * QK + (h + 1) * V], ab[h * K:(h + 1) * K], True, ob)
            _rms_gate(ob, norm_w, eps, x[og + h * V:og + (h + 1) * V], 1, ob)


@njit(**_KERNEL)
def hgrn2_decode(proj, S, norm_w, out, S2, sc, gam, eps, lo, hi):  # pragma: no cover - compiled
    """HGRN2's token (rnnlab.layers.hgrn2) between its projections, per row b: proj (B, 3D) = [q | f | i]; per key
    channel the decay e^g, g = logσ(f) (γ = 0) or log(γ + (1 − γ) σ(f)), and k = (1 − γ) σ(−f); per head S2 = e^g ⊙ S
    + k iᵀ, o = S2ᵀ SiLU(q) (``_decay_write_read``, scale 1); out (B, D) = RMSNorm(o) over all heads. Scratch sc (B,
    3D) = [SiLU(q) | e^g | k]."""
    H, K = S.shape[1], S.shape[2]
    D = H * K
    for b in range(lo, hi):
        p, s, ob = proj[b], sc[b], out[b]
        for c in range(D):
            f = p[D + c]
            s[c] = _silu(p[c])
            s[D + c] = math.exp(_logsigmoid(f)) if gam == 0.0 else math.exp(math.log(gam + (1.0 - gam) * _sigmoid(f)))
            s[2 * D + c] = (1.0 - gam) * _sigmoid(-f)
        for h in range(H):
            _decay_write_read(S[b, h], S2[b, h], s[h * K:(h + 1) * K], 1.0, s[2 * D + h * K:2 * D + (h + 1) * K],
                              p[2 * D + h * K:2 * D + (h + 1) * K], s[D + h * K:D + (h + 1) * K], True, ob[h * K:(h + 1) * K])
        _rms_gate(ob, norm_w, eps, ob, 0, ob)


@njit(**_KERNEL)
def retnet_decode(proj, S, pos, inv_freq, log_gamma, gn_w, gn_b, out, S2, pos2, qk, eps, lo, hi):  # pragma: no cover - compiled
    """RetNet's token (rnnlab.layers.retnet) between its projections, per row b: proj (B, ·) = [q (H·K) | k (H·K) |
    v (H·V) | g (H·V)]; q and k rotated at position pos[b] (angles pos · inv_freq in float32, as ``parts.rotary_cos_sin``);
    per head the decay γ_h = exp(log_gamma[h]) update and read-out (``_decay_write_read``, scale 1/√K); out =
    GroupNorm_head(o) ⊙ SiLU(g) (B, H·V). New states S2, pos2 = pos + 1; scratch qk (B, 2K)."""
    H, K, V = S.shape[1], S.shape[2], S.shape[3]
    QK, E = H * K, H * V
    scale = 1.0 / math.sqrt(K)
    a = np.empty(1, S.dtype)
    for b in range(lo, hi):
        x, q, k = proj[b], qk[b, :K], qk[b, K:]
        pos2[b] = pos[b] + 1
        for h in range(H):
            for i in range(K):
                q[i], k[i] = x[h * K + i], x[QK + h * K + i]
            _rotate_pair(q, k, pos[b], inv_freq)
            a[0] = math.exp(log_gamma[h])
            ob = out[b, h * V:(h + 1) * V]
            _decay_write_read(S[b, h], S2[b, h], q, scale, k, x[2 * QK + h * V:2 * QK + (h + 1) * V], a, False, ob)
            _ln_head(ob, gn_w[h * V:(h + 1) * V], gn_b[h * V:(h + 1) * V], True, eps, ob)
            for j in range(V):
                ob[j] *= _silu(x[2 * QK + E + h * V + j])


@njit(**_INLINE)
def _linear_attn_head(qh, kh, vh, Sb, Sn, zb, zn, ob, normalize, eps):  # pragma: no cover - compiled
    """One head: S ← S + k vᵀ, z ← z + k; o = Sᵀq (/ (zᵀq + eps) when ``normalize``)."""
    F, V = Sb.shape[0], Sb.shape[1]
    for j in range(V):
        ob[j] = 0.0
    den = 0.0
    for i in range(F):
        ki, qi = kh[i], qh[i]
        zi = zb[i] + ki
        zn[i] = zi
        den += qi * zi
        for j in range(V):
            s = Sb[i, j] + ki * vh[j]
            Sn[i, j] = s
            ob[j] += qi * s
    if normalize:
        for j in range(V):
            ob[j] = ob[j] / (den + eps)


@njit(**_KERNEL)
def linear_attn_decode(q, k, v, S, z, out, S2, z2, normalize, eps, lo, hi):  # pragma: no cover - compiled
    """One token of (normalized) linear attention over feature-mapped q, k (B, H·F) and v (B, H·V) (rnnlab.layers.
    linear_attention ``linear_attention_heads``, scale 1), per row b and head h: S ← S + k vᵀ, z ← z + k; o = Sᵀq, divided
    by zᵀq + eps when ``normalize`` -> out (B, H·V). New states S2, z2 (z2 = z + k also unnormalized: the caller
    drops it)."""
    H, F, V = S.shape[1], S.shape[2], S.shape[3]
    for b in range(lo, hi):
        for h in range(H):
            _linear_attn_head(q[b, h * F:(h + 1) * F], k[b, h * F:(h + 1) * F], v[b, h * V:(h + 1) * V], S[b, h], S2[b, h],
                              z[b, h], z2[b, h], out[b, h * V:(h + 1) * V], normalize, eps)


@njit(**_INLINE)
def _taylor(x, d, phi):  # pragma: no cover - compiled
    """Based's feature map (rnnlab.layers.based ``taylor_feature_map``): φ(x) = [1, x / d^{1/4}, vec(x xᵀ) / √(2d)]."""
    phi[0] = 1.0
    r4, r2 = 1.0 / d**0.25, 1.0 / math.sqrt(2.0 * d)
    for i in range(d):
        phi[1 + i] = x[i] * r4
        for j in range(d):
            phi[1 + d + i * d + j] = (x[i] * x[j]) * r2


@njit(**_KERNEL)
def taylor_attn_decode(proj, S, z, out, S2, z2, fq, fk, d, eps, lo, hi):  # pragma: no cover - compiled
    """One token of normalized linear attention with Based's Taylor feature map (rnnlab.layers.based, jrt_rnn) after
    the projections: proj (B, 2·H·d + H·V) = [q | k | v] unmapped; per row and head φ(q), φ(k) (scratch fq, fk (B, F),
    F = 1 + d + d²), then ``linear_attn_decode``'s update and read -> out (B, H·V), S2, z2."""
    H, V = S.shape[1], S.shape[3]
    for b in range(lo, hi):
        x = proj[b]
        for h in range(H):
            _taylor(x[h * d:(h + 1) * d], d, fq[b])
            _taylor(x[(H + h) * d:(H + h + 1) * d], d, fk[b])
            off = 2 * H * d + h * V
            _linear_attn_head(fq[b], fk[b], x[off:off + V], S[b, h], S2[b, h], z[b, h], z2[b, h], out[b, h * V:(h + 1) * V],
                              True, eps)


@njit(**_KERNEL)
def h3_decode(proj, conv, h, conv_w, eA, Bbar, C, Dr, out, conv2, h2, kbar, d, lo, hi):  # pragma: no cover - compiled
    """H3's token (rnnlab.layers.h3) between its projections, per row b: proj (B, 3D) = [q | k | v]; k̄ = the shift
    SSM (a causal conv of N taps, conv_w (D, N) in time order, state conv (B, N-1, D)); per head of d channels,
    u_ij = k̄_i v_j, then the diagonal SSM per (head, i, j) channel c: h_c ← e^{ΔA}_c h_c + B̄_c u_c (complex, as real
    pairs: h (B, D·d, N/2, 2), eA, Bbar, C (D·d, N/2, 2)), y_c = 2 Re Σ C_c h_c + D_c u_c; out (B, D) with
    out[head, j] = Σ_i q_i y_ij. New states conv2, h2; scratch kbar (B, D)."""
    D, N2 = conv_w.shape[0], eA.shape[1]
    for b in range(lo, hi):
        x, kb = proj[b], kbar[b]
        _conv(x[D:2 * D], conv[b], conv_w, conv_w[0], False, False, kb, conv2[b])
        ob = out[b]
        for o in range(D):
            ob[o] = 0.0
        for c in range(D * d):
            head, i, j = c // (d * d), (c // d) % d, c % d
            u = kb[head * d + i] * x[2 * D + head * d + j]
            acc = 0.0
            for n in range(N2):
                er, ei = eA[c, n, 0], eA[c, n, 1]
                hr, hi_ = h[b, c, n, 0], h[b, c, n, 1]
                nr = er * hr - ei * hi_ + Bbar[c, n, 0] * u
                ni = er * hi_ + ei * hr + Bbar[c, n, 1] * u
                h2[b, c, n, 0] = nr
                h2[b, c, n, 1] = ni
                acc += nr * C[c, n, 0] - ni * C[c, n, 1]
            ob[head * d + j] += x[head * d + i] * (2.0 * acc + Dr[c] * u)


@njit(**_KERNEL)
def plstm_decode(proj, v, C, norm_w, out, C2, o, H, tanh, eps, lo, hi):  # pragma: no cover - compiled
    """pLSTM's token (rnnlab.layers.plstm, the recurrence of rnnlab.ops.plstm ``plstm_ref``) between its projections,
    per row b and head h: proj (B, 2D + 4H) = [q | k | S T M D pre-activations (gate-major)] of the conv's output, v
    (B, D); S, M, D = σ(·), T = tanh(5·) (``tanh``) or σ(·)^5; o = (M qᵀC + D (q·k) v) / √K from the old C, C ← T C +
    S k vᵀ; out (B, D) = RMSNorm(o) per head (eps, no affine) · norm_w. New state C2; scratch o (B, D)."""
    D = v.shape[1]
    K = D // H
    scale = 1.0 / math.sqrt(K)
    for b in range(lo, hi):
        x, ob = proj[b], o[b]
        for h in range(H):
            sg, mg, dg = _sigmoid(x[2 * D + h]), _sigmoid(x[2 * D + 2 * H + h]), _sigmoid(x[2 * D + 3 * H + h])
            z = x[2 * D + H + h]
            tg = math.tanh(5.0 * z) if tanh else math.exp(5.0 * _logsigmoid(z))
            qh, kh, vh, oh = x[h * K:(h + 1) * K], x[D + h * K:D + (h + 1) * K], v[b, h * K:(h + 1) * K], ob[h * K:(h + 1) * K]
            qk = 0.0
            for i in range(K):
                qk += qh[i] * kh[i]
            for j in range(K):
                oh[j] = 0.0
            Cb, Cn = C[b, h], C2[b, h]
            for i in range(K):
                qi, ski = qh[i], sg * kh[i]
                for j in range(K):
                    cij = Cb[i, j]
                    oh[j] += qi * cij
                    Cn[i, j] = tg * cij + ski * vh[j]
            for j in range(K):
                oh[j] = scale * (mg * oh[j] + dg * qk * vh[j])
            _rms_gate(oh, norm_w[h * K:(h + 1) * K], eps, oh, 0, out[b, h * K:(h + 1) * K])


@njit(**_KERNEL)
def rat_decode(proj, hk, hv, sk, sv, pos, gate_bias, inv_freq, out, hk2, hv2, sk2, sv2, pos2, qr, kr, sc, H, G, L, rope, scale,
               write, lo, hi):  # pragma: no cover - compiled
    """RAT's token (rnnlab.layers.rat; rnnlab.ops.rat ``_step``) between its projections, per row b at position p and
    head h (reading q, k group h mod G): proj (B, 3D + 2GK) = [z | v | f | q | k]; g = σ(f + gate_bias); the running
    k̃, ṽ (hk, hv (B, H, K)) restart at a chunk start (p mod L = 0): k̃ ← g k̃ + (1 − g) k, ṽ alike; q and k̃ rotated by
    the chunk index p // L (``rope``, inv_freq (K/2,)); softmax(scale · [q·summaries, q·k̃]) over the row's p // L real
    summaries (the last of sk, sv (B, H, C, K)) and k̃ reads [sv; ṽ]; out (B, D) = σ(z) ⊙ o. New hk2, hv2, pos2 = p + 1;
    with ``write`` the summaries sk2, sv2 (B, H, C2, K), C2 − C ∈ {0, 1} zero entries added in front: a row that
    completes its chunk drops the front entry and appends (rotated k̃, ṽ). Scratch qr, kr (B, K), sc (B, C + 1)."""
    K, C, C2 = hk.shape[2], sk.shape[2], sk2.shape[2]
    D = H * K
    off = C2 - C
    for b in range(lo, hi):
        x, q, k, s = proj[b], qr[b], kr[b], sc[b]
        p = pos[b]
        keep, c, done = p % L != 0, p // L, (p + 1) % L == 0
        pos2[b] = p + 1
        for h in range(H):
            n = h % G
            for j in range(K):
                ch = h * K + j
                g = _sigmoid(x[2 * D + ch] + gate_bias[ch])
                a = hk[b, h, j] * g if keep else 0.0
                e = hv[b, h, j] * g if keep else 0.0
                hk2[b, h, j] = a + (1.0 - g) * x[3 * D + G * K + n * K + j]
                hv2[b, h, j] = e + (1.0 - g) * x[D + ch]
                q[j] = x[3 * D + n * K + j]
                k[j] = hk2[b, h, j]
            if rope:
                _rotate_pair(q, k, c, inv_freq)
            m = -np.inf
            for i in range(C - c, C + 1):
                t = 0.0
                for j in range(K):
                    t += q[j] * (sk[b, h, i, j] if i < C else k[j])
                s[i] = t * scale
                m = max(m, s[i])
            tot = 0.0
            for i in range(C - c, C + 1):
                s[i] = math.exp(s[i] - m)
                tot += s[i]
            for j in range(K):
                acc = s[C] * hv2[b, h, j]
                for i in range(C - c, C):
                    acc += s[i] * sv[b, h, i, j]
                out[b, h * K + j] = _sigmoid(x[h * K + j]) * (acc / tot)
            if write:
                for i in range(C2):
                    src = i + 1 - off if done else i - off
                    for j in range(K):
                        if done and i == C2 - 1:
                            sk2[b, h, i, j], sv2[b, h, i, j] = k[j], hv2[b, h, j]
                        elif src < 0:
                            sk2[b, h, i, j], sv2[b, h, i, j] = 0.0, 0.0
                        else:
                            sk2[b, h, i, j], sv2[b, h, i, j] = sk[b, h, src, j], sv[b, h, src, j]


@njit(**_KERNEL)
def slstm_decode(x, h, c, n, m, conv, conv_w, conv_b, w_if, w_zo, w_hh, bias, norm_w, out, h2, c2, n2, m2, conv2, xc, g,
                 has_conv, sigmoid_forget, lo, hi):  # pragma: no cover - compiled
    """The sLSTM layer's token (rnnlab.layers.slstm), per row b: x (B, H); x_c = SiLU(conv x) (when ``has_conv``, state
    conv (B, W-1, H)); gates gate-major [i | f | z | o] = [w_if x_c | w_zo x] + bias + R h, the input and recurrent
    projections head-wise (w_if, w_zo (2, NH, Kh, Kh); w_hh (NH, 4Kh, Kh), rows g·Kh + j); the stabilized cell
    (rnnlab.ops.rnn.reference ``cell_step("slstm")``: m' = max(log f + m, i), c ← f'c + i' tanh z, n ← f'n + i',
    h = σ(o) c / n); out = GroupNorm over heads of h (weight only, eps 1e-5). New states h2, c2, n2, m2, conv2; scratch
    xc (B, H), g (B, 4H)."""
    H = h.shape[1]
    NH, Kh = w_if.shape[1], w_if.shape[2]
    for b in range(lo, hi):
        xb, u, gb = x[b], xc[b], g[b]
        if has_conv:
            _conv(xb, conv[b], conv_w, conv_b, True, True, u, conv2[b])
        else:
            for k in range(H):
                u[k] = xb[k]
        for q in range(4):
            src = u if q < 2 else xb
            W = w_if[q] if q < 2 else w_zo[q - 2]
            for hd in range(NH):
                for j in range(Kh):
                    s = bias[q * H + hd * Kh + j]
                    for k in range(Kh):
                        s += W[hd, j, k] * src[hd * Kh + k] + w_hh[hd, q * Kh + j, k] * h[b, hd * Kh + k]
                    gb[q * H + hd * Kh + j] = s
        for k in range(H):
            i, f, z, o = gb[k], gb[H + k], gb[2 * H + k], gb[3 * H + k]
            logf = _logsigmoid(f) if sigmoid_forget else f
            mn = max(logf + m[b, k], i)
            ig, fg = math.exp(i - mn), math.exp(logf + m[b, k] - mn)
            cn = fg * c[b, k] + ig * math.tanh(z)
            nn_ = fg * n[b, k] + ig
            c2[b, k], n2[b, k], m2[b, k] = cn, nn_, mn
            h2[b, k] = cn / nn_ * _sigmoid(o)
        ob = out[b]
        for hd in range(NH):
            for j in range(Kh):
                ob[hd * Kh + j] = h2[b, hd * Kh + j]
            _ln_head(ob[hd * Kh:(hd + 1) * Kh], norm_w[hd * Kh:(hd + 1) * Kh], norm_w, False, 1e-5, ob[hd * Kh:(hd + 1) * Kh])


@njit(**_KERNEL)
def mamba_decode(proj, conv, h, conv_w, conv_b, x_w, dt_w, dt_b, neg_A, D, out, conv2, h2, xc, dbc, dts, ea, has_bias, mode,
                 norm_eps, fast, lo, hi):  # pragma: no cover - compiled
    """Mamba's token (rnnlab.layers.mamba, ``SelectiveBlock``) between its projections, per row b: proj (B, 2E) =
    [x | z]; x_c = SiLU(conv x) (state conv (B, W-1, E)); [δ | B | C] = x_w x_c (rank r, N, N), each RMS-normed
    (weightless, ``norm_eps``) when norm_eps >= 0 (Falcon Mamba); Δ = softplus(dt_w δ + dt_b); per channel d and state
    n: a = exp(Δ_d A_dn) (``mode`` 0; 2a − 1: mode 1; Longhorn, mode 2: Δ = ε = β / (1 + β ‖B‖²) with β = σ(dt_w δ +
    dt_b), a = 1 − ε B_n², neg_A unread), h ← a h + Δ_d x_d B_n, y_d = Σ_n C_n h_dn
    (rnnlab.ops.selective_scan.selective_scan_step); out = (y + D x_c) ⊙ SiLU(z) (B, E). New states conv2, h2; scratch
    xc, dts (B, E), dbc (B, r + 2N), ea (B, E·N) the decays, all E·N exponentials as one row (``fast``: float32, the
    vectorized exp)."""
    E, N = h.shape[1], h.shape[2]
    r = dt_w.shape[1]
    for b in range(lo, hi):
        x, u, q, dtb, e = proj[b], xc[b], dbc[b], dts[b], ea[b]
        _conv(x[:E], conv[b], conv_w, conv_b, has_bias, True, u, conv2[b])
        _matvec(x_w, u, dt_b, False, q)
        if norm_eps >= 0.0:
            for o0, n0 in ((0, r), (r, N), (r + N, N)):
                s = 0.0
                for i in range(o0, o0 + n0):
                    s += q[i] * q[i]
                s = 1.0 / math.sqrt(s / n0 + norm_eps)
                for i in range(o0, o0 + n0):
                    q[i] = q[i] * s
        _matvec(dt_w, q[:r], dt_b, True, dtb)
        if mode == 2:
            ksq = 0.0
            for n in range(N):
                ksq += q[r + n] * q[r + n]
            for d in range(E):
                beta = _sigmoid(dtb[d])
                dtb[d] = beta / (1.0 + beta * ksq)
                for n in range(N):
                    e[d * N + n] = 1.0 - dtb[d] * (q[r + n] * q[r + n])
        else:
            for d in range(E):
                dtb[d] = _softplus(dtb[d])
                for n in range(N):
                    e[d * N + n] = dtb[d] * neg_A[d, n]
            _exp_row(e, E * N, fast)
        for d in range(E):
            dx = dtb[d] * u[d]
            hs, hd = h[b, d], h2[b, d]
            y = 0.0
            for n in range(N):
                a = e[d * N + n]
                if mode == 1:
                    a = 2.0 * a - 1.0
                v = a * hs[n] + dx * q[r + n]
                hd[n] = v
                y += v * q[r + N + n]
            out[b, d] = (y + D[d] * u[d]) * _silu(x[E + d])


@njit(**_INLINE)
def _ln_head(x, w, b, has_bias, eps, y):  # pragma: no cover - compiled
    """y = (x − mean) / √(var + eps) · w (+ b) over one head (LayerNorm; GroupNorm's per-group part; the TTT spec's
    layer_norm); y may be x. Returns 1/σ."""
    n = x.shape[0]
    mu = 0.0
    for j in range(n):
        mu += x[j]
    mu /= n
    var = 0.0
    for j in range(n):
        var += (x[j] - mu) * (x[j] - mu)
    rstd = 1.0 / math.sqrt(var / n + eps)
    for j in range(n):
        y[j] = (x[j] - mu) * rstd * w[j] + b[j] if has_bias else (x[j] - mu) * rstd * w[j]
    return rstd


@njit(**_INLINE)
def _advance(pos, pos2, b, L):  # pragma: no cover - compiled
    """Row b's position r in its mini-batch (chunk) of L tokens and whether this token ends it; pos2[b] = r + 1, or 0
    at the end (the test-time-memory rules' "pos")."""
    r = pos[b]
    done = r + 1 == L
    pos2[b] = 0 if done else r + 1
    return r, done


@njit(**_INLINE)
def _ttt_head_inputs(xr, pr, h, r, rope, inv_freq, lr_w, lr_b, lr_scale, q, k):  # pragma: no cover - compiled
    """Head h of a TTT token: q, k (K,) from the projection row xr = [q | k | v], rotated at r (the position in the
    mini-batch) when ``rope``; returns lr = lr_scale σ(lr_w[h] · pr + lr_b[h]), pr the layer's input row."""
    K, D = q.shape[0], pr.shape[0]
    for i in range(K):
        q[i], k[i] = xr[h * K + i], xr[D + h * K + i]
    if rope:
        _rotate_pair(q, k, r, inv_freq)
    z = lr_b[h]
    for j in range(D):
        z += lr_w[h, j] * pr[j]
    return lr_scale * _sigmoid(z)


@njit(**_INLINE)
def _ln_back(g, dy, w, rstd, dg):  # pragma: no cover - compiled
    """dg = LN'(g)ᵀ (dy ⊙ w) = (gx − mean gx − x̂ mean(gx x̂)) σ⁻¹, gx = dy ⊙ w, for LN_{w,·} over one head with 1/σ =
    ``rstd`` (rnnlab.ops.ttt ``_layer_norm_grad``); dg may be dy."""
    K = g.shape[0]
    mu = 0.0
    for j in range(K):
        mu += g[j]
    mu /= K
    m1, m2 = 0.0, 0.0
    for j in range(K):
        gx = dy[j] * w[j]
        m1 += gx
        m2 += gx * (g[j] - mu) * rstd
    m1 /= K
    m2 /= K
    for j in range(K):
        dg[j] = (dy[j] * w[j] - m1 - (g[j] - mu) * rstd * m2) * rstd


@njit(**_INLINE)
def _ttt_out_grad(g, k, v, w, b, eps, ln, dg):  # pragma: no cover - compiled
    """The TTT loss's gradient at the memory's last pre-activation g (K,): ln = LN_{w,b}(g), e = k + ln − v,
    dg = LN'(g)ᵀ (e ⊙ w)."""
    rstd = _ln_head(g, w, b, True, eps, ln)
    for j in range(g.shape[0]):
        dg[j] = k[j] + ln[j] - v[j]
    _ln_back(g, dg, w, rstd, dg)


@njit(**_INLINE)
def _ttt_update(W0, G, u_in, u_out, lr, t, done, Wn, Gn):  # pragma: no cover - compiled
    """One weight matrix of the TTT rule: Gn = G + lr u_in ⊗ u_out, Wn = W0 − τ Gn (the read's weights); the caller
    moves the anchor after the read."""
    for i in range(W0.shape[0]):
        a = lr * u_in[i]
        for j in range(W0.shape[1]):
            gv = G[i, j] + a * u_out[j]
            Gn[i, j] = gv
            Wn[i, j] = W0[i, j] - t * gv


@njit(**_INLINE)
def _ttt_settle(W0, Wn, Gn, done):  # pragma: no cover - compiled
    """After the read: at the mini-batch's end the anchor is the read's weights and the accumulator restarts;
    otherwise the anchor stays (Wn back to W0). Works on matrices and bias rows alike (flattened)."""
    w0, wn, gn = W0.reshape(W0.size), Wn.reshape(Wn.size), Gn.reshape(Gn.size)
    for i in range(wn.shape[0]):
        if done:
            gn[i] = 0.0
        else:
            wn[i] = w0[i]


@njit(**_KERNEL)
def ttt_linear_decode(proj, x, w1, g_w1, b1, g_b1, pos, lr_w, lr_b, tau, ln_w, ln_b, inv_freq, post_w, post_b, out, w1n, g_w1n,
                      b1n, g_b1n, pos2, qk, gz, lr_scale, rope, eps, post_eps, lo, hi):  # pragma: no cover - compiled
    """TTT-Linear's token (rnnlab.layers.ttt_linear, rnnlab.ops.ttt ``_TTT`` with the hand-written gradient), per row b:
    proj (B, 3D) = [q | k | v], x (B, D) the layer input; q, k rotated at r = pos[b] (the position in the mini-batch of
    b = len(tau)) when ``rope``; per head: lr = lr_scale σ(lr_w x + lr_b); g = k W0 + b0, the gradient of ½‖k + LN(g) −
    v‖² at the anchor W0 (δ = LN'(g)ᵀ e, u_W = k δᵀ, u_b = δ); G ← G + lr u; W = W0 − τ_r G; o = q + LN(q W + b);
    at the mini-batch's end (r = b − 1) W0 ← W, G ← 0, r ← 0. out (B, D) = LayerNorm_{post}(o) over all heads. New
    states w1n, g_w1n, b1n, g_b1n, pos2; scratch qk (B, 2K), gz (B, 3K)."""
    H, K = w1.shape[1], w1.shape[2]
    D = H * K
    L = tau.shape[0]
    one = np.ones(1, w1.dtype)
    for bi in range(lo, hi):
        xr, q, k, g = proj[bi], qk[bi, :K], qk[bi, K:], gz[bi]
        r, done = _advance(pos, pos2, bi, L)
        t = tau[r]
        ob = out[bi]
        for h in range(H):
            lr = _ttt_head_inputs(xr, x[bi], h, r, rope, inv_freq, lr_w, lr_b, lr_scale, q, k)
            gg, ln, dg = g[:K], g[K:2 * K], g[2 * K:]
            _matvec_t(w1[bi, h], k, b1[bi, h], True, gg)
            _ttt_out_grad(gg, k, xr[2 * D + h * K:2 * D + (h + 1) * K], ln_w[h], ln_b[h], eps, ln, dg)
            _ttt_update(b1[bi, h].reshape(1, K), g_b1[bi, h].reshape(1, K), one, dg, lr, t, done, b1n[bi, h].reshape(1, K),
                        g_b1n[bi, h].reshape(1, K))
            _ttt_update(w1[bi, h], g_w1[bi, h], k, dg, lr, t, done, w1n[bi, h], g_w1n[bi, h])
            _matvec_t(w1n[bi, h], q, b1n[bi, h], True, ln)  # the read: q W + b
            _ln_head(ln, ln_w[h], ln_b[h], True, eps, dg)
            for j in range(K):
                ob[h * K + j] = q[j] + dg[j]
            _ttt_settle(w1[bi, h], w1n[bi, h], g_w1n[bi, h], done)
            _ttt_settle(b1[bi, h], b1n[bi, h], g_b1n[bi, h], done)
        _ln_head(ob, post_w, post_b, True, post_eps, ob)


@njit(**_INLINE)
def _matvec_t(W, x, bias, has_bias, y):  # pragma: no cover - compiled
    """y = xᵀ W (+ bias): W (in, out) row-major (a memory's weight as the state holds it); four rows of W per pass
    over y (y loaded and stored once per four multiply-adds: 1.1-2.4x the row-at-a-time loop at memory shapes)."""
    n, m = W.shape
    for j in range(m):
        y[j] = bias[j] if has_bias else 0.0
    i = 0
    while i + 4 <= n:
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        w0, w1, w2, w3 = W[i], W[i + 1], W[i + 2], W[i + 3]
        for j in range(m):
            y[j] += x0 * w0[j] + x1 * w1[j] + x2 * w2[j] + x3 * w3[j]
        i += 4
    for i in range(i, n):
        xi, w0 = x[i], W[i]
        for j in range(m):
            y[j] += xi * w0[j]


@njit(**_INLINE)
def _titans_rows(proj, cq, ck, cv, wq, wk, wv, qc, kc, vc, cq2, ck2, cv2, pos, pos2, L, K):  # pragma: no cover - compiled
    """Every row's ``_conv_qkv_l2`` and position (a ``_heads`` kernel's serial part) -> whether each row ends its chunk."""
    done = np.empty(proj.shape[0], np.bool_)
    for bi in range(proj.shape[0]):
        _conv_qkv_l2(proj[bi], cq[bi], ck[bi], cv[bi], wq, wk, wv, qc[bi], kc[bi], vc[bi], cq2[bi], ck2[bi], cv2[bi], K)
        done[bi] = _advance(pos, pos2, bi, L)[1]
    return done


@njit(**_INLINE)
def _titans_gates(x, o, H, h, base_lr):  # pragma: no cover - compiled
    """Head h's gates from the pre-activations at x[o:o + 3H] (gate-major): θ = base_lr σ, η = σ, 1 − α = σ(−·)."""
    return base_lr * _sigmoid(x[o + h]), _sigmoid(x[o + H + h]), _sigmoid(-x[o + 2 * H + h])


@njit(**_INLINE)
def _clip(sq, max_norm):  # pragma: no cover - compiled
    """The per-token clip factor min(1, max_norm / ‖u‖) from ‖u‖² (1 when max_norm < 0: no clipping)."""
    return max_norm / math.sqrt(max(sq, max_norm * max_norm)) if max_norm >= 0.0 else 1.0


@njit(**_INLINE)
def _momentum_update(W0, M, S, u_in, u_out, theta, eta, keep, done, hold, Wn, Mn, Sn):  # pragma: no cover - compiled
    """One weight matrix of Titans' rule: Sn = η S − θ u_in ⊗ u_out, Mn = (1 − α) M + Sn; the anchor Wn = Mn at the
    chunk's end, else W0 (``_anchor``). The gates in the weights' dtype: float64 scalars would widen each product."""
    f = W0.dtype.type
    th, et, kp = f(theta), f(eta), f(keep)
    for i in range(W0.shape[0]):
        a = th * u_in[i]
        for j in range(W0.shape[1]):
            sv = et * S[i, j] - a * u_out[j]
            Sn[i, j] = sv
            Mn[i, j] = kp * M[i, j] + sv
    _anchor(W0, Mn, done, hold, Wn)


@njit(**_INLINE)
def _anchor(W0, Mn, done, hold, Wn):  # pragma: no cover - compiled
    """A test-time memory's anchor after the token: Mn at its chunk's end, else W0, which with ``hold`` (no row ends
    its chunk: ``decode.fused_step``'s held states) Wn already is (the same array: nothing written)."""
    if done:
        Wn[:] = Mn
    elif not hold:
        Wn[:] = W0


@njit(**_KERNEL)
def titans_linear_decode(proj, cq, ck, cv, w1, m1, s1, pos, wq, wk, wv, norm_w, out, cq2, ck2, cv2, w1n, m1n, s1n, pos2, qc, kc,
                         vc, e, base_lr, max_norm, L, eps, hold, lo, hi):  # pragma: no cover - compiled
    """Titans' token with a linear memory (rnnlab.layers.titans, memory_depth 1 without biases; rnnlab.ops.ttt
    ``_Titans`` with momentum), per row b: proj (B, ·) = [q | k | v (H·K each) | gate pre-activations (3H, gate-major) |
    g (H·K)]; q, k, v = SiLU(conv) (states cq, ck, cv; weights wq, wk, wv), q and k ℓ2-normalized per head; θ = base_lr
    σ(·), η = σ(·), 1 − α = σ(−·); the gradient of ‖k M0 − v‖² at the chunk's anchor M0 = w1 (u = k ⊗ 2e, clipped to
    ``max_norm`` when >= 0); S ← η S − θ u, M ← (1 − α) M + S; o = q M; at the chunk's end (r = L − 1) the anchor moves
    to M. out (B, H·K) = RMSNorm_head(o) ⊙ SiLU(g). New states cq2, ck2, cv2, w1n, m1n, s1n, pos2; scratch qc, kc, vc
    (B, H·K), e (B, K)."""
    H, K = w1.shape[1], w1.shape[2]
    E = H * K
    for bi in range(lo, hi):
        x, q, k, v, eb = proj[bi], qc[bi], kc[bi], vc[bi], e[bi]
        _conv_qkv_l2(x, cq[bi], ck[bi], cv[bi], wq, wk, wv, q, k, v, cq2[bi], ck2[bi], cv2[bi], K)
        r, done = _advance(pos, pos2, bi, L)
        for h in range(H):
            theta, eta, keep = _titans_gates(x, 3 * E, H, h, base_lr)
            kh, qh = k[h * K:(h + 1) * K], q[h * K:(h + 1) * K]
            _matvec_t(w1[bi, h], kh, eb, False, eb)
            sk, se = 0.0, 0.0
            for j in range(K):
                eb[j] = 2.0 * (eb[j] - v[h * K + j])  # δ = ∂‖k M0 − v‖²/∂(k M0) = 2e
                se += eb[j] * eb[j]
                sk += kh[j] * kh[j]
            c = _clip(sk * se, max_norm)  # ‖k ⊗ δ‖ = ‖k‖ ‖δ‖
            for j in range(K):
                eb[j] *= c
            _momentum_update(w1[bi, h], m1[bi, h], s1[bi, h], kh, eb, theta, eta, keep, done, hold, w1n[bi, h], m1n[bi, h],
                             s1n[bi, h])
            ob = out[bi, h * K:(h + 1) * K]
            _matvec_t(m1n[bi, h], qh, norm_w, False, ob)
            _rms_gate(ob, norm_w, eps, x[3 * E + 3 * H + h * K:3 * E + 3 * H + (h + 1) * K], 1, ob)


@njit(**_INLINE)
def _gelu_tanh_grad(x):  # pragma: no cover - compiled
    """d/dx of GELU's tanh form (rnnlab.ops.ttt ``_gelu_grad``)."""
    c = 0.7978845608028654
    t = math.tanh(c * (x + 0.044715 * x * x * x))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x)


@njit(**_INLINE)
def _gelu_row(h, a):  # pragma: no cover - compiled
    """a = GELU(h) (tanh form), a two-layer memory's hidden activation; returns ‖a‖²."""
    s = 0.0
    for f in range(h.shape[0]):
        a[f] = _gelu_tanh(h[f])
        s += a[f] * a[f]
    return s


@njit(**_INLINE)
def _hidden_grad(W2, h, d2, d1):  # pragma: no cover - compiled
    """d1 = (W2 d2) ⊙ GELU'(h): the loss gradient at a two-layer memory's hidden pre-activation h from d2 at its
    output; returns ‖d1‖²."""
    s1 = 0.0
    for f in range(h.shape[0]):
        sv = W2.dtype.type(0)  # float32 sums for float32 weights (a float64 accumulator widens each product)
        for j in range(d2.shape[0]):
            sv += W2[f, j] * d2[j]
        d1[f] = sv * _gelu_tanh_grad(h[f])
        s1 += d1[f] * d1[f]
    return s1


@njit(**_KERNEL)  # a call, not inlined (as ``_miras_head``)
def _ttt_mlp_head(xr, xb, w1, g_w1, b1, g_b1, w2, g_w2, b2, g_b2, lr_w, lr_b, ln_w, ln_b, inv_freq, ob, w1n, g_w1n, b1n, g_b1n, w2n,
                  g_w2n, b2n, g_b2n, qk, hz, gz, bi, h, r, t, done, lr_scale, rope, eps):  # pragma: no cover - compiled
    """Head h of row bi in ``ttt_mlp_decode`` (its scratch qk (2K,), hz (3F,), gz (3K,)): the four weights' update and
    the read, ob[head h] = q + LN(g(q; W)) (before the post-norm over the row)."""
    H, K, F = w1.shape[1], w1.shape[2], w1.shape[3]
    D = H * K
    one = np.ones(1, w1.dtype)
    q, k = qk[:K], qk[K:]
    h1, a, d1 = hz[:F], hz[F:2 * F], hz[2 * F:]
    gg, ln, dg = gz[:K], gz[K:2 * K], gz[2 * K:]
    lr = _ttt_head_inputs(xr, xb, h, r, rope, inv_freq, lr_w, lr_b, lr_scale, q, k)
    W1, W2 = w1[bi, h], w2[bi, h]
    _matvec_t(W1, k, b1[bi, h], True, h1)
    _gelu_row(h1, a)
    _matvec_t(W2, a, b2[bi, h], True, gg)
    _ttt_out_grad(gg, k, xr[2 * D + h * K:2 * D + (h + 1) * K], ln_w[h], ln_b[h], eps, ln, dg)
    _hidden_grad(W2, h1, dg, d1)
    _ttt_update(b2[bi, h].reshape(1, K), g_b2[bi, h].reshape(1, K), one, dg, lr, t, done, b2n[bi, h].reshape(1, K),
                g_b2n[bi, h].reshape(1, K))
    _ttt_update(W2, g_w2[bi, h], a, dg, lr, t, done, w2n[bi, h], g_w2n[bi, h])
    _ttt_update(b1[bi, h].reshape(1, F), g_b1[bi, h].reshape(1, F), one, d1, lr, t, done, b1n[bi, h].reshape(1, F),
                g_b1n[bi, h].reshape(1, F))
    _ttt_update(W1, g_w1[bi, h], k, d1, lr, t, done, w1n[bi, h], g_w1n[bi, h])
    _matvec_t(w1n[bi, h], q, b1n[bi, h], True, h1)  # the read: GELU(q W1 + b1) W2 + b2
    _gelu_row(h1, a)
    _matvec_t(w2n[bi, h], a, b2n[bi, h], True, ln)
    _ln_head(ln, ln_w[h], ln_b[h], True, eps, dg)
    for j in range(K):
        ob[h * K + j] = q[j] + dg[j]
    for Wo, Wnn, Gnn in ((w1[bi, h], w1n[bi, h], g_w1n[bi, h]), (w2[bi, h], w2n[bi, h], g_w2n[bi, h])):
        _ttt_settle(Wo, Wnn, Gnn, done)
    _ttt_settle(b1[bi, h], b1n[bi, h], g_b1n[bi, h], done)
    _ttt_settle(b2[bi, h], b2n[bi, h], g_b2n[bi, h], done)


@njit(**_KERNEL)
def ttt_mlp_decode(proj, x, w1, g_w1, b1, g_b1, w2, g_w2, b2, g_b2, pos, lr_w, lr_b, tau, ln_w, ln_b, inv_freq, post_w, post_b, out,
                   w1n, g_w1n, b1n, g_b1n, w2n, g_w2n, b2n, g_b2n, pos2, qk, hz, gz, lr_scale, rope, eps, post_eps, lo,
                   hi):  # pragma: no cover - compiled
    """TTT-MLP's token (rnnlab.layers.ttt_mlp): ``ttt_linear_decode`` with the memory g(x) = GELU(x W1 + b1) W2 + b2
    (hidden F, GELU's tanh form): the gradient δ2 at g as there, δ1 = (W2 δ2) ⊙ GELU'(x W1 + b1); the four weights
    updated by the rule (u_W1 = k ⊗ δ1, u_b1 = δ1, u_W2 = GELU(k W1 + b1) ⊗ δ2, u_b2 = δ2); o = q + LN(g(q; W)). Scratch
    per head: qk (B, H·2K), hz (B, H·3F), gz (B, H·3K)."""
    H, K, F = w1.shape[1], w1.shape[2], w1.shape[3]
    L = tau.shape[0]
    for bi in range(lo, hi):
        r, done = _advance(pos, pos2, bi, L)
        for h in range(H):
            _ttt_mlp_head(proj[bi], x[bi], w1, g_w1, b1, g_b1, w2, g_w2, b2, g_b2, lr_w, lr_b, ln_w, ln_b, inv_freq, out[bi], w1n,
                          g_w1n, b1n, g_b1n, w2n, g_w2n, b2n, g_b2n, qk[bi, 2 * h * K:2 * (h + 1) * K], hz[bi, 3 * h * F:3 * (h + 1) * F],
                          gz[bi, 3 * h * K:3 * (h + 1) * K], bi, h, r, tau[r], done, lr_scale, rope, eps)
        _ln_head(out[bi], post_w, post_b, True, post_eps, out[bi])


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def ttt_mlp_decode_heads(proj, x, w1, g_w1, b1, g_b1, w2, g_w2, b2, g_b2, pos, lr_w, lr_b, tau, ln_w, ln_b, inv_freq, post_w, post_b,
                         out, w1n, g_w1n, b1n, g_b1n, w2n, g_w2n, b2n, g_b2n, pos2, qk, hz, gz, lr_scale, rope, eps,
                         post_eps):  # pragma: no cover - compiled
    """``ttt_mlp_decode`` of all rows with the (row, head) units over numba's threads; positions first, the rows'
    post-norms after."""
    B, H, K, F = proj.shape[0], w1.shape[1], w1.shape[2], w1.shape[3]
    L = tau.shape[0]
    r = np.empty(B, np.int64)
    done = np.empty(B, np.bool_)
    for bi in range(B):
        r[bi], done[bi] = _advance(pos, pos2, bi, L)
    for u in prange(B * H):
        bi, h = u // H, u % H
        _ttt_mlp_head(proj[bi], x[bi], w1, g_w1, b1, g_b1, w2, g_w2, b2, g_b2, lr_w, lr_b, ln_w, ln_b, inv_freq, out[bi], w1n,
                      g_w1n, b1n, g_b1n, w2n, g_w2n, b2n, g_b2n, qk[bi, 2 * h * K:2 * (h + 1) * K], hz[bi, 3 * h * F:3 * (h + 1) * F],
                      gz[bi, 3 * h * K:3 * (h + 1) * K], bi, h, r[bi], tau[r[bi]], done[bi], lr_scale, rope, eps)
    for bi in range(B):
        _ln_head(out[bi], post_w, post_b, True, post_eps, out[bi])


@njit(**_INLINE)
def _titans_mlp_head(x, q, k, v, w1, m1, s1, w2, m2, s2, norm_w, out, w1n, m1n, s1n, w2n, m2n, s2n, eb, hz, bi, h, done, base_lr,
                     max_norm, eps, hold):  # pragma: no cover - compiled
    """Head h of row bi in ``titans_mlp_decode`` (its scratch eb (K,), hz (3F,)): the rule's update of both weights and
    the read, out[bi, head h] = RMSNorm(M_t(q)) ⊙ SiLU(g)."""
    H, K, F = w1.shape[1], w1.shape[2], w1.shape[3]
    E = H * K
    h1, a, d1 = hz[:F], hz[F:2 * F], hz[2 * F:]
    theta, eta, keep = _titans_gates(x, 3 * E, H, h, base_lr)
    kh, qh = k[h * K:(h + 1) * K], q[h * K:(h + 1) * K]
    W1, W2 = w1[bi, h], w2[bi, h]
    _matvec_t(W1, kh, h1, False, h1)
    sa = _gelu_row(h1, a)
    _matvec_t(W2, a, eb, False, eb)
    se, sk = 0.0, 0.0
    for j in range(K):
        eb[j] = 2.0 * (eb[j] - v[h * K + j])
        se += eb[j] * eb[j]
        sk += kh[j] * kh[j]
    c = _clip(sk * _hidden_grad(W2, h1, eb, d1) + sa * se, max_norm)
    for j in range(K):
        eb[j] *= c
    for f in range(F):
        d1[f] *= c
    _momentum_update(W2, m2[bi, h], s2[bi, h], a, eb, theta, eta, keep, done, hold, w2n[bi, h], m2n[bi, h], s2n[bi, h])
    _momentum_update(W1, m1[bi, h], s1[bi, h], kh, d1, theta, eta, keep, done, hold, w1n[bi, h], m1n[bi, h], s1n[bi, h])
    _matvec_t(m1n[bi, h], qh, h1, False, h1)  # the read: GELU(q M1) M2
    _gelu_row(h1, a)
    ob = out[bi, h * K:(h + 1) * K]
    _matvec_t(m2n[bi, h], a, ob, False, ob)
    _rms_gate(ob, norm_w, eps, x[3 * E + 3 * H + h * K:3 * E + 3 * H + (h + 1) * K], 1, ob)


@njit(**_KERNEL)
def titans_mlp_decode(proj, cq, ck, cv, w1, m1, s1, w2, m2, s2, pos, wq, wk, wv, norm_w, out, cq2, ck2, cv2, w1n, m1n, s1n, w2n,
                      m2n, s2n, pos2, qc, kc, vc, e, hz, base_lr, max_norm, L, eps, hold, lo, hi):  # pragma: no cover - compiled
    """``titans_linear_decode`` with the deep memory M(x) = GELU(x W1) W2 (hidden F, GELU's tanh form, no biases): the
    gradient of ‖M0(k) − v‖² at the anchor (δ2 = 2e, δ1 = (W2 δ2) ⊙ GELU'(k W1); u_W1 = k ⊗ δ1, u_W2 = GELU(k W1) ⊗ δ2;
    clipped jointly: ‖u‖² = ‖k‖²‖δ1‖² + ‖a‖²‖δ2‖²), each weight by the momentum rule, o = M_t(q). Scratch as there
    but per head: e (B, H·K), hz (B, H·3F)."""
    H, K, F = w1.shape[1], w1.shape[2], w1.shape[3]
    for bi in range(lo, hi):
        x, q, k, v = proj[bi], qc[bi], kc[bi], vc[bi]
        _conv_qkv_l2(x, cq[bi], ck[bi], cv[bi], wq, wk, wv, q, k, v, cq2[bi], ck2[bi], cv2[bi], K)
        r, done = _advance(pos, pos2, bi, L)
        for h in range(H):
            _titans_mlp_head(x, q, k, v, w1, m1, s1, w2, m2, s2, norm_w, out, w1n, m1n, s1n, w2n, m2n, s2n, e[bi, h * K:(h + 1) * K],
                             hz[bi, 3 * h * F:3 * (h + 1) * F], bi, h, done, base_lr, max_norm, eps, hold)


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def titans_mlp_decode_heads(proj, cq, ck, cv, w1, m1, s1, w2, m2, s2, pos, wq, wk, wv, norm_w, out, cq2, ck2, cv2, w1n, m1n, s1n,
                            w2n, m2n, s2n, pos2, qc, kc, vc, e, hz, base_lr, max_norm, L, eps, hold):  # pragma: no cover - compiled
    """``titans_mlp_decode`` of all rows with the (row, head) units over numba's threads (a few rows of a large memory:
    one row's heads would otherwise run on one core); the rows' convs and positions first, on the calling thread."""
    B, H, K = proj.shape[0], w1.shape[1], w1.shape[2]
    F = w1.shape[3]
    done = _titans_rows(proj, cq, ck, cv, wq, wk, wv, qc, kc, vc, cq2, ck2, cv2, pos, pos2, L, K)
    for u in prange(B * H):
        bi, h = u // H, u % H
        _titans_mlp_head(proj[bi], qc[bi], kc[bi], vc[bi], w1, m1, s1, w2, m2, s2, norm_w, out, w1n, m1n, s1n, w2n, m2n, s2n,
                         e[bi, h * K:(h + 1) * K], hz[bi, 3 * h * F:3 * (h + 1) * F], bi, h, done[bi], base_lr, max_norm, eps,
                         hold)


@njit(**_INLINE)
def _col_softmax(Z, W, cm, cs, ib, fast):  # pragma: no cover - compiled
    """W = the softmax of Z (n, m) over its rows, per column (Memora's weights from logits, rnnlab.ops.ttt
    ``column_softmax``); scratch cm, cs (m,), ib an int32 row of m; ``fast``: float32 exps by exp_row_f32."""
    n, m = Z.shape
    for j in range(m):
        cm[j] = Z[0, j]
        cs[j] = 0.0
    for i in range(1, n):
        for j in range(m):
            cm[j] = max(cm[j], Z[i, j])
    for i in range(n):
        w = W[i]
        for j in range(m):
            w[j] = Z[i, j] - cm[j]
        if fast:
            exp_row_f32(w, ib, m, -87.0)
        else:
            for j in range(m):
                w[j] = math.exp(w[j])
        for j in range(m):
            cs[j] += w[j]
    for j in range(m):
        cs[j] = 1.0 / cs[j]
    for i in range(n):
        for j in range(m):
            W[i, j] *= cs[j]


@njit(**_INLINE)
def _q_norm(W, q, tiny):  # pragma: no cover - compiled
    """‖W‖_q, W scaled by its largest entry first (rnnlab.ops.ttt ``_Titans._norm``); an integer q by products.
    Moneta's q = 4 on float32 entries in one pass: their fourth powers cannot overflow or underflow float64."""
    w = W.reshape(W.size)
    if q == 4.0 and w.itemsize == 4:
        s4 = 0.0
        for i in range(w.shape[0]):
            a = np.float64(w[i])
            a *= a
            s4 += a * a
        return s4 ** 0.25
    mx = tiny
    for i in range(w.shape[0]):
        mx = max(mx, abs(w[i]))
    s, qi, inv = 0.0, int(q), 1.0 / mx
    if q == 4.0:  # Moneta's default, vectorizable
        for i in range(w.shape[0]):
            a = w[i] * inv
            a *= a
            s += a * a
    elif qi == q:
        for i in range(w.shape[0]):
            s += (abs(w[i]) * inv) ** qi
    else:
        for i in range(w.shape[0]):
            s += (abs(w[i]) * inv) ** q
    return mx * s ** (1.0 / q)


@njit(**_INLINE)
def _loss_grad(e, loss, a, p, tiny):  # pragma: no cover - compiled
    """e (the memory's error f(k) − v) -> ∂ℓ/∂e in place (rnnlab.ops.ttt ``LOSSES``): loss 0 ‖e‖² (2e), 1 the Huber
    function of ‖e‖₂ (e · min(1, a/‖e‖₂)), 2 Huber per sign (e while ‖e‖₂ <= a, else a · sign(e)), 3 ‖e‖_p^p
    (p e |e|^{p−2})."""
    n = e.shape[0]
    if loss == 0:
        for j in range(n):
            e[j] *= 2.0
    elif loss == 3:
        for j in range(n):
            e[j] = p * e[j] * abs(e[j]) ** (p - 2.0)
    else:
        s = 0.0
        for j in range(n):
            s += e[j] * e[j]
        if loss == 1:
            c = a / math.sqrt(max(max(s, a * a), tiny))
            for j in range(n):
                e[j] *= c
        elif s > a * a:
            for j in range(n):
                e[j] = a * np.sign(e[j])


@njit(**_INLINE)
def _retain_update(M, u_in, u_out, theta, keep, Mn):  # pragma: no cover - compiled
    """One weight matrix of the Miras rules (Titans' without momentum): Mn = α M − θ u_in ⊗ u_out (the gates in the
    weights' dtype: float64 scalars would widen each product)."""
    th, kp = M.dtype.type(theta), M.dtype.type(keep)
    for i in range(M.shape[0]):
        c = th * u_in[i]
        for j in range(M.shape[1]):
            Mn[i, j] = kp * M[i, j] - c * u_out[j]


@njit(**_KERNEL)  # a call, not inlined: numba's inliner refuses this body
def _miras_head(x, q, k, v, w1, m1, w2, m2, ln_w, ln_b, norm_w, out, w1n, m1n, w2n, m2n, e, hz, sm, bi, h, done, base_lr, max_norm,
                eps, n_gates, loss, p, delta_scale, q_norm, softmax, hold):  # pragma: no cover - compiled
    """Head h of row bi in ``miras_decode`` (its scratch e (3K,), hz (3F,), sm (2KF + 2 max(K, F),))."""
    H, K, F = w1.shape[1], w1.shape[2], w1.shape[3]
    E = H * K
    og = 3 * E + n_gates * H
    tiny = np.finfo(w1.dtype).tiny
    fast = w1.itemsize == 4  # float32: exps by exp_row_f32
    ib = np.empty(max(K, F), np.int32)
    g, ln, dg = e[:K], e[K:2 * K], e[2 * K:]
    h1, a, d1 = hz[:F], hz[F:2 * F], hz[2 * F:]
    S1, S2 = sm[:K * F].reshape(K, F), sm[K * F:2 * K * F].reshape(F, K)
    cm, cs = sm[2 * K * F:2 * K * F + max(K, F)], sm[2 * K * F + max(K, F):]
    theta, keep = base_lr * _sigmoid(x[3 * E + h]), _sigmoid(x[3 * E + H + h])
    delta = delta_scale * _softplus(x[3 * E + 2 * H + h]) if n_gates > 2 else 0.0
    kh, qh, vh = k[h * K:(h + 1) * K], q[h * K:(h + 1) * K], v[h * K:(h + 1) * K]
    A1, A2 = w1[bi, h], w2[bi, h]
    if softmax:
        _col_softmax(w1[bi, h], S1, cm, cs, ib, fast)
        _col_softmax(w2[bi, h], S2, cm, cs, ib, fast)
        A1, A2 = S1, S2
    _matvec_t(A1, kh, h1, False, h1)  # the key pass at the anchor
    sa = _gelu_row(h1, a)
    _matvec_t(A2, a, g, False, g)
    rstd = _ln_head(g, ln_w[h], ln_b[h], True, eps, ln)
    for j in range(K):
        dg[j] = kh[j] + ln[j] - vh[j]
    _loss_grad(dg, loss, delta, p, tiny)
    _ln_back(g, dg, ln_w[h], rstd, dg)
    s2, sk = 0.0, 0.0
    for j in range(K):
        s2 += dg[j] * dg[j]
        sk += kh[j] * kh[j]
    c1 = c2 = _clip(sk * _hidden_grad(A2, h1, dg, d1) + sa * s2, max_norm)
    nu1 = nu2 = 1.0
    if q_norm > 0.0:
        nu1 = _q_norm(w1[bi, h], q_norm, tiny) ** ((q_norm - 2.0) / (3.0 - q_norm))
        nu2 = _q_norm(w2[bi, h], q_norm, tiny) ** ((q_norm - 2.0) / (3.0 - q_norm))
        c1, c2 = c1 / nu1, c2 / nu2
    for j in range(K):
        dg[j] *= c2
    for f in range(F):
        d1[f] *= c1
    _retain_update(m1[bi, h], kh, d1, theta, keep, m1n[bi, h])
    _retain_update(m2[bi, h], a, dg, theta, keep, m2n[bi, h])
    if q_norm > 0.0 and done:  # the chunk's last token: the exact normalization
        for Mn, nu in ((m1n[bi, h], nu1), (m2n[bi, h], nu2)):
            sc = nu ** (3.0 - q_norm) / _q_norm(Mn, q_norm, tiny) ** (q_norm - 2.0)
            for i in range(Mn.shape[0]):
                for j in range(Mn.shape[1]):
                    Mn[i, j] *= sc
    _anchor(w1[bi, h], m1n[bi, h], done, hold, w1n[bi, h])
    _anchor(w2[bi, h], m2n[bi, h], done, hold, w2n[bi, h])
    R1, R2 = m1n[bi, h], m2n[bi, h]
    if softmax:
        _col_softmax(m1n[bi, h], S1, cm, cs, ib, fast)
        _col_softmax(m2n[bi, h], S2, cm, cs, ib, fast)
        R1, R2 = S1, S2
    _matvec_t(R1, qh, h1, False, h1)  # the read: q + LN(GELU(q W1) W2)
    _gelu_row(h1, a)
    _matvec_t(R2, a, g, False, g)
    _ln_head(g, ln_w[h], ln_b[h], True, eps, g)
    ob = out[bi, h * K:(h + 1) * K]
    for j in range(K):
        ob[j] = qh[j] + g[j]
    _rms_gate(ob, norm_w, eps, x[og + h * K:og + (h + 1) * K], 2, ob)


@njit(**_KERNEL)
def miras_decode(proj, cq, ck, cv, w1, m1, w2, m2, pos, wq, wk, wv, ln_w, ln_b, norm_w, out, cq2, ck2, cv2, w1n, m1n, w2n, m2n, pos2,
                 qc, kc, vc, e, hz, sm, base_lr, max_norm, L, eps, n_gates, loss, p, delta_scale, q_norm, softmax, hold, lo,
                 hi):  # pragma: no cover - compiled
    """The Miras mixers' token (rnnlab.layers._miras: Yaad, Moneta, Memora; rnnlab.ops.ttt ``_Titans`` without
    momentum), per row b: proj (B, ·) = [q | k | v (H·K each) | gate pre-activations (n_gates·H, gate-major) | g
    (H·K)]; q, k, v as Titans'; θ = base_lr σ(·), α = σ(·), Yaad's δ = delta_scale softplus(·) (n_gates 3). The memory
    f(x) = x + LN_{γ,β}(GELU(x W1) W2) (hidden F, no biases) at the chunk's anchor (Memora, ``softmax``: W = the
    column softmax of the anchor's logits); the inner loss's gradient (``loss``: ``_loss_grad``, δ, p) through the
    LN and the MLP, clipped jointly as Titans'; Moneta (``q_norm`` > 0): each layer's gradient over ν = ‖W_l‖_q^{(q−2)/
    (3−q)} of the anchor; M ← α M − θ u; Moneta at the chunk's end: M ← M ν^{3−q} / ‖M‖_q^{q−2}; o = f(q; M) (Memora:
    through the softmax of M); the anchor moves to M at the chunk's end. out (B, H·K) = RMSNorm_head(o) ⊙ σ(g). New
    states cq2, ck2, cv2, w1n, m1n, w2n, m2n, pos2; scratch qc, kc, vc (B, H·K), and per head e (B, H·3K), hz (B, H·3F), sm (B,
    H·(2KF + 2 max(K, F))) (Memora's weights)."""
    H, K, F = w1.shape[1], w1.shape[2], w1.shape[3]
    ne, nz, ns = 3 * K, 3 * F, 2 * K * F + 2 * max(K, F)
    for bi in range(lo, hi):
        x, q, k, v = proj[bi], qc[bi], kc[bi], vc[bi]
        _conv_qkv_l2(x, cq[bi], ck[bi], cv[bi], wq, wk, wv, q, k, v, cq2[bi], ck2[bi], cv2[bi], K)
        r, done = _advance(pos, pos2, bi, L)
        for h in range(H):
            _miras_head(x, q, k, v, w1, m1, w2, m2, ln_w, ln_b, norm_w, out, w1n, m1n, w2n, m2n, e[bi, h * ne:(h + 1) * ne],
                        hz[bi, h * nz:(h + 1) * nz], sm[bi, h * ns:(h + 1) * ns], bi, h, done, base_lr, max_norm, eps, n_gates, loss, p,
                        delta_scale, q_norm, softmax, hold)


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def miras_decode_heads(proj, cq, ck, cv, w1, m1, w2, m2, pos, wq, wk, wv, ln_w, ln_b, norm_w, out, cq2, ck2, cv2, w1n, m1n, w2n, m2n,
                       pos2, qc, kc, vc, e, hz, sm, base_lr, max_norm, L, eps, n_gates, loss, p, delta_scale, q_norm,
                       softmax, hold):  # pragma: no cover - compiled
    """``miras_decode`` of all rows with the (row, head) units over numba's threads; the rows' convs and positions first."""
    B, H, K, F = proj.shape[0], w1.shape[1], w1.shape[2], w1.shape[3]
    ne, nz, ns = 3 * K, 3 * F, 2 * K * F + 2 * max(K, F)
    done = _titans_rows(proj, cq, ck, cv, wq, wk, wv, qc, kc, vc, cq2, ck2, cv2, pos, pos2, L, K)
    for u in prange(B * H):
        bi, h = u // H, u % H
        _miras_head(proj[bi], qc[bi], kc[bi], vc[bi], w1, m1, w2, m2, ln_w, ln_b, norm_w, out, w1n, m1n, w2n, m2n,
                    e[bi, h * ne:(h + 1) * ne], hz[bi, h * nz:(h + 1) * nz], sm[bi, h * ns:(h + 1) * ns], bi, h, done[bi], base_lr,
                    max_norm, eps, n_gates, loss, p, delta_scale, q_norm, softmax, hold)


@njit(**_INLINE)
def _lact_row(qkv, x):  # pragma: no cover - compiled
    """x = SiLU(qkv): a LaCT row's q, k, v before their per-head ℓ2 norms."""
    for i in range(qkv.shape[0]):
        x[i] = _silu(qkv[i])


@njit(**_KERNEL)  # a call, not inlined (as ``_miras_head``)
def _lact_head(x, lrp, w1, w2, w3, g1, g2, g3, mo1, mo2, mo3, norm_w, out, w1n, w2n, w3n, g1n, g2n, g3n, mo1n, mo2n, mo3n, hz, bi, h,
               done, base_lr, beta, eps, hold):  # pragma: no cover - compiled
    """Head h of row bi in ``lact_decode`` (x the row's SiLU'd projection, its scratch hz (5F,))."""
    H, K, F = w1.shape[1], w1.shape[2], w1.shape[3]
    D = H * K
    f32 = w1.dtype.type  # the weights' dtype for every product (float64 scalars would widen each one)
    z1, b3, s, dh, hb = hz[:F], hz[F:2 * F], hz[2 * F:3 * F], hz[3 * F:4 * F], hz[4 * F:]
    _l2norm(x, h * K, K, 1e-6)
    _l2norm(x, D + h * K, K, 1e-6)
    q, k, v = x[h * K:(h + 1) * K], x[D + h * K:D + (h + 1) * K], x[2 * D + h * K:2 * D + (h + 1) * K]
    W1, W2, W3 = w1[bi, h], w2[bi, h], w3[bi, h]
    _matvec_t(W1, q, z1, False, z1)  # the read: (SiLU(q W1) ⊙ (q W3)) W2
    _matvec_t(W3, q, b3, False, b3)
    for f in range(F):
        hb[f] = _silu(z1[f]) * b3[f]
    ob = out[bi, h * K:(h + 1) * K]
    _matvec_t(W2, hb, ob, False, ob)
    _rms_gate(ob, norm_w, eps, ob, 0, ob)
    lr = f32(base_lr * _softplus(lrp[bi, h]))
    _matvec_t(W1, k, z1, False, z1)  # the gradient at k (rnnlab.ops.lact ``_grad_manual``), δ = −lr v
    _matvec_t(W3, k, b3, False, b3)
    for f in range(F):
        sv = f32(0.0)
        for j in range(K):
            sv += W2[f, j] * v[j]
        dh[f] = -lr * sv
        s[f] = _sigmoid(z1[f])
        hb[f] = z1[f] * s[f] * b3[f]  # u_W2 = (SiLU(z1) ⊙ b) ⊗ δ
    for f in range(F):
        sf = s[f]
        s[f] = dh[f] * b3[f] * sf * (1.0 + z1[f] * (1.0 - sf))  # u_W1 = k ⊗ (dh ⊙ b ⊙ SiLU'(z1))
        b3[f] = dh[f] * z1[f] * sf                               # u_W3 = k ⊗ (dh ⊙ SiLU(z1))
    for Gm, Gn, u_in, u_out, c in ((g1[bi, h], g1n[bi, h], k, s, f32(1.0)), (g3[bi, h], g3n[bi, h], k, b3, f32(1.0)),
                                   (g2[bi, h], g2n[bi, h], hb, v, -lr)):
        for i in range(Gm.shape[0]):
            a = c * u_in[i]
            for j in range(Gm.shape[1]):
                Gn[i, j] = Gm[i, j] + a * u_out[j]
    for Wo, Gn, Mo, Wn, Mn in ((W1, g1n[bi, h], mo1[bi, h], w1n[bi, h], mo1n[bi, h]),
                               (W2, g2n[bi, h], mo2[bi, h], w2n[bi, h], mo2n[bi, h]),
                               (W3, g3n[bi, h], mo3[bi, h], w3n[bi, h], mo3n[bi, h])):
        if not done:  # the weights and momentum stay (with ``hold``, Wn and Mn are Wo and Mo: ``_anchor``)
            if not hold:
                Wn[:] = Wo
                Mn[:] = Mo
            continue
        n_in, n_out = Wo.shape
        bt = f32(beta)
        for i in range(n_in):  # M ← β M + G, W − M
            for j in range(n_out):
                m = bt * Mo[i, j] + Gn[i, j] if beta != 0.0 else Gn[i, j]
                Mn[i, j] = m
                Wn[i, j] = Wo[i, j] - m
                Gn[i, j] = 0.0
        for j in range(n_out):  # every column keeps its norm
            so, sn = 0.0, 0.0
            for i in range(n_in):
                so += Wo[i, j] * Wo[i, j]
                sn += Wn[i, j] * Wn[i, j]
            c = math.sqrt(so) / max(math.sqrt(sn), 1e-12)
            for i in range(n_in):
                Wn[i, j] *= c


@njit(**_KERNEL)
def lact_decode(qkv, lrp, w1, w2, w3, g1, g2, g3, mo1, mo2, mo3, pos, norm_w, out, w1n, w2n, w3n, g1n, g2n, g3n, mo1n, mo2n, mo3n,
                pos2, xs, hz, base_lr, beta, L, eps, hold, lo, hi):  # pragma: no cover - compiled
    """LaCT's fast-weight token (rnnlab.layers.lact, rnnlab.ops.lact ``fused_recurrent_lact`` without Newton–Schulz),
    per row b: qkv (B, 3D) the projection before SiLU, lrp (B, H) the rate's pre-activation; q, k, v = SiLU(·) per
    head, q and k ℓ2-normalized, lr = base_lr softplus(lrp); o = (SiLU(q W1) ⊙ (q W3)) W2 with the weights of the
    chunks before (apply, then update); the token's gradient of −lr f_W(k) · v by hand added to G; at the chunk's end
    (r = L − 1) M ← β M + G, W ← W − M with every column's norm kept, G ← 0. out (B, D) = RMSNorm_head(o). New states
    w*n, g*n, mo*n, pos2; scratch xs (B, 3D), hz (B, H·5F) (per head)."""
    H, F = w1.shape[1], w1.shape[3]
    for bi in range(lo, hi):
        _lact_row(qkv[bi], xs[bi])
        r, done = _advance(pos, pos2, bi, L)
        for h in range(H):
            _lact_head(xs[bi], lrp, w1, w2, w3, g1, g2, g3, mo1, mo2, mo3, norm_w, out, w1n, w2n, w3n, g1n, g2n, g3n, mo1n, mo2n, mo3n,
                       hz[bi, 5 * h * F:5 * (h + 1) * F], bi, h, done, base_lr, beta, eps, hold)


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def lact_decode_heads(qkv, lrp, w1, w2, w3, g1, g2, g3, mo1, mo2, mo3, pos, norm_w, out, w1n, w2n, w3n, g1n, g2n, g3n, mo1n, mo2n,
                      mo3n, pos2, xs, hz, base_lr, beta, L, eps, hold):  # pragma: no cover - compiled
    """``lact_decode`` of all rows with the (row, head) units over numba's threads; the rows' SiLU and positions first."""
    B, H, F = qkv.shape[0], w1.shape[1], w1.shape[3]
    done = np.empty(B, np.bool_)
    for bi in range(B):
        _lact_row(qkv[bi], xs[bi])
        done[bi] = _advance(pos, pos2, bi, L)[1]
    for u in prange(B * H):
        bi, h = u // H, u % H
        _lact_head(xs[bi], lrp, w1, w2, w3, g1, g2, g3, mo1, mo2, mo3, norm_w, out, w1n, w2n, w3n, g1n, g2n, g3n, mo1n, mo2n, mo3n,
                   hz[bi, 5 * h * F:5 * (h + 1) * F], bi, h, done[bi], base_lr, beta, eps, hold)


@njit(**_INLINE)
def _log_linear_head(S, S2, b, h, p, qh, kh, vh, a, bt, lam, scale, has_beta, sv, wv, ob):  # pragma: no cover - compiled
    """Head h of row b at position p (tokens before this one) of the log-linear levels (``log_linear_decode``): q, k
    (K,), v (V,), a = e^g, bt = β (1 without the delta rule), lam (≥ n) the head's level weights; out ob (V,), the new
    levels into S2; scratch sv, wv (V,)."""
    n, K, V = S.shape[1], S.shape[3], S.shape[4]
    f32 = S.dtype.type  # the state's dtype for every product (float64 scalars would widen each one)
    p1 = p + 1
    m = 0
    while (p1 >> m) & 1 == 0:
        m += 1
    bt, a = f32(bt), f32(a)
    qk = f32(0.0)
    for i in range(K):
        qk += qh[i] * kh[i]
    c0 = f32(lam[0] * scale * qk * bt)
    tgt = S2[b, n - m - 1, h]
    for j in range(V):
        ob[j] = c0 * vh[j]
    for i in range(K):
        ki = bt * kh[i]
        for j in range(V):
            tgt[i, j] = ki * vh[j]
    for lv in range(1, n + 1):
        if lv == m + 1:  # the carry's target (empty before it: bit m of p is clear)
            continue
        src, dst = S[b, n - lv, h], S2[b, n - lv, h]
        if (p >> (lv - 1)) & 1 == 0:
            dst[:] = 0.0
            continue
        cl = f32(lam[lv] * scale * a)
        for j in range(V):
            sv[j] = 0.0
            wv[j] = 0.0
        for i in range(K):  # kᵀ S and qᵀ S
            ki, qi = kh[i], qh[i]
            for j in range(V):
                sv[j] += ki * src[i, j]
                wv[j] += qi * src[i, j]
        for j in range(V):
            ob[j] += cl * (wv[j] - bt * qk * sv[j]) if has_beta else cl * wv[j]
        into = tgt if lv - 1 < m else dst
        for i in range(K):
            c = bt * kh[i] if has_beta else f32(0.0)
            for j in range(V):
                s_new = a * (src[i, j] - c * sv[j])
                if lv - 1 < m:
                    into[i, j] += s_new
                else:
                    into[i, j] = s_new
        if lv - 1 < m:
            dst[:] = 0.0


@njit(**_KERNEL)
def log_linear_decode(q, k, v, g, beta, lam, S, pos, out, S2, pos2, sw, scale, has_g, has_beta, lo,
                      hi):  # pragma: no cover - compiled
    """One token of the log-linear recurrences (rnnlab.ops.log_linear ``_fused``) for the (row, head) units u = b·H + h
    in [lo, hi): q, k (B, H·K), v (B, H·V), g, beta (B, H) (used when ``has_g`` / ``has_beta``), lam (B, H·NL); S (B, n,
    H, K, V) the level states in the stored layout (level ℓ at index n − ℓ; held iff bit ℓ − 1 of pos is set, the
    others read as zero), n already the levels after this token. Every held level S ← e^g (S − β k (kᵀ S)) [or e^g S];
    the token is level 0 (β k vᵀ); out (B, H·V) = Σ_ℓ λ_ℓ S_ℓᵀ (scale q); then the binary counter's carry to pos + 1
    (m = its trailing zeros): levels 0..m merge into level m + 1, the levels above stay. New states S2, pos2; scratch
    sw (B·H, 2V)."""
    H, K, V = S.shape[2], S.shape[3], S.shape[4]
    NL = lam.shape[1] // H
    for unit in range(lo, hi):
        b, h = unit // H, unit % H
        if h == 0:
            pos2[b] = pos[b] + 1
        _log_linear_head(S, S2, b, h, pos[b], q[b, h * K:(h + 1) * K], k[b, h * K:(h + 1) * K], v[b, h * V:(h + 1) * V],
                         math.exp(g[b, h]) if has_g else 1.0, beta[b, h] if has_beta else 1.0, lam[b, h * NL:(h + 1) * NL], scale,
                         has_beta, sw[unit, :V], sw[unit, V:], out[b, h * V:(h + 1) * V])


@njit(**_INLINE)
def _log_linear_delta_head(proj, S, S2, pos, negA, dt_bias, L, norm_w, out, qc, kc, vc, lam, sw, b, h, eps,
                           beta_scale):  # pragma: no cover - compiled
    """Head h of row b in ``log_linear_delta_decode`` (lam (NL,), sw (3V,) its scratch)."""
    H, K, V = S.shape[2], S.shape[3], S.shape[4]
    NL = L.shape[1]
    x, QK, VV = proj[b], H * K, H * V
    ob, oa, og = 2 * QK + VV, 2 * QK + VV + H, 2 * QK + VV + 2 * H
    od = og + VV
    bt = beta_scale * _sigmoid(x[ob + h])
    a = math.exp(negA[h] * _softplus(x[oa + h] + dt_bias[h]))
    for lv in range(NL):
        lam[lv] = _softplus(L[h, lv] * x[od + h * NL + lv])
    o = sw[2 * V:]
    _log_linear_head(S, S2, b, h, pos[b], qc[b, h * K:(h + 1) * K], kc[b, h * K:(h + 1) * K], vc[b, h * V:(h + 1) * V], a, bt, lam,
                     1.0 / math.sqrt(K), True, sw[:V], sw[V:2 * V], o)
    _rms_gate(o, norm_w, eps, x[og + h * V:og + (h + 1) * V], 1, out[b, h * V:(h + 1) * V])


@njit(**_KERNEL)
def log_linear_delta_decode(proj, cq, ck, cv, S, pos, wq, wk, wv, negA, dt_bias, L, norm_w, out, cq2, ck2, cv2, S2, pos2, qc, kc, vc,
                            lam, sw, H, eps, beta_scale, lo, hi):  # pragma: no cover - compiled
    """Log-linear Gated DeltaNet's token (rnnlab.layers.log_linear) between its projections, per row b: proj (B, ·) =
    [q (H·K) | k (H·K) | v (H·V) | b (H) | a (H) | g (H·V) | dλ (H·NL)]; q, k, v = SiLU(conv) (states cq, ck, cv), q
    and k ℓ2-normalized per head (``delta_decode``'s front); β = beta_scale·σ(b), log decay negA·softplus(a + dt_bias),
    λ = softplus(L ⊙ dλ); per head the levels (``_log_linear_head``, scale 1/√K) and out = GatedRMSNorm(o, g) (B, H·V).
    New states cq2, ck2, cv2, S2 (its n levels those after the token), pos2; scratch rows qc, kc (H·K), vc (H·V), lam
    (H·NL), sw (H·3V), a slice per head."""
    K, V = S.shape[3], S.shape[4]
    NL = L.shape[1]
    for b in range(lo, hi):
        _conv_qkv_l2(proj[b], cq[b], ck[b], cv[b], wq, wk, wv, qc[b], kc[b], vc[b], cq2[b], ck2[b], cv2[b], K)
        pos2[b] = pos[b] + 1
        for h in range(H):
            _log_linear_delta_head(proj, S, S2, pos, negA, dt_bias, L, norm_w, out, qc, kc, vc, lam[b, h * NL:(h + 1) * NL],
                                   sw[b, 3 * h * V:3 * (h + 1) * V], b, h, eps, beta_scale)


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def log_linear_delta_decode_heads(proj, cq, ck, cv, S, pos, wq, wk, wv, negA, dt_bias, L, norm_w, out, cq2, ck2, cv2, S2, pos2, qc, kc,
                                  vc, lam, sw, H, eps, beta_scale):  # pragma: no cover - compiled
    """``log_linear_delta_decode`` for a few rows of large levels: the fronts, then the (row, head) units over numba's
    threads."""
    B, K, V = S.shape[0], S.shape[3], S.shape[4]
    NL = L.shape[1]
    for b in prange(B):
        _conv_qkv_l2(proj[b], cq[b], ck[b], cv[b], wq, wk, wv, qc[b], kc[b], vc[b], cq2[b], ck2[b], cv2[b], K)
        pos2[b] = pos[b] + 1
    for unit in prange(B * H):
        b, h = unit // H, unit % H
        _log_linear_delta_head(proj, S, S2, pos, negA, dt_bias, L, norm_w, out, qc, kc, vc, lam[b, h * NL:(h + 1) * NL],
                               sw[b, 3 * h * V:3 * (h + 1) * V], b, h, eps, beta_scale)


@njit(**_INLINE)
def _log_linear_ssd_head(proj, S, S2, pos, dt_bias, neg_A, D, L, u, lam, sw, out, b, i, G):  # pragma: no cover - compiled
    """Head i of row b in ``log_linear_ssd_decode`` (u the row's SiLU'd conv output, lam (NL,) and sw (3P,) scratch)."""
    H, N, P = S.shape[2], S.shape[3], S.shape[4]
    NL = L.shape[1]
    E = H * P
    Cc = E + 2 * G * N
    x = proj[b]
    delta = _softplus(x[E + Cc + i] + dt_bias[i])
    for lv in range(NL):
        lam[lv] = _softplus(L[i, lv] * x[E + Cc + H + i * NL + lv])
    v, o = sw[2 * P:], out[b, i * P:(i + 1) * P]
    for p in range(P):
        v[p] = u[i * P + p] * delta
    grp = i // (H // G)
    _log_linear_head(S, S2, b, i, pos[b], u[E + G * N + grp * N:E + G * N + (grp + 1) * N], u[E + grp * N:E + (grp + 1) * N], v,
                     math.exp(neg_A[i] * delta), 1.0, lam, 1.0, False, sw[:P], sw[P:2 * P], o)
    for p in range(P):
        o[p] = (o[p] + D[i] * u[i * P + p]) * _silu(x[i * P + p])


@njit(**_KERNEL)
def log_linear_ssd_decode(proj, conv, S, pos, conv_w, conv_b, dt_bias, neg_A, D, L, norm_w, out, conv2, S2, pos2, xbc, lam, sw,
                          has_bias, G, eps, lo, hi):  # pragma: no cover - compiled
    """Log-linear Mamba-2's token (rnnlab.layers.log_linear) between its projections, per row b: proj (B, ·) = [z (H·P) |
    xBC (H·P + 2·G·N) | dt (H) | dλ (H·NL)]; xBC = SiLU(conv) (``ssd_decode``'s front); per head i (group i // (H/G)):
    Δ = softplus(dt + dt_bias), λ = softplus(L ⊙ dλ), the levels (``_log_linear_head``) with q = C, k = B, v = Δx and
    decay exp(A Δ), y = o + D x; out = RMSNorm over each group's channels of y ⊙ SiLU(z), times norm_w. New states
    conv2, S2 (its n levels those after the token), pos2; scratch rows xbc (H·P + 2·G·N), lam (H·NL), sw (H·3P), a slice
    per head."""
    H, N, P = S.shape[2], S.shape[3], S.shape[4]
    NL = L.shape[1]
    E = H * P
    Cc = E + 2 * G * N
    for b in range(lo, hi):
        _conv(proj[b, E:E + Cc], conv[b], conv_w, conv_b, has_bias, True, xbc[b], conv2[b])
        pos2[b] = pos[b] + 1
        for i in range(H):
            _log_linear_ssd_head(proj, S, S2, pos, dt_bias, neg_A, D, L, xbc[b], lam[b, i * NL:(i + 1) * NL],
                                 sw[b, 3 * i * P:3 * (i + 1) * P], out, b, i, G)
        _group_rms(out[b], norm_w, G, eps)


@njit(**_INLINE)
def _group_rms(y, norm_w, G, eps):  # pragma: no cover - compiled
    """y ← RMSNorm over each of its G groups of channels, times norm_w (Mamba-2's gated norm after its gate)."""
    Lg = y.shape[0] // G
    for g in range(G):
        _rms_gate(y[g * Lg:(g + 1) * Lg], norm_w[g * Lg:(g + 1) * Lg], eps, y, 0, y[g * Lg:(g + 1) * Lg])


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def log_linear_ssd_decode_heads(proj, conv, S, pos, conv_w, conv_b, dt_bias, neg_A, D, L, norm_w, out, conv2, S2, pos2, xbc, lam, sw,
                                has_bias, G, eps):  # pragma: no cover - compiled
    """``log_linear_ssd_decode`` for a few rows of large levels: the convs, then the (row, head) units over numba's
    threads, then the norms."""
    B, H, N, P = S.shape[0], S.shape[2], S.shape[3], S.shape[4]
    NL = L.shape[1]
    E = H * P
    Cc = E + 2 * G * N
    for b in prange(B):
        _conv(proj[b, E:E + Cc], conv[b], conv_w, conv_b, has_bias, True, xbc[b], conv2[b])
        pos2[b] = pos[b] + 1
    for unit in prange(B * H):
        b, i = unit // H, unit % H
        _log_linear_ssd_head(proj, S, S2, pos, dt_bias, neg_A, D, L, xbc[b], lam[b, i * NL:(i + 1) * NL], sw[b, 3 * i * P:3 * (i + 1) * P],
                             out, b, i, G)
    for b in prange(B):
        _group_rms(out[b], norm_w, G, eps)


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def log_linear_decode_parallel(q, k, v, g, beta, lam, S, pos, out, S2, pos2, sw, scale, has_g,
                               has_beta):  # pragma: no cover - compiled
    """``log_linear_decode`` with its (row, head) units spread over numba's threads."""
    for u in prange(q.shape[0] * S.shape[2]):
        log_linear_decode(q, k, v, g, beta, lam, S, pos, out, S2, pos2, sw, scale, has_g, has_beta, u, u + 1)
