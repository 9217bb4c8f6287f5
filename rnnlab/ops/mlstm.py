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
    h~_t    = C_t^T q_t / (max(|n_t^T q_t|, exp(-m_t)) + eps)    (eq. 21, stabilized)

The stored (C, n) are the paper's un-stabilized memory scaled by exp(-m_t), so the
floor exp(-m_t) is the paper's "1": the output equals the un-stabilized formula
exactly, and no exponent exceeds 0 (safe for input-gate pre-activations far beyond
30 in float32 and bfloat16). The output gate o_t (eq. 24) belongs to the layer.
``eps`` (default 0, the paper's eq. 21) is the authors' code's term added to the
stabilized denominator (xLSTM 7B's kernels: 1e-6); it acts as eps * exp(m_t) on the
un-stabilized one, so it depends on the stabilizer, which all three forms share.

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

from rnnlab.ops._exp import decay_exp
from rnnlab.ops.chunk import acc_dtype, cast, decay_ratios, mac, mm_dtype, to_chunks
from rnnlab.ops.varlen import varlen

__all__ = ["chunk_mlstm", "fused_recurrent_mlstm", "mlstm_step", "naive_recurrent_mlstm", "MLSTMState"]

MLSTMState = tuple[Tensor, Tensor, Tensor]  # C (B, H, K, V), n (B, H, K), m (B, H); float32


def _check(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, initial_state, forget_gate: str, eps: float,
           chunk_size: int | None = None):
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
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
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
    acc = acc_dtype(q)
    logf = F.logsigmoid(cast(f, acc)) if forget_gate == "sigmoid" else cast(f, acc)
    ig = cast(i, acc)
    if initial_state is None:
        C0 = q.new_zeros(B, H, K, V, dtype=acc)
        n0 = q.new_zeros(B, H, K, dtype=acc)
        m0 = q.new_zeros(B, H, dtype=acc)
    else:
        C0, n0, m0 = (cast(t, acc) for t in initial_state)
    return scale, ig, logf, (C0, n0, m0)


@varlen(("q", "k", "v", "i", "f"), fla=("head_first",))
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
    eps: float = 0.0,
) -> tuple[Tensor, MLSTMState | None]:
    """q, k (B, T, H, K), v (B, T, H, V), i, f (B, T, H) -> (h (B, T, H, V), (C, n, m) or None).

    Reference loop: the stabilized mLSTM step of the module docstring, token by token,
    in float32. ``scale`` (default K^-1/2) multiplies k as in eq. 22."""
    _check(q, k, v, i, f, initial_state, forget_gate, eps)
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
        den = torch.maximum((n * qt).sum(-1).abs(), torch.exp(-m_new)) + eps
        hs.append(num / den[..., None])
        m = m_new
    h = torch.stack(hs, 1).to(v.dtype)
    return h, ((C, n, m) if output_final_state else None)


@varlen(("q", "k", "v", "i", "f"), fla=("head_first",))
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
    eps: float = 0.0,
) -> tuple[Tensor, MLSTMState | None]:
    """q, k (B, T, H, K), v (B, T, H, V), i, f (B, T, H) -> (h (B, T, H, V), (C, n, m) or None).

    The recurrence of :func:`naive_recurrent_mlstm` with the stabilizer and both gates
    computed for all t up front (m_t by a scan over scalars) and the normalizer folded
    into the state as an extra value column, so a step is two fused ops; the decoding
    path (T == 1) of the mLSTM layer."""
    _check(q, k, v, i, f, initial_state, forget_gate, eps)
    if q.shape[1] == 1:
        h, final = mlstm_step(q, k, v, i, f, scale, initial_state, forget_gate, eps)
        return h, final if output_final_state else None
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
        outs.append((qt.unsqueeze(-2) @ Cn).squeeze(-2))  # Cᵀq: a matmul (an einsum's parsing costs more at one token)
    o = torch.stack(outs, 1)  # (B, T, H, V+1)
    h = o[..., :V] / (torch.maximum(o[..., V].abs(), torch.exp(-mt)) + eps)[..., None]
    final = (Cn[..., :V], Cn[..., V], mt[:, -1]) if output_final_state else None
    return h.to(v.dtype), final


