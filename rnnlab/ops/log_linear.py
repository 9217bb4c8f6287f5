"""Log-linear attention: a Fenwick-tree hierarchy of O(log T) matrix states with data-dependent level weights.

    q, k (B, T, H, K), v (B, T, H, V), g (B, T, H) log-decay or None, [beta (B, T, H)], level_scales λ (B, T, H, NL)
    state {"S": (B, n, H, K, V) float32, the levels n, n-1, ..., 1 (highest first), "pos": (B,) int64}
    -> o (B, T, H, V), final state or None

Guo, Yang, Goel, Xing, Dao & Kim 2025, "Log-Linear Attention" (arXiv 2506.04761), §3: the prefix [0, t) of query
t (absolute position, 0-indexed) is cut by the Fenwick tree of t into buckets, one per set bit of t: bit b gives
the bucket of 2^b tokens that agree with t above bit b and have bit b clear; that bucket is level b + 1, and t
itself is level 0. So the level of a source s <= t is the bit length of t XOR s (level(t, t) = 0). Each level
keeps its own state of the underlying linear RNN (the same transitions, different inputs), and

    o_t = Σ_ℓ λ_t^(ℓ) S_t^(ℓ)ᵀ (scale q_t)                     (the hierarchical matrix M^H ⊙ of §3.1-3.2)

* ``*_log_linear_simple_gla``: S^(ℓ) ← e^{g_t} S^(ℓ), the new token k vᵀ (Mamba-2: q = C, k = B, v = Δx, g = ΔA;
  g None: linear attention);
* ``*_log_linear_gated_delta_rule``: S^(ℓ) ← e^{g_t}(I − β_t k_t k_tᵀ) S^(ℓ), the new token β k vᵀ (Gated DeltaNet).

The level weights λ are given (the layers make them, see rnnlab/layers/log_linear.py): λ[..., ℓ] weighs level ℓ;
NL must exceed the highest level any query reads, bit_length(last position), a ValueError otherwise.

The state is what the recurrence needs to continue at any position: the per-level states of the Fenwick partition
of [0, pos) (level ℓ nonempty iff bit ℓ−1 of pos is set) and pos. Between tokens, the carry of a binary counter
(positions p -> p + 1, m = the trailing zeros of p + 1): level 0 and levels 1..m merge into level m + 1. The level
axis grows with the position, n = bit_length(pos) levels for one sequence (state_size grows as log2 T); a row
merged with longer ones (packed runs, ``cat_rows``) holds zero levels in front (the highest, so the axis is stored
highest level first: right-aligned like a KV cache) — capacity (n) vs content (the set bits of pos).

Forms (same signature): ``naive_recurrent_*`` (the specification: per row and token, a dict of level states, the
transition built explicitly), ``fused_recurrent_*`` (batched over rows at their own positions: the decode step),
``chunk_*`` (chunks of C = 2^c tokens on the absolute position grid; rows are shifted onto it by pos mod C empty
slots). Inside an aligned chunk, levels <= c only: the intra-chunk part is the underlying chunk form's (C, C)
matrix M times the level-weighted mask Λ_ts = λ_t^(bit_length(t XOR s)). Across chunks the Fenwick tree of the
chunk index holds the levels > c: one state per chunk-level, carried over chunks like the token counter, each
read by a chunk's queries through the underlying form's state reader Q_eff (q e^{G} for a scalar decay;
q e^{G} − P W_k for the delta rule's WY form). The underlying form supplies per chunk (M, Q_eff, the source map
Z_src with Z = Z_src v the chunk's own contribution to its end state, the transport of a state across the chunk);
the hierarchy is one driver over them. Autograd differentiates it; memory O(T·C + (T/C)·levels·K·V).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from rnnlab.ops import decode
from rnnlab.ops._exp import decay_exp
from rnnlab.ops.chunk import UnitLowerSolve, acc_dtype, decay_ratios
from rnnlab.ops.varlen import varlen

__all__ = ["naive_recurrent_log_linear_simple_gla", "fused_recurrent_log_linear_simple_gla", "chunk_log_linear_simple_gla",
           "naive_recurrent_log_linear_gated_delta_rule", "fused_recurrent_log_linear_gated_delta_rule",
           "chunk_log_linear_gated_delta_rule", "log_linear_state", "bit_length", "level_count", "levels_for_token"]

_SCALAR = ("q", "k", "v", "g", "level_scales")
_DELTA = ("q", "k", "v", "g", "beta", "level_scales")


# --------------------------------------------------------------------------- positions and levels
def bit_length(n: Tensor) -> Tensor:
    """int64 n >= 0 (any shape) -> the bit length of each entry (0 for 0)."""
    return ((n[..., None] >> torch.arange(63, device=n.device)) > 0).sum(-1)


def _ctz(n: Tensor) -> Tensor:
    """int64 n >= 1 -> the number of trailing zero bits."""
    return bit_length(n & -n) - 1


def level_count(pos: int) -> int:
    """The levels a sequence's state holds after ``pos`` tokens: bit_length(pos)."""
    return int(pos).bit_length()


