"""mLSTM: the matrix-memory LSTM of xLSTM (Beck et al. 2024, "xLSTM: Extended Long
Short-Term Memory", Section 2.3, eqs. 19-27; stabilization as eqs. 15-17 of the sLSTM).

    q, k (B, T, H, K), v (B, T, H, V), i, f (B, T, H) gate pre-activations
    -> h (B, T, H, V), final_state (C (B, H, K, V), n (B, H, K), m (B, H)) or None

Per head, with k_t already scaled by ``scale`` (the paper's k_t = W_k x_t / sqrt(d), eq. 22):

    log f_t = logsigmoid(f~_t)   (``forget_gate="sigmoid"``, eq. 26)  or  f~_t  ("exp")
    m_t     = max(log f_t + m_{t-1}, i~_t)                      stabilizer (eq. 15)
    i'_t    = exp(i~_t - m_t),  f'_t = exp(log f_t + m_{t-1} - m_t)          (eqs. 16-17)
    C_t     = f'_t C_{t-1} + i'_t k_t v_t^T                     (eq. 19; stored (K, V) = C_paper^T)
    n_t     = f'_t n_{t-1} + i'_t k_t                            (eq. 20)
    h~_t    = C_t^T q_t / max(|n_t^T q_t|, exp(-m_t))            (eq. 21, stabilized)

The stored (C, n) are the paper's un-stabilized memory scaled by exp(-m_t), so the
floor exp(-m_t) is the paper's "1": the output equals the un-stabilized formula
exactly, and no exponent exceeds 0 (safe for input-gate pre-activations far beyond
30 in float32 and bfloat16). The output gate o_t (eq. 24) belongs to the layer.

State: the tuple ``(C, n, m)`` in float32; ``initial_state=None`` means C = 0, n = 0,
m = 0 (xLSTM's convention; with C = n = 0 the value of m does not change any output).

Forms (same signature): ``naive_recurrent_mlstm`` (the specification, one step per
token as written above), ``fused_recurrent_mlstm`` (the same recurrence with the step
fused into few ops; the decoding path), ``chunk_mlstm`` (chunkwise parallel: intra-chunk
masked matmuls with decay ratios exp(cumsum differences) stabilized per row by the
exact m_t of the recurrence, inter-chunk state passing; autograd through it, memory
O(T * chunk_size)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

__all__ = ["chunk_mlstm", "fused_recurrent_mlstm", "naive_recurrent_mlstm", "MLSTMState"]

MLSTMState = tuple[Tensor, Tensor, Tensor]  # C (B, H, K, V), n (B, H, K), m (B, H); float32


def _check(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, initial_state, forget_gate: str, chunk_size: int | None = None):
    if q.dim() != 4:
        raise ValueError(f"q must be (B, T, H, K), got shape {tuple(q.shape)}")
    B, T, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q (B, T, H, K) = {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be (B, T, H, V) with (B, T, H) = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    for name, g in (("i", i), ("f", f)):
        if g.shape != q.shape[:3]:
            raise ValueError(f"{name} must be (B, T, H) = {tuple(q.shape[:3])} gate pre-activations, got {tuple(g.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v), ("i", i), ("f", f)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if forget_gate not in ("sigmoid", "exp"):
        raise ValueError(f"forget_gate must be 'sigmoid' or 'exp', got {forget_gate!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    V = v.shape[-1]
    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 3:
            raise ValueError("initial_state must be a tuple (C (B, H, K, V), n (B, H, K), m (B, H))")
        C0, n0, m0 = initial_state
        for name, t, shape in (("C", C0, (B, H, K, V)), ("n", n0, (B, H, K)), ("m", m0, (B, H))):
            if tuple(t.shape) != shape:
                raise ValueError(f"initial_state {name} must have shape {shape}, got {tuple(t.shape)}")


def _prepare(q, k, v, i, f, scale, initial_state, forget_gate):
    """Float32 gates and scaled keys; initial state (zeros when None)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    acc = _acc_dtype(q)
    logf = F.logsigmoid(f.to(acc)) if forget_gate == "sigmoid" else f.to(acc)
    ig = i.to(acc)
    if initial_state is None:
        C0 = q.new_zeros(B, H, K, V, dtype=acc)
        n0 = q.new_zeros(B, H, K, dtype=acc)
        m0 = q.new_zeros(B, H, dtype=acc)
    else:
        C0, n0, m0 = (t.to(acc) for t in initial_state)
    return scale, ig, logf, (C0, n0, m0)


