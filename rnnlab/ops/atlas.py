"""ATLAS's memory (Behrouz, Li, Kacham, Daliri, Deng, Zhong, Razaviyayn & Mirrokni 2025, "ATLAS: Learning to Optimally
Memorize the Context at Test Time", arXiv 2505.23735v1): the Omega rule over a sliding window of c tokens, a polynomial
feature map of keys and queries, and a Muon (Newton–Schulz) step on the momentum.

    q, k (B, T, H, K), v (B, T, H, V), lr, log_momentum, log_decay, gamma (B, T, H), initial_state (dict, below)
    -> o (B, T, H, V) in v's dtype, final_state (dict, float32; float64 for float64 inputs) or None

Per head, the memory f(x; M) of rnnlab/ops/ttt.py (depth 1: x W1; depth 2: φ_act(x W1) W2; no biases) reads features

    φ(x) = [a_0, a_1 x, a_2 x ⊗ x, ..., a_p x^{⊗p}]  (``feature_coef`` = (a_0, ..., a_p); §3.1's polynomial map,
                                                      φ(q) · φ(k) = Σ_i a_i² (q · k)^i; None: φ(x) = x)
    ℓ_t(M) = Σ_{i=t−c+1}^{t} γ_i ‖f(φ(k_i); M) − v_i‖²                     (the Omega rule, eq. 9, c = ``window``)
    S_t = θ_t S_{t−1} + ∇ℓ_t(M_{t'})                                          (eq. 33: momentum of the window's gradient)
    M_t = α_t M_{t−1} − η_t NS_k(S_t)                                         (eq. 32: Newton–Schulz per weight matrix)
    o_t = f(φ(q_t); M_t)                                                      (read after the update with token t)

with θ_t = exp(log_momentum), α_t = exp(log_decay), η_t = lr, γ_i = gamma >= 0 per token and head. Every gradient of a
chunk of b tokens is taken at the memory M_{t'} the chunk started from (t' = t − t mod b; the paper's parallel form,
§5.1: the momentum then no longer depends on the memory inside a chunk, so all S_t and their NS_k(S_t) are computed
in parallel); b = 1 is the fully sequential rule. The window's tokens from before the chunk (or from an earlier call)
are re-evaluated at M_{t'}: ℓ_t is one loss, and its gradient is taken at one memory.

Newton–Schulz (``newton_schulz``, rnnlab.ops.lact.newton_schulz): "muon" = 5 steps of Muon's quintic (3.4445,
−4.7750, 2.0315) on S / ‖S‖_F, "cubic" = (1.5, −0.5, 0), "none" = S itself (then the rule is OmegaNet's with momentum).

Simplifications and readings, said here and in the README: γ_i is one weight per token (the paper's γ_i^{(t)} may also
depend on t); the sources consulted state eqs. 32-33 only through third-party transcriptions, which disagree on where
η_t sits (after Newton–Schulz here, as in Muon, where the orthogonalization removes the gradient's scale; one reading
puts η_t inside S, which NS_k would then cancel); biases are not offered (Muon orthogonalizes weight matrices).

State (per row and head): the chunk's starting memory {"w1"[, "w2"]}, the memory {"m_w1", ...}, the momentum
{"s_w1", ...} (B, H, Kφ, F) and (B, H, F, V), the window's c − 1 previous tokens "buf_k" (B, H, c − 1, K), "buf_v"
(B, H, c − 1, V), "buf_gamma" (B, H, c − 1) (zeros with γ = 0 at a sequence start), "pos" (B,) int64.

Forms, one signature: ``naive_recurrent_atlas`` (the specification: a token loop, the window's gradient by autograd),
``fused_recurrent_atlas`` (the loop with the gradient by hand: the decode step) and ``chunk_atlas`` (per chunk: one
key pass of the memory at M_{t'} over the chunk and the c − 1 tokens before it gives every token's gradient as rank-one
factors; the window sums are a banded (b, b + c − 1) matrix; S_t and M_t are exps of cumulative log-gates times those
sums; NS_k runs on all b momenta at once; the memory of every token is formed (O(b·Kφ·F) per chunk, recomputed in the
backward under activation checkpointing) and read by its query). Rows at different positions are placed on one
aligned chunk grid, the window's buffer just before each row's first token; empty slots carry θ = α = 1, η = γ = 0.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from rnnlab.ops._exp import decay_exp
from rnnlab.ops.chunk import acc_dtype, decay_ratios
from rnnlab.ops.lact import NEWTON_SCHULZ, newton_schulz
from rnnlab.ops.ttt import ACTIVATIONS, LOSSES, _key_pass, _layers, _Memory, _model, checkpoint_tree, memory_keys
from rnnlab.ops.varlen import varlen

__all__ = ["naive_recurrent_atlas", "fused_recurrent_atlas", "chunk_atlas", "polynomial_features", "feature_dim"]

_CARRIED = ("m_", "s_")
_BUFFER = ("buf_k", "buf_v", "buf_gamma")


def feature_dim(K: int, degree: int | None) -> int:
    """The width of φ(x) for x of width K: Σ_{i<=p} K^i (K without a feature map)."""
    return K if degree is None else sum(K ** i for i in range(degree + 1))


def polynomial_features(x: Tensor, coef: Tensor | None) -> Tensor:
    """x (..., K), coef (p + 1,) -> φ(x) = [a_0, a_1 x, a_2 vec(x ⊗ x), ...] (..., Σ_{i<=p} K^i); None: x."""
    if coef is None:
        return x
    parts, power = [x.new_ones(x.shape[:-1] + (1,))], x.new_ones(x.shape[:-1] + (1,))
    for _ in range(coef.shape[0] - 1):
        power = rearrange(power[..., :, None] * x[..., None, :], "... i j -> ... (i j)")
        parts.append(power)
    return torch.cat([a * p for a, p in zip(coef.to(x.dtype).unbind(0), parts)], -1)


def _ns(S: Tensor, coefficients) -> Tensor:
    """NS_k per matrix of S (..., m, n)."""
    if coefficients is None:
        return S
    return newton_schulz(S.reshape(-1, *S.shape[-2:]), coefficients).reshape(S.shape)


# --------------------------------------------------------------------------- the window's gradient
def _window_loss(p: dict, k: Tensor, v: Tensor, gamma: Tensor, mem: _Memory) -> Tensor:
    """Σ over rows and window tokens of γ_i ‖f(k_i; M) − v_i‖², written plainly (the reference's loss)."""
    return (LOSSES["l2"][0](_model(p, k, mem, None) - v, None, 2.0) * gamma).sum()


def _grad_autograd(p: dict, k: Tensor, v: Tensor, gamma: Tensor, mem: _Memory) -> dict:
    return torch.func.grad(_window_loss)(p, k, v, gamma, mem)


def _factors(P: list, k: Tensor, v: Tensor, gamma: Tensor, mem: _Memory) -> tuple[list, list]:
    """The rank-one factors of γ_i ∇ℓ(M; k_i, v_i) per layer: xs (N, L, din), ds (N, L, dout), from ttt's key pass."""
    xs, ds = _key_pass(P, k, v, None, mem, None)
    return xs, [d * gamma[..., None] for d in ds]


def _grad_manual(p: dict, k: Tensor, v: Tensor, gamma: Tensor, mem: _Memory) -> dict:
    xs, ds = _factors(_layers(p, mem), k, v, gamma, mem)
    return {f"w{i}": x.transpose(1, 2) @ d for i, (x, d) in enumerate(zip(xs, ds), 1)}


# --------------------------------------------------------------------------- validation and layout
def _check(q, k, v, gates: dict, state, window, feature_coef, newton_schulz_name, chunk_size, activation):
    for name, t in (("q", q), ("k", k), ("v", v), *gates.items()):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor")
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must be (B, T, H, K) of one shape, got {tuple(q.shape)}, {tuple(k.shape)}")
    B, T, H, K = q.shape
    if v.dim() != 4 or tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"v must be (B, T, H, V) with (B, T, H) = {(B, T, H)}, got {tuple(v.shape)}")
    for name, t in gates.items():
        if tuple(t.shape) != (B, T, H):
            raise ValueError(f"{name} must be (B, T, H) = {(B, T, H)}, got {tuple(t.shape)}")
    if not isinstance(window, int) or window < 1 or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"window and chunk_size must be positive ints, got {window!r}, {chunk_size!r}")
    if newton_schulz_name not in NEWTON_SCHULZ:
        raise ValueError(f"newton_schulz must be one of {tuple(NEWTON_SCHULZ)}, got {newton_schulz_name!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    if feature_coef is not None and (not isinstance(feature_coef, Tensor) or feature_coef.dim() != 1 or feature_coef.numel() < 2):
        raise ValueError(f"feature_coef must be None or a 1-D tensor (a_0, ..., a_p) with p >= 1, got {feature_coef!r}")
    if not isinstance(state, dict) or "w1" not in state:
        raise ValueError(f"initial_state must be a dict holding the memory ('w1', ...), got {type(state).__name__}")
    depth = 2 if "w2" in state else 1
    names = memory_keys(depth, False)
    want = set(names) | {c + n for c in _CARRIED for n in names} | set(_BUFFER) | {"pos"}
    if set(state) != want:
        raise ValueError(f"initial_state must hold the keys {sorted(want)}, got {sorted(state)}")
    Kf, V, F_ = feature_dim(K, None if feature_coef is None else feature_coef.numel() - 1), v.shape[-1], state["w1"].shape[-1]
    shapes = {"w1": (B, H, Kf, F_ if depth == 2 else V), "w2": (B, H, F_, V)}
    shapes.update(buf_k=(B, H, window - 1, K), buf_v=(B, H, window - 1, V), buf_gamma=(B, H, window - 1))
    for n in want - {"pos"}:
        if tuple(state[n].shape) != shapes[n.split("_", 1)[-1] if n[:2] in ("m_", "s_") else n]:
            raise ValueError(f"initial_state[{n!r}] must be {shapes[n.split('_', 1)[-1] if n[:2] in ('m_', 's_') else n]}, "
                             f"got {tuple(state[n].shape)}")
    if tuple(state["pos"].shape) != (B,) or state["pos"].is_floating_point():
        raise ValueError(f"initial_state['pos'] must be an int64 (B,) tensor, got {state['pos'].dtype} {tuple(state['pos'].shape)}")
    return _Memory(depth, False, activation, False, False, "l2")


def _rows(t: Tensor, dt) -> Tensor:
    """(B, H, ...) -> (B·H, ...) in the compute dtype."""
    return t.to(dt).reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _load(state: dict, mem: _Memory, dt) -> tuple[dict, dict, dict]:
    return tuple({n: _rows(state[c + n], dt) for n in mem.names} for c in ("",) + _CARRIED)


def _store(W0: dict, Mt: dict, S: dict, buf: tuple, pos: Tensor, B: int) -> dict:
    unrows = lambda t: t.reshape(B, t.shape[0] // B, *t.shape[1:])  # noqa: E731
    out = {}
    for c, Z in zip(("",) + _CARRIED, (W0, Mt, S)):
        out.update({c + n: unrows(t) for n, t in Z.items()})
    out.update({n: unrows(t) for n, t in zip(_BUFFER, buf)})
    out["pos"] = pos
    return out


# --------------------------------------------------------------------------- the recurrent forms
def _recurrent(grad_fn, mem, q, k, v, gates, initial_state, coef, ns, L, output_final_state):
    B, T, H, _ = q.shape
    dt = acc_dtype(q)
    W0, Mt, S = _load(initial_state, mem, dt)
    bk, bv, bg = (_rows(initial_state[n], dt) for n in _BUFFER)  # (N, c−1, ·)
    r = initial_state["pos"].repeat_interleave(H)
    seq = lambda t: rearrange(t.to(dt), "b t h ... -> t (b h) ...").unbind(0)  # noqa: E731
    os = []
    for qt, kt, vt, lr, lm, ld, gt in zip(*map(seq, (q, k, v, gates["lr"], gates["log_momentum"], gates["log_decay"], gates["gamma"]))):
        wk, wv, wg = torch.cat([bk, kt[:, None]], 1), torch.cat([bv, vt[:, None]], 1), torch.cat([bg, gt[:, None]], 1)
        u = grad_fn(W0, polynomial_features(wk, coef), wv, wg, mem)
        S = {n: lm.exp()[:, None, None] * S[n] + u[n] for n in S}
        Mt = {n: ld.exp()[:, None, None] * Mt[n] - lr[:, None, None] * _ns(S[n], ns) for n in Mt}
        os.append(_model(Mt, polynomial_features(qt[:, None], coef), mem, None)[:, 0])
        done = r + 1 == L
        W0 = {n: torch.where(done[:, None, None], Mt[n], W0[n]) for n in W0}
        r = torch.where(done, torch.zeros_like(r), r + 1)
        bk, bv, bg = wk[:, 1:], wv[:, 1:], wg[:, 1:]
    o = rearrange(torch.stack(os, 0), "t (b h) v -> b t h v", b=B).to(v.dtype)
    return o, (_store(W0, Mt, S, (bk, bv, bg), r.reshape(B, H)[:, 0].contiguous(), B) if output_final_state else None)


# --------------------------------------------------------------------------- the chunk form
def _chunk_memories(mem, ns, qf, xs, ds, band, lm, ld, lr, S0: list, M0: list):
    """One chunk after its key pass: every token's momentum S_t, memory M_t and read o_t = f(qf_t; M_t).
    qf (N, L, Kφ); xs, ds per layer (N, P + L, ·); band (N, L, P + L) the window weights; lm, ld, lr (N, L);
    S0, M0 per layer (N, din, dout) -> (o (N, L, V), S_t, M_t per layer (N, L, din, dout))."""
    Lm, La = lm.cumsum(-1), ld.cumsum(-1)
    L = lm.shape[-1]
    tril = torch.ones(L, L, dtype=torch.bool, device=lm.device).tril()
    E = torch.where(tril, decay_ratios(Lm[..., None], Lm[..., None]), 0.0)         # Π_{s<p<=t} θ_p
    D = torch.where(tril, decay_ratios(La[..., None], La[..., None]), 0.0) * lr[..., None, :]  # Π_{s<p<=t} α_p · η_s
    Ss, Ms = [], []
    for x, d, S_prev, M_prev in zip(xs, ds, S0, M0):
        G = torch.einsum("nsj,njk,njf->nskf", band, x, d)  # the window's gradient of every token
        S = torch.einsum("nts,nskf->ntkf", E, G) + decay_exp(Lm, max=0.0)[..., None, None] * S_prev[:, None]
        Mt = decay_exp(La, max=0.0)[..., None, None] * M_prev[:, None] - torch.einsum("nts,nskf->ntkf", D, _ns(S, ns))
        Ss.append(S)
        Ms.append(Mt)
    act = ACTIVATIONS[mem.activation][0]
    h = qf
    for i, Mt in enumerate(Ms):
        h = torch.einsum("ntk,ntkf->ntf", h, Mt)
        if i < mem.depth - 1:
            h = act(h)
    # clones: a view of the last token would keep every token's S_t and M_t of the chunk alive (O(T) memories)
    return h, [S[:, -1].clone() for S in Ss], [Mt[:, -1].clone() for Mt in Ms]


def _chunk(mem, q, k, v, gates, initial_state, coef, ns, L, output_final_state):
    B, T, H, _ = q.shape
    V = v.shape[-1]
    dt = acc_dtype(q)
    W0, Mt, S = _load(initial_state, mem, dt)
    P = initial_state["buf_k"].shape[2]  # c − 1
    pos = initial_state["pos"].to(torch.int64)
    hi = int(pos.max()) if pos.device.type == "cpu" else L - 1
    NC = -(-(T + hi) // L)
    slots = pos[:, None] + torch.arange(T, device=pos.device)  # token t of row i at slot pos_i + t

    def place(x, n_slots, at):
        idx = at.reshape(B, at.shape[1], *(1,) * (x.dim() - 2)).expand_as(x)
        return torch.zeros(B, n_slots, *x.shape[2:], dtype=dt, device=x.device).scatter(1, idx, x.to(dt))

    grid = lambda x: rearrange(place(x, NC * L, slots), "b (n l) h ... -> n (b h) l ...", l=L).unbind(0)  # noqa: E731
    # the window's keys: the buffer then the tokens, the buffer just before each row's first token (an extended grid of
    # P + NC·L slots); chunk n's key pass covers its P slots before it and its own L (unfold: one view, one backward)
    ext_at = pos[:, None] + torch.arange(P + T, device=pos.device)
    buf = lambda n: rearrange(initial_state[n].to(dt), "b h c ... -> b c h ...")  # noqa: E731
    ext = [torch.cat([buf(bn), x.to(dt)], 1) for bn, x in zip(_BUFFER, (k, v, gates["gamma"]))]
    windows = [rearrange(place(x, P + NC * L, ext_at).unfold(1, P + L, L), "b n h ... w -> n (b h) w ...").unbind(0) for x in ext]
    mask = grid(torch.ones(B, T, H, dtype=dt, device=q.device))
    band_shape = torch.arange(P + L, device=q.device)[None, :] - torch.arange(L, device=q.device)[:, None]
    band_shape = ((band_shape >= 0) & (band_shape <= P)).to(dt)  # token s of the chunk sits at window slot P + s
    n_last = ((pos + T - 1) // L).repeat_interleave(H)
    ends = ((pos + T) % L == 0).repeat_interleave(H)
    chunks = list(zip(grid(q), *windows, mask, grid(gates["log_momentum"]), grid(gates["log_decay"]), grid(gates["lr"])))

    def run_group(n0: int, group: list, W0: dict, S: dict, Mt: dict):
        """Chunks n0, n0 + 1, ... of ``group`` from the carried (W0, S, M) -> (their outputs, the carried after them)."""
        outs = []
        for n, (qn, kn, vn, gn, mn, lm, ld, lr) in enumerate(group, n0):
            xs, ds = _factors(_layers(W0, mem), polynomial_features(kn, coef), vn, gn, mem)
            band = band_shape * mn[..., None]  # empty slots take no gradient
            o, S_end, M_end = checkpoint_tree(_chunk_memories, mem, ns, polynomial_features(qn, coef), xs, ds, band, lm, ld, lr,
                                              [S[n_] for n_ in mem.names], [Mt[n_] for n_ in mem.names])
            outs.append(o)
            S, Mt = dict(zip(mem.names, S_end)), dict(zip(mem.names, M_end))
            complete = ((n < n_last) | ((n == n_last) & ends))[:, None, None]  # rows past their last token keep their anchor
            W0 = {n_: torch.where(complete, Mt[n_], W0[n_]) for n_ in mem.names}
        return torch.stack(outs, 0), W0, S, Mt

    # groups of ~√NC chunks, each checkpointed: the backward keeps the carried memories at group ends only and recomputes
    # a group's chunks (their features, key passes and carried memories) when it reaches it, so the memory-sized tensors
    # alive at once are O(√NC) (not one per chunk), and the per-token memories O(b) (one chunk's, _chunk_memories)
    size = max(1, round(NC ** 0.5))
    outs = []
    for n0 in range(0, NC, size):
        group = chunks[n0:n0 + size]
        o, W0, S, Mt = checkpoint_tree(run_group, n0, group, W0, S, Mt) if len(chunks) > 1 else run_group(n0, group, W0, S, Mt)
        outs.append(o)
    o = rearrange(torch.cat(outs, 0), "n (b h) l v -> b (n l) h v", b=B)
    o = o.gather(1, slots.reshape(B, T, 1, 1).expand(B, T, H, V)).to(v.dtype)
    if not output_final_state:
        return o, None
    bufs = tuple(rearrange(x[:, x.shape[1] - P:], "b c h ... -> (b h) c ...") for x in ext)
    return o, _store(W0, Mt, S, bufs, (pos + T) % L, B)


# --------------------------------------------------------------------------- public ops
def _run(form, q, k, v, lr, log_momentum, log_decay, gamma, initial_state, window, feature_coef, activation, newton_schulz_name,
         chunk_size, output_final_state):
    gates = {"lr": lr, "log_momentum": log_momentum, "log_decay": log_decay, "gamma": gamma}
    mem = _check(q, k, v, gates, initial_state, window, feature_coef, newton_schulz_name, chunk_size, activation)
    coef = None if feature_coef is None else feature_coef.to(acc_dtype(q))
    ns = NEWTON_SCHULZ[newton_schulz_name]
    if form == "chunk":
        return _chunk(mem, q, k, v, gates, initial_state, coef, ns, chunk_size, output_final_state)
    return _recurrent(_grad_autograd if form == "naive" else _grad_manual, mem, q, k, v, gates, initial_state, coef, ns, chunk_size,
                      output_final_state)


_SIGNATURE = ("q", "k", "v", "lr", "log_momentum", "log_decay", "gamma")


@varlen(_SIGNATURE)
def naive_recurrent_atlas(q, k, v, lr, log_momentum, log_decay, gamma, initial_state, window=4, feature_coef=None, activation="gelu",
                          newton_schulz="muon", chunk_size=16, output_final_state=False):
    """The specification (module docstring): a token loop, the window loss's gradient by autograd."""
    return _run("naive", q, k, v, lr, log_momentum, log_decay, gamma, initial_state, window, feature_coef, activation, newton_schulz,
                chunk_size, output_final_state)


@varlen(_SIGNATURE)
def fused_recurrent_atlas(q, k, v, lr, log_momentum, log_decay, gamma, initial_state, window=4, feature_coef=None, activation="gelu",
                          newton_schulz="muon", chunk_size=16, output_final_state=False):
    """The token loop with the window's gradient by hand (the decode step)."""
    return _run("fused", q, k, v, lr, log_momentum, log_decay, gamma, initial_state, window, feature_coef, activation, newton_schulz,
                chunk_size, output_final_state)


@varlen(_SIGNATURE)
def chunk_atlas(q, k, v, lr, log_momentum, log_decay, gamma, initial_state, window=4, feature_coef=None, activation="gelu",
                newton_schulz="muon", chunk_size=16, output_final_state=False):
    """The chunk form (module docstring). q, k (B, T, H, K), v (B, T, H, V), lr = η_t, log_momentum = log θ_t,
    log_decay = log α_t, gamma = γ_t (B, T, H); initial_state as in the module docstring; window c; feature_coef
    (p + 1,) or None -> (o (B, T, H, V), final_state or None)."""
    return _run("chunk", q, k, v, lr, log_momentum, log_decay, gamma, initial_state, window, feature_coef, activation, newton_schulz,
                chunk_size, output_final_state)