def log_linear_state(batch_size: int, H: int, K: int, V: int, device=None, dtype=None) -> dict[str, Tensor]:
    """The state before any token: no levels, position 0."""
    return {"S": torch.zeros(batch_size, 0, H, K, V, device=device, dtype=dtype or torch.float32),
            "pos": torch.zeros(batch_size, dtype=torch.int64, device=device)}


def _state_in(state, B, H, K, V, device, dt) -> tuple[Tensor, Tensor]:
    """-> S ascending (B, H, n, K, V) (index j = level j + 1) in dt, pos (B,)."""
    if state is None:
        state = log_linear_state(B, H, K, V, device, dt)
    S, pos = state["S"], state["pos"]
    if S.dim() != 5 or S.shape[0] != B or tuple(S.shape[2:]) != (H, K, V):
        raise ValueError(f"initial_state['S'] must be (B, levels, H, K, V) with (B, H, K, V) = {(B, H, K, V)}, got {tuple(S.shape)}")
    if pos.shape != (B,) or pos.dtype != torch.int64:
        raise ValueError(f"initial_state['pos'] must be int64 (B,) = ({B},), got {pos.dtype} {tuple(pos.shape)}")
    S = S.to(dt).flip(1).transpose(1, 2)
    # content: level ℓ holds tokens iff bit ℓ − 1 of pos is set; the other slots are capacity (zeros), masked so
    # that no form reads them and every form gives them the same (zero) gradient
    held = (pos[:, None] >> torch.arange(S.shape[2], device=S.device)) & 1
    return S * held.to(dt)[:, None, :, None, None], pos


def _state_out(S: Tensor, pos: Tensor) -> dict[str, Tensor]:
    """S ascending (B, H, n, K, V) -> the stored layout (B, n, H, K, V), highest level first."""
    return {"S": S.transpose(1, 2).flip(1), "pos": pos}


def _pad_levels(S: Tensor, n: int, dim: int = 2) -> Tensor:
    """Zero levels appended (ascending layout) up to n."""
    if S.shape[dim] >= n:
        return S
    shape = list(S.shape)
    shape[dim] = n - S.shape[dim]
    return torch.cat([S, S.new_zeros(shape)], dim)


def _carry(S: Tensor, x: Tensor, m: Tensor) -> Tensor:
    """The binary counter's carry. S (B, H, L, K, V) ascending (index j = the (j+1)-th level above x's), x (B, H, K, V)
    the item at the bottom level, m (B,) the trailing zeros of the new count: x and indices 0..m−1 merge into index m
    (which was empty), indices above m are kept. -> (B, H, max(L, m + 1), K, V)."""
    S = _pad_levels(S, int(m.max()) + 1 if m.numel() else S.shape[2])
    j = torch.arange(S.shape[2], device=S.device)
    shape = (-1, 1, S.shape[2], 1, 1)
    below = (j[None] < m[:, None]).view(shape).to(S.dtype)
    at = (j[None] == m[:, None]).view(shape).to(S.dtype)
    keep = (j[None] > m[:, None]).view(shape).to(S.dtype)
    merged = x + (S * below).sum(2)
    return S * keep + at * merged[:, :, None]