def mlstm_step(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, scale: float | None = None,
               initial_state: MLSTMState | None = None, forget_gate: str = "sigmoid", eps: float = 0.0) -> tuple[Tensor, MLSTMState]:
    """q, k (B, 1, H, K), v (B, 1, H, V), i, f (B, 1, H) -> (h (B, 1, H, V), (C, n, m)): one token of
    :func:`fused_recurrent_mlstm`, its arithmetic op for op (the same numbers, bit for bit) without the scan's
    bookkeeping over a time axis: the decode step, about half the calls. No input checks (``fused_recurrent_mlstm``
    checks, then runs this at T == 1; a layer whose shapes are right by construction calls it directly)."""
    scale, ig, logf, (C, n, m) = _prepare(q, k, v, i, f, scale, initial_state, forget_gate)
    B, _, H, K = q.shape
    V = v.shape[-1]
    acc = ig.dtype
    it, lft = ig[:, 0], logf[:, 0]  # (B, H)
    lfm = lft + m
    m_new = torch.maximum(lfm, it)
    f_s = torch.exp(lfm - m_new)
    i_s = torch.exp(it - m_new).unsqueeze(-1)  # (B, H, 1)
    Cn = _joined(C, n)  # (B, H, K, V+1): the normalizer as value column V
    ve = torch.cat([cast(v[:, 0], acc) * i_s, i_s], -1)  # [v, 1]·i_s (1·i_s = i_s exactly)
    Cn = (f_s.view(B, H, 1, 1) * Cn).addcmul_((cast(k[:, 0], acc) * scale).unsqueeze(-1), ve.unsqueeze(-2))
    o = (cast(q[:, 0], acc).unsqueeze(-2) @ Cn).squeeze(-2)  # (B, H, V+1)
    den = torch.maximum(o[..., V].abs(), torch.exp(-m_new))
    h = o[..., :V] / (den + eps if eps else den).unsqueeze(-1)  # den >= 0: den + 0 == den
    C, n = Cn[..., :V], Cn[..., V]
    C._joined = Cn  # the next step reads [C | n] back without a copy (``_joined``); a plain attribute, as views made
    # under inference mode record no base
    return cast(h, v.dtype).unsqueeze(1), (C, n, m_new)


def _joined(C: Tensor, n: Tensor) -> Tensor:
    """[C | n] (B, H, K, V+1): the tensor itself when C and n are its [..., :V] and [..., V] views (the state the last
    step returned: no copy; checked by storage offsets and strides, so any other C or n is concatenated)."""
    base, V = getattr(C, "_joined", None), C.shape[-1]
    if (base is not None and base.shape == (*C.shape[:-1], V + 1) and base.dtype == C.dtype == n.dtype
            and C.data_ptr() == base.data_ptr() and C.stride() == base.stride()
            and n.data_ptr() == base.data_ptr() + V * base.element_size() and n.stride() == base.stride()[:-1]):
        return base
    return torch.cat([C, n.unsqueeze(-1)], -1)