def _acc_dtype(x: Tensor) -> torch.dtype:
    """Gates, decays and state: float32 (float64 when the inputs are float64)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def naive_recurrent_mlstm(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    i: Tensor,
    f: Tensor,
    scale: float | None = None,
    initial_state: MLSTMState | None = None,
    output_final_state: bool = False,
    forget_gate: str = "sigmoid",
    **_: object,
) -> tuple[Tensor, MLSTMState | None]:
    """q, k (B, T, H, K), v (B, T, H, V), i, f (B, T, H) -> (h (B, T, H, V), (C, n, m) or None).

    Reference loop: the stabilized mLSTM step of the module docstring, token by token,
    in float32. ``scale`` (default K^-1/2) multiplies k as in eq. 22."""
    _check(q, k, v, i, f, initial_state, forget_gate)
    scale, ig, logf, (C, n, m) = _prepare(q, k, v, i, f, scale, initial_state, forget_gate)
    acc = ig.dtype
    hs = []
    for qt, kt, vt, it, lft in zip(q.to(acc).unbind(1), (k.to(acc) * scale).unbind(1), v.to(acc).unbind(1), ig.unbind(1), logf.unbind(1)):
        # qt, kt (B, H, K); vt (B, H, V); it, lft (B, H)
        m_new = torch.maximum(lft + m, it)
        i_s = torch.exp(it - m_new)
        f_s = torch.exp(lft + m - m_new)
        C = f_s[..., None, None] * C + i_s[..., None, None] * kt[..., :, None] * vt[..., None, :]
        n = f_s[..., None] * n + i_s[..., None] * kt
        num = torch.einsum("bhkv,bhk->bhv", C, qt)
        den = torch.maximum((n * qt).sum(-1).abs(), torch.exp(-m_new))
        hs.append(num / den[..., None])
        m = m_new
    h = torch.stack(hs, 1).to(v.dtype)
    return h, ((C, n, m) if output_final_state else None)


def fused_recurrent_mlstm(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    i: Tensor,
    f: Tensor,
    scale: float | None = None,
    initial_state: MLSTMState | None = None,
    output_final_state: bool = False,
    forget_gate: str = "sigmoid",
    **_: object,
) -> tuple[Tensor, MLSTMState | None]:
    """q, k (B, T, H, K), v (B, T, H, V), i, f (B, T, H) -> (h (B, T, H, V), (C, n, m) or None).

    The recurrence of :func:`naive_recurrent_mlstm` with the stabilizer and both gates
    computed for all t up front (m_t by a scan over scalars) and the normalizer folded
    into the state as an extra value column, so a step is two fused ops; the decoding
    path (T == 1) of the mLSTM layer."""
    _check(q, k, v, i, f, initial_state, forget_gate)
    scale, ig, logf, (C, n, m) = _prepare(q, k, v, i, f, scale, initial_state, forget_gate)
    B, T, H, K = q.shape
    V = v.shape[-1]
    # stabilizer for all steps (scalars per head): m_t = max(log f_t + m_{t-1}, i~_t)
    ms = [m]
    for it, lft in zip(ig.unbind(1), logf.unbind(1)):
        ms.append(torch.maximum(lft + ms[-1], it))
    m_all = torch.stack(ms, 1)  # (B, T+1, H): m_0 .. m_T
    mt = m_all[:, 1:]
    f_s = torch.exp(logf + m_all[:, :-1] - mt)  # (B, T, H)
    i_s = torch.exp(ig - mt)
    # extended state [C | n] (B, H, K, V+1): value column V holds the normalizer n
    Cn = torch.cat([C, n[..., None]], -1)
    acc = ig.dtype
    ve = torch.cat([v.to(acc), v.new_ones(B, T, H, 1, dtype=acc)], -1) * i_s[..., None]  # (B, T, H, V+1)
    outs = []
    for kt, vt, qt, ft in zip((k.to(acc) * scale).unbind(1), ve.unbind(1), q.to(acc).unbind(1), f_s.unbind(1)):
        Cn = torch.addcmul(ft[..., None, None] * Cn, kt[..., :, None], vt[..., None, :])
        outs.append(torch.einsum("bhkv,bhk->bhv", Cn, qt))
    o = torch.stack(outs, 1)  # (B, T, H, V+1)
    h = o[..., :V] / torch.maximum(o[..., V].abs(), torch.exp(-mt))[..., None]
    final = (Cn[..., :V], Cn[..., V], mt[:, -1]) if output_final_state else None
    return h.to(v.dtype), final


def chunk_mlstm(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    i: Tensor,
    f: Tensor,
    scale: float | None = None,
    initial_state: MLSTMState | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    forget_gate: str = "sigmoid",
    **_: object,
) -> tuple[Tensor, MLSTMState | None]:
    """q, k (B, T, H, K), v (B, T, H, V), i, f (B, T, H) -> (h (B, T, H, V), (C, n, m) or None).

    Chunkwise-parallel mLSTM. Within a chunk (cumulative log-forget b_t):
    log D_ts = b_t - b_s + i~_s (s <= t), m_t = max(b_t + m_in, max_s log D_ts) is the
    recurrence's own stabilizer, and

        h_t = [e^{b_t+m_in-m_t} C_in^T q_t + sum_s e^{log D_ts - m_t} (q_t.k_s) v_s]
              / max(|e^{b_t+m_in-m_t} n_in.q_t + sum_s e^{log D_ts - m_t} q_t.k_s|, e^{-m_t})

    Chunk-local states are computed in parallel; the (C, n, m) entering each chunk are
    passed by a short loop over chunks. Every exponent is <= 0. Matmuls run in the
    input dtype with float32 gates, decays and state."""
    _check(q, k, v, i, f, initial_state, forget_gate, chunk_size)
    scale, ig, logf, (C, n, m) = _prepare(q, k, v, i, f, scale, initial_state, forget_gate)
    B, T, H, K = q.shape
    V = v.shape[-1]
    L = min(chunk_size, T)
    NC = -(-T // L)
    pad = NC * L - T
    acc = ig.dtype
    dt = q.dtype  # matmul dtype
    kf = (k.to(acc) * scale).to(dt)
    if pad:  # padded steps: no input (i~ = -inf), no forgetting (log f = 0): the state passes unchanged
        q, kf, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, kf, v))
        ig = F.pad(ig, (0, 0, 0, pad), value=float("-inf"))
        logf = F.pad(logf, (0, 0, 0, pad))
    qc = rearrange(q.to(dt), "b (n l) h k -> b h n l k", l=L)
    kc = rearrange(kf, "b (n l) h k -> b h n l k", l=L)
    vc = rearrange(v.to(dt), "b (n l) h v -> b h n l v", l=L)
    igc = rearrange(ig, "b (n l) h -> b h n l", l=L)
    bc = rearrange(logf, "b (n l) h -> b h n l", l=L).cumsum(-1)  # (B, H, NC, L) inclusive cumsum

    # value columns extended by a 1: column V of every state/product carries the normalizer n
    ve = torch.cat([vc, vc.new_ones(*vc.shape[:-1], 1)], -1)  # (B, H, NC, L, V+1)
    Cn = torch.cat([C, n[..., None]], -1)  # (B, H, K, V+1)

    # chunk-local states (as if entering with an empty memory), stabilized by their own max
    a = bc[..., -1:] - bc + igc  # (B, H, NC, L): log weight of k_s v_s^T at the chunk's end
    m_loc = a.amax(-1)  # (B, H, NC)
    wa = torch.exp(a - m_loc[..., None])  # (B, H, NC, L)
    Cn_loc = ((kc * wa[..., None].to(dt)).transpose(-1, -2) @ ve).to(acc)  # (B, H, NC, K, V+1)
    # pass (C, n, m) across chunks: the states entering every chunk
    btot = bc[..., -1]  # (B, H, NC)
    m_new_all = []
    Cs, mss = [], []
    for bt, ml, Cl in zip(btot.unbind(2), m_loc.unbind(2), Cn_loc.unbind(2)):
        Cs.append(Cn), mss.append(m)
        if len(Cs) == NC and not output_final_state:
            break
        m_new = torch.maximum(bt + m, ml)
        fo, fl = torch.exp(bt + m - m_new), torch.exp(ml - m_new)
        Cn = fo[..., None, None] * Cn + fl[..., None, None] * Cl
        m = m_new
    Cn_in, m_in = torch.stack(Cs, 2), torch.stack(mss, 2)  # (B, H, NC, K, V+1), (B, H, NC)

    # intra-chunk: stabilized decay matrix
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    logD = (bc[..., :, None] - bc[..., None, :] + igc[..., None, :]).masked_fill(~causal, float("-inf"))  # (B, H, NC, L, L)
    b_in = bc + m_in[..., None]  # (B, H, NC, L)
    mt = torch.maximum(b_in, logD.amax(-1))  # (B, H, NC, L): m_t of the recurrence
    S = (qc @ kc.transpose(-1, -2)).to(acc) * torch.exp(logD - mt[..., None])  # (B, H, NC, L, L)
    w_in = torch.exp(b_in - mt)  # (B, H, NC, L)
    o = (S.to(dt) @ ve).to(acc) + w_in[..., None] * (qc @ Cn_in.to(dt)).to(acc)  # (B, H, NC, L, V+1)
    h = o[..., :V] / torch.maximum(o[..., V].abs(), torch.exp(-mt))[..., None]
    h = rearrange(h, "b h n l v -> b (n l) h v")[:, :T].to(v.dtype)
    return h, ((Cn[..., :V], Cn[..., V], m) if output_final_state else None)