def _check(q, k, v, g, beta, lam, initial_state, chunk_size=None):
    for name, t in (("q", q), ("k", k), ("v", v), ("level_scales", lam)) + ((("g", g),) if g is not None else ()) \
            + ((("beta", beta),) if beta is not None else ()):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must be (B, T, H, K) of one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    B, T, H, K = q.shape
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be (B, T, H, V) with (B, T, H) = {(B, T, H)}, got {tuple(v.shape)}")
    for name, t in (("g", g), ("beta", beta)):
        if t is not None and tuple(t.shape) != (B, T, H):
            raise ValueError(f"{name} must be (B, T, H) = {(B, T, H)}, got {tuple(t.shape)}")
    if lam.dim() != 4 or lam.shape[:3] != q.shape[:3]:
        raise ValueError(f"level_scales must be (B, T, H, levels) with (B, T, H) = {(B, T, H)}, got {tuple(lam.shape)}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1 or chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size must be a power of two (chunks sit on the Fenwick tree's grid), got {chunk_size!r}")
    if initial_state is not None and (not isinstance(initial_state, dict) or set(initial_state) != {"S", "pos"}):
        raise ValueError("initial_state must be a dict with 'S' (B, levels, H, K, V) and 'pos' (B,) int64 (log_linear_state)")
    pos = initial_state["pos"] if initial_state is not None else None
    last = (int(pos.max()) if pos is not None and pos.numel() else 0) + T - 1
    if B and T and int(last).bit_length() >= lam.shape[-1]:
        raise ValueError(f"level_scales has {lam.shape[-1]} levels; position {last} reads level {int(last).bit_length()}, "
                         f"so at least {int(last).bit_length() + 1} are needed")