@varlen(("q", "k", "v", "i", "f"), fla=("head_first",))
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
    eps: float = 0.0,
) -> tuple[Tensor, MLSTMState | None]:
    """q, k (B, T, H, K), v (B, T, H, V), i, f (B, T, H) -> (h (B, T, H, V), (C, n, m) or None).

    Chunkwise-parallel mLSTM. Inside a chunk (b_t the inclusive cumsum of log f, a_s = i~_s - b_s,
    m_in the stabilizer entering the chunk) the recurrence's stabilizer is m_t = b_t + M_t with
    M_t = max(m_in, max_{s<=t} a_s), a cumulative max, and

        h_t = [sum_{s<=t} e^{a_s - M_t} (q_t.k_s) v_s + e^{m_in - M_t} C_in^T q_t]
              / max(|sum_{s<=t} e^{a_s - M_t} q_t.k_s + e^{m_in - M_t} n_in.q_t|, e^{-m_t})

    with every exponent <= 0. Chunk-local states are computed in parallel, stabilized by their own
    max; a short loop over chunks passes (C, n, m). The q.k scores and the normalizer are float32
    (bfloat16 inputs included: the normalizer is a sum of terms of both signs, so bfloat16-rounded
    scores would cost it its precision, as in xLSTM's kernels); the numerator matmuls run in
    bfloat16 for bfloat16 inputs. Gradients by autograd (memory O(T * chunk_size))."""
    _check(q, k, v, i, f, initial_state, forget_gate, eps, chunk_size)
    scale, ig, logf, (C, n, m) = _prepare(q, k, v, i, f, scale, initial_state, forget_gate)
    B, T, H, K = q.shape
    acc, dt = acc_dtype(q), mm_dtype(q)
    L = min(chunk_size, T)
    NC = -(-T // L)
    # contiguous (B, H, NC, L, .) chunks, one copy each; padded steps: no input (i~ = -inf), no forgetting
    qc, kc, vc = to_chunks(q.to(acc), L), to_chunks(k.to(acc) * scale, L), to_chunks(v.to(dt), L)
    ig = torch.where(torch.arange(NC * L, device=q.device)[:, None] < T, F.pad(ig, (0, 0, 0, NC * L - T)), float("-inf"))
    b = to_chunks(logf[..., None], L)[..., 0].cumsum(-1)  # (B, H, NC, L) inclusive cumsum of log f
    a = to_chunks(ig[..., None], L)[..., 0] - b  # log weight of token s, in the frame of the chunk start

    # chunk-local states at the chunk end (as if entering empty), stabilized by their own max
    m_loc = a.amax(-1)  # (B, H, NC)
    wk = kc * decay_exp(a - m_loc[..., None])[..., None]  # (B, H, NC, L, K)
    C_loc = mac(wk.to(dt).transpose(-1, -2), vc).to(acc)  # (B, H, NC, K, V)
    n_loc = wk.sum(-2)  # (B, H, NC, K)
    # pass (C, n, m) across chunks; in the chunk-start frame the state's stabilizer is m - 0 and the
    # chunk-local one m_loc + b_L, so the chunk's end stabilizer is b_L + max(m, m_loc)
    states = []
    for bL, ml, Cl, nl in zip(b[..., -1].unbind(2), m_loc.unbind(2), C_loc.unbind(2), n_loc.unbind(2)):  # unbind: O(T) backward
        states.append((C, n, m))
        if len(states) == NC and not output_final_state:
            break
        M = torch.maximum(m, ml)
        w_old, w_loc = torch.exp(m - M), torch.exp(ml - M)
        C = w_old[..., None, None] * C + w_loc[..., None, None] * Cl
        n = w_old[..., None] * n + w_loc[..., None] * nl
        m = bL + M
    C_in, n_in, m_in = (torch.stack(s, 2) for s in zip(*states))  # (B, H, NC, K, V), (B, H, NC, K), (B, H, NC)

    # intra-chunk: M_t = max(m_in, cummax_s a_s); decay matrix e^{a_s - M_t} on s <= t
    Mt = torch.maximum(m_in[..., None], torch.cummax(a, -1).values)  # (B, H, NC, L)
    # exponents a_s - M_t <= 0 on s <= t; above the diagonal they are clamped to 0 and the product is
    # masked after the exp (exp(-inf) takes a slow path: the masked-before-exp form cost 4x as much)
    D = decay_ratios(-Mt[..., None], -a[..., None])  # (B, H, NC, L, L): e^{a_s - M_t}
    S = (mac(qc, kc.transpose(-1, -2)) * D).tril()  # (B, H, NC, L, L) float32
    w_in = decay_exp(m_in[..., None] - Mt)[..., None]  # (B, H, NC, L, 1)
    num = mac(S.to(dt), vc).to(acc) + w_in * mac(qc.to(dt), C_in.to(dt)).to(acc)  # (B, H, NC, L, V)
    den = S.sum(-1, keepdim=True) + w_in * mac(qc, n_in[..., None])  # (B, H, NC, L, 1) float32
    h = num / (torch.maximum(den.abs(), torch.exp(-(b + Mt))[..., None]) + eps)
    h = rearrange(h, "b h n l v -> b (n l) h v")[:, :T].to(v.dtype)
    return h, ((C, n, m) if output_final_state else None)