def _setup(q, v, scale, initial_state):
    """The shapes, the accumulation dtype, the scale (None: K^-1/2) and the initial levels (ascending) and positions."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    acc = acc_dtype(q)
    S0, pos = _state_in(initial_state, B, H, K, V, q.device, acc)
    return B, T, H, K, V, acc, (K ** -0.5 if scale is None else scale), S0, pos


# --------------------------------------------------------------------------- reference loop
def _naive(q, k, v, g, beta, lam, scale, initial_state, output_final_state):
    """Row by row, token by token, with a dict {level: state} and the transition built explicitly."""
    B, T, H, K, V, acc, scale, S0, pos0 = _setup(q, v, scale, initial_state)
    eye = torch.eye(K, dtype=acc, device=q.device)
    q, k, v, lam = q.to(acc), k.to(acc), v.to(acc), lam.to(acc)
    outs, finals, ends = [], [], []
    for b in range(B):
        p = int(pos0[b])
        levels = {j + 1: S0[b, :, j] for j in range(S0.shape[2])}  # level -> (H, K, V)
        ys = []
        for t in range(T):
            A = eye.expand(H, K, K)
            if beta is not None:
                A = A - beta[b, t].to(acc)[:, None, None] * k[b, t][:, :, None] * k[b, t][:, None, :]
            if g is not None:
                A = A * g[b, t].to(acc).exp()[:, None, None]
            levels = {lv: A @ S for lv, S in levels.items()}
            new = k[b, t][:, :, None] * v[b, t][:, None, :]
            levels[0] = new * beta[b, t].to(acc)[:, None, None] if beta is not None else new
            ys.append(sum(lam[b, t, :, lv][:, None] * (scale * q[b, t][:, :, None] * S).sum(1) for lv, S in levels.items()))
            p += 1
            m = (p & -p).bit_length() - 1  # carry to position p: levels 0..m merge into level m + 1
            levels[m + 1] = sum(levels.pop(lv) for lv in range(m + 2) if lv in levels)
        outs.append(torch.stack(ys, 0))
        finals.append(levels)
        ends.append(p)
    o = torch.stack(outs, 0).to(v.dtype)
    if not output_final_state:
        return o, None
    n = max([S0.shape[2]] + [level_count(p) for p in ends])
    S = torch.stack([torch.stack([f.get(lv, q.new_zeros(H, K, V)) for lv in range(1, n + 1)], 1) if n else q.new_zeros(H, 0, K, V)
                     for f in finals], 0)
    return o, _state_out(S, pos0 + T)


@varlen(_SCALAR)
def naive_recurrent_log_linear_simple_gla(q, k, v, g, level_scales, scale=None, initial_state=None, output_final_state=False):
    """q, k (B, T, H, K), v (B, T, H, V), g (B, T, H) log-decay or None, level_scales (B, T, H, NL)
    -> (o (B, T, H, V), state {"S", "pos"} or None). The specification (module docstring)."""
    _check(q, k, v, g, None, level_scales, initial_state)
    return _naive(q, k, v, g, None, level_scales, scale, initial_state, output_final_state)


@varlen(_DELTA)
def naive_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, level_scales, scale=None, initial_state=None,
                                                output_final_state=False):
    """q, k (B, T, H, K), v (B, T, H, V), g (B, T, H) or None, beta (B, T, H), level_scales (B, T, H, NL)
    -> (o, state or None). The specification with the K×K transition e^{g}(I − β k kᵀ) built explicitly."""
    _check(q, k, v, g, beta, level_scales, initial_state)
    return _naive(q, k, v, g, beta, level_scales, scale, initial_state, output_final_state)


# --------------------------------------------------------------------------- fused recurrent (the decode step)
def levels_for_token(S: Tensor, pos: Tensor, num_levels: int) -> Tensor:
    """The stored levels S (B, n, H, K, V) grown to the levels after the next token (a zero level in front when a row's
    counter reaches a new power of two): the decode kernels' input. A position past what ``num_levels`` level weights
    cover is the op's ValueError (``_check``): the kernels read a weight per level."""
    ps = pos.tolist()
    last = max(ps, default=0)
    if last.bit_length() >= num_levels:
        raise ValueError(f"level_scales has {num_levels} levels; position {last} reads level {last.bit_length()}, "
                         f"so at least {last.bit_length() + 1} are needed")
    n = max([S.shape[1]] + [((p + 1) & -(p + 1)).bit_length() for p in ps])
    if n > S.shape[1]:
        S = torch.cat([S.new_zeros(S.shape[0], n - S.shape[1], *S.shape[2:]), S], 1)
    return S


def _decode_token(q, k, v, g, beta, lam, scale, state, output_final_state):
    """One token on CPU without autograd (``decode.usable``): the fused kernel ``log_linear_decode`` on the stored
    layout, the level axis first grown to the levels after the token (a zero level in front when the counter
    reaches a new power of two)."""
    B, _, H, K = q.shape
    V = v.shape[-1]
    S, pos = levels_for_token(state["S"], state["pos"], lam.shape[-1]), state["pos"]
    o, S2, pos2 = decode.log_linear_decode(q, k, v, g, beta, lam, S, pos, float(K ** -0.5 if scale is None else scale))
    return o.view(B, 1, H, V).to(v.dtype), ({"S": S2, "pos": pos2} if output_final_state else None)


def _fused(q, k, v, g, beta, lam, scale, initial_state, output_final_state):
    if q.shape[1] == 1 and initial_state is not None and decode.usable(q, k, v, lam, initial_state["S"],
                                                                       *(t for t in (g, beta) if t is not None)):
        return _decode_token(q, k, v, g, beta, lam, scale, initial_state, output_final_state)
    B, T, H, K, V, acc, scale, S, pos = _setup(q, v, scale, initial_state)
    q, k, v, lam = q.to(acc) * scale, k.to(acc), v.to(acc), lam.to(acc)
    outs = []
    for t in range(T):
        kt = k[:, t]
        new = kt[..., :, None] * v[:, t, :, None, :]  # (B, H, K, V)
        if beta is not None:
            bt = beta[:, t].to(acc)[:, :, None, None]
            S = S - (bt * kt[..., :, None])[:, :, None] * torch.einsum("bhk,bhlkv->bhlv", kt, S)[..., None, :]
            new = new * bt
        if g is not None:
            S = S * g[:, t].to(acc).exp()[:, :, None, None, None]
        full = torch.cat([new[:, :, None], S], 2)  # level 0 first
        outs.append(torch.einsum("bhk,bhl,bhlkv->bhv", q[:, t], lam[:, t, :, : full.shape[2]], full))
        pos = pos + 1
        S = _carry(S, new, _ctz(pos))
    o = torch.stack(outs, 1).to(v.dtype)
    return o, (_state_out(S, pos) if output_final_state else None)


@varlen(_SCALAR)
def fused_recurrent_log_linear_simple_gla(q, k, v, g, level_scales, scale=None, initial_state=None, output_final_state=False):
    """The batched per-token loop (rows at their own positions); same signature as the reference."""
    _check(q, k, v, g, None, level_scales, initial_state)
    return _fused(q, k, v, g, None, level_scales, scale, initial_state, output_final_state)


@varlen(_DELTA)
def fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, level_scales, scale=None, initial_state=None,
                                                output_final_state=False):
    """The batched per-token loop with the rank-one transition; same signature as the reference."""
    _check(q, k, v, g, beta, level_scales, initial_state)
    return _fused(q, k, v, g, beta, level_scales, scale, initial_state, output_final_state)


# --------------------------------------------------------------------------- chunkwise
def _level_matrix(C: int, device) -> Tensor:
    """(C, C) int64: bit_length(t XOR s) (0 on the diagonal and above it, where the causal mask zeroes)."""
    i = torch.arange(C, device=device)
    return bit_length(i[:, None] ^ i[None, :])


def _transport(Tr: Tensor, S: Tensor) -> Tensor:
    """A state (B, H, [L,] K, V) carried across a chunk: Tr (B, H, 1, 1) scalar decay or (B, H, K, K) matrix."""
    if S.dim() == 5:
        Tr = Tr[:, :, None]
    return Tr * S if Tr.shape[-1] == 1 else Tr @ S


def _pieces_scalar(qc, kc, gc, scale):
    """Chunks (B, H, N, C, ·): M (C, C) lower incl. diagonal, Q_eff (C, K), Z_src (K, C), Tr (1, 1) of a scalar decay."""
    dt = qc.dtype
    C = qc.shape[-2]
    causal = torch.ones(C, C, dtype=torch.bool, device=qc.device).tril()
    M = scale * (qc @ kc.mT)
    if gc is None:
        return M.masked_fill(~causal, 0.0), scale * qc, kc.mT, torch.ones(*qc.shape[:3], 1, 1, dtype=dt, device=qc.device)
    G = gc.cumsum(-1)  # (B, H, N, C) inclusive
    M = (M * decay_ratios(G[..., None], G[..., None])).masked_fill(~causal, 0.0)
    return M, scale * qc * decay_exp(G)[..., None], (kc * decay_exp(G[..., -1:] - G)[..., None]).mT, decay_exp(G[..., -1:])[..., None]


def _pieces_delta(qc, kc, gc, bc, scale):
    """The gated delta rule's WY form per chunk (Yang et al. 2025, §3.3), from the state S entering the chunk:
    W = T(βv) − T(β e^γ k) S with T = (I + tril₋₁(β K Kᵀ ⊙ Γ))⁻¹, o = scale e^γ q S + P W (P = scale tril(Q Kᵀ ⊙ Γ)),
    S_end = e^{γ_C} S + (e^{γ_C − γ} k)ᵀ W. Linear in (v, S): M = P T diag β, Q_eff = scale e^γ q − P T(β e^γ k),
    Z_src = kdᵀ T diag β, Tr = e^{γ_C} I − kdᵀ T(β e^γ k)."""
    C, K = qc.shape[-2:]
    causal = torch.ones(C, C, dtype=torch.bool, device=qc.device).tril()
    if gc is None:
        G = torch.zeros_like(bc)
    else:
        G = gc.cumsum(-1)
    dec = decay_ratios(G[..., None], G[..., None])
    P = (scale * (qc @ kc.mT) * dec).masked_fill(~causal, 0.0)
    A = (bc[..., None] * (kc @ kc.mT) * dec).masked_fill(~causal.tril(-1), 0.0)
    TB = UnitLowerSolve.apply(A, torch.diag_embed(bc))  # T diag β (C, C)
    eg = decay_exp(G)[..., None]
    Wk = TB @ (eg * kc)  # (C, K)
    kd = kc * decay_exp(G[..., -1:] - G)[..., None]
    eye = torch.eye(K, dtype=qc.dtype, device=qc.device)
    Tr = decay_exp(G[..., -1:])[..., None] * eye - kd.mT @ Wk
    return P @ TB, scale * eg * qc - P @ Wk, kd.mT @ TB, Tr


def _chunk(q, k, v, g, beta, lam, scale, initial_state, output_final_state, C):
    """The chunkwise hierarchy (module docstring); the underlying form's pieces from _pieces_scalar/_pieces_delta."""
    B, T, H, K, V, acc, scale, S0, pos = _setup(q, v, scale, initial_state)
    c = C.bit_length() - 1
    n0 = S0.shape[2]
    r, a = pos % C, pos // C
    rs = r.tolist()
    # rows onto the absolute chunk grid: r_b empty slots (zero inputs, zero log-decay, zero λ) before the first token
    N = -(-(max(rs) + T) // C)
    Tp = N * C
    idx = torch.arange(Tp, device=q.device)[None] - r[:, None]  # (B, Tp): padded slot -> local token
    valid = (idx >= 0) & (idx < T)

    def shift(x):
        if x is None:
            return None
        x = x.to(acc)
        src = idx.clamp(0, T - 1).view(B, Tp, *([1] * (x.dim() - 2))).expand(B, Tp, *x.shape[2:])
        return x.gather(1, src) * valid.view(B, Tp, *([1] * (x.dim() - 2))).to(acc)

    NL = max(lam.shape[-1], c + 1)
    lam = F.pad(lam, (0, NL - lam.shape[-1]))
    ch = lambda x: rearrange(x, "b (n c) h ... -> b h n c ...", c=C)  # noqa: E731
    qc, kc, vc, lc = ch(shift(q)), ch(shift(k)), ch(shift(v)), ch(shift(lam))  # (B, H, N, C, ·)
    gc = ch(shift(g)) if g is not None else None
    if beta is None:
        M, Qeff, Zsrc, Tr = _pieces_scalar(qc, kc, gc, scale)
    else:
        M, Qeff, Zsrc, Tr = _pieces_delta(qc, kc, gc, ch(shift(beta)), scale)
    LV = _level_matrix(C, q.device)
    Lam = lc.gather(-1, LV.expand(*lc.shape[:3], C, C))  # (B, H, N, C, C): λ_t^(level(t, s))
    o = (M * Lam) @ vc  # intra-chunk, levels <= c
    # the initial state's levels <= c (its tokens share the first chunk): query t reads level ℓ0's state at level
    # max(ℓ0, bit_length(t XOR pos))
    nl = min(n0, c)
    low = S0[:, :, :nl]
    i = torch.arange(C, device=q.device)
    lv0 = torch.arange(1, nl + 1, device=q.device)
    read0 = torch.maximum(lv0[None, None], bit_length(i[None, :, None] ^ r[:, None, None]))  # (B, C, nl)
    lam_low = lc[:, :, 0].gather(-1, read0[:, None].expand(B, H, C, nl))
    o_low = torch.einsum("bhck,bhcl,bhlkv->bhcv", Qeff[:, :, 0], lam_low, low)
    # across chunks: the chunk index's Fenwick tree holds the levels > c (index j = level c + 1 + j)
    Hs = S0[:, :, nl:]
    ends = [(rb + T - 1) // C for rb in rs]  # the chunk of each row's last token
    e = (r + T) % C  # the position after the last token, within its chunk (0: the chunk is full)
    finals = [None] * B
    outs = []
    for n in range(N):
        lam_hi = _pad_levels(lc[:, :, n, :, c + 1 : c + 1 + Hs.shape[2]], Hs.shape[2], -1)
        outs.append(o[:, :, n] + torch.einsum("bhck,bhcj,bhjkv->bhcv", Qeff[:, :, n], lam_hi, Hs) + (o_low if n == 0 else 0))
        X = Zsrc[:, :, n] @ vc[:, :, n]
        if n == 0 and nl:
            X = X + _transport(Tr[:, :, 0], low.sum(2))
        rows_in = [b for b in range(B) if ends[b] == n and int(e[b]) > 0]
        if rows_in:  # the final state of a row ending inside chunk n: levels <= c from this chunk's sources
            s = torch.arange(C, device=q.device)
            lvl = bit_length(e[:, None] ^ s[None])  # (B, C)
            bucket = (lvl[:, None] == torch.arange(1, c + 1, device=q.device)[None, :, None]) & (s[None, None] < e[:, None, None])
            fin_low = torch.einsum("bhks,bhsv,bls->bhlkv", Zsrc[:, :, n], vc[:, :, n], bucket.to(acc))
            if n == 0 and nl:
                to = torch.maximum(lv0[None], bit_length(e ^ r)[:, None])  # (B, nl): the level each initial bucket joins
                onehot = (to[..., None] == torch.arange(1, c + 1, device=q.device)).to(acc)  # (B, nl, c)
                fin_low = fin_low + torch.einsum("bhlkv,blm->bhmkv", _transport(Tr[:, :, 0], low), onehot)
            fin_hi = _transport(Tr[:, :, n], Hs)
            for b in rows_in:
                finals[b] = (fin_low[b], fin_hi[b])
        Hs = _carry(_transport(Tr[:, :, n], Hs), X, _ctz(a + n + 1))
        for b in range(B):
            if ends[b] == n and int(e[b]) == 0:
                finals[b] = (Hs.new_zeros(H, c, K, V), Hs[b])
    o = torch.stack(outs, 2)  # (B, H, N, C, V)
    o = rearrange(o, "b h n c v -> b (n c) h v")
    if any(rs):  # each row's tokens back from its shifted slots
        o = o.gather(1, (torch.arange(T, device=q.device)[None] + r[:, None]).view(B, T, 1, 1).expand(B, T, H, V))
    else:
        o = o[:, :T]
    if not output_final_state:
        return o.to(v.dtype), None
    n_out = max([n0] + [level_count(p) for p in (pos + T).tolist()])
    L_hi = max(f[1].shape[1] for f in finals)
    S = torch.stack([torch.cat([lo, _pad_levels(hi, L_hi, 1)], 1) for lo, hi in finals], 0)  # (B, H, c + L_hi, K, V)
    S = _pad_levels(S, n_out)[:, :, :n_out]
    return o.to(v.dtype), _state_out(S, pos + T)


@varlen(_SCALAR)
def chunk_log_linear_simple_gla(q, k, v, g, level_scales, scale=None, initial_state=None, output_final_state=False, chunk_size=64):
    """Chunkwise log-linear attention over a scalar decay per head (Mamba-2, linear attention with g None);
    chunk_size a power of two. Same signature and results as the reference."""
    _check(q, k, v, g, None, level_scales, initial_state, chunk_size)
    return _chunk(q, k, v, g, None, level_scales, scale, initial_state, output_final_state, chunk_size)


@varlen(_DELTA)
def chunk_log_linear_gated_delta_rule(q, k, v, g, beta, level_scales, scale=None, initial_state=None, output_final_state=False,
                                      chunk_size=64):
    """Chunkwise log-linear Gated DeltaNet (the WY form per chunk, the hierarchy across chunks); chunk_size a power
    of two. Same signature and results as the reference."""
    _check(q, k, v, g, beta, level_scales, initial_state, chunk_size)
    return _chunk(q, k, v, g, beta, level_scales, scale, initial_state, output_final_state, chunk_size)
