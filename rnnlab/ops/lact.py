"""Large-chunk test-time training (LaCT: Zhang et al. 2025, "Test-Time Training Done Right", §3): SwiGLU fast weights
updated once per chunk of b tokens (b large: hundreds to thousands) and read by the next chunks.

    q, k (B, T, H, K), v (B, T, H, K), lr (B, T, H) >= 0 per-token learning rates, initial_state (dict, below)
    -> o (B, T, H, K) in v's dtype, final_state (dict, float32) or None

Per head, fast weights W = (W1, W3: (K, F), W2: (F, K)):

    f_W(x) = (SiLU(x W1) ⊙ (x W3)) W2                                             (SwiGLU)
    ℓ(W; k, v) = −f_W(k) · v                                                      (the dot-product loss, §3.1)
    o_t = f_{W_c}(q_t)    W_c the weights after the chunks before t's chunk: "apply, then update"
    at a chunk's end:  g = Σ_{s in chunk} lr_s ∇_W ℓ(W_c; k_s, v_s)                 (one gradient for the chunk)
                       g ← NS(g) with ``newton_schulz`` (Muon's orthogonalization, per weight matrix)
                       M ← β M + g (``beta``: momentum, 0 = none);  W ← renorm(W − M)
    renorm: every output unit's weight vector (a column of W in the (din, dout) layout) keeps its norm (§3.2: the
    weights are L2-normalized after each update, to their norms before it)

Newton–Schulz (``newton_schulz``): "muon" = 5 steps of X ← a X + (b A + c A²) X, A = X Xᵀ, (a, b, c) = (3.4445,
−4.7750, 2.0315) on X = g / ‖g‖_F (Muon's quintic coefficients, which LaCT's code uses); "cubic" = the classic
(1.5, −0.5, 0); "none" skips it.

State: the weights {"w1", "w2", "w3"} (B, H, ·), the gradient accumulated in the current chunk {"g_w1", ...}, the
momentum {"m_w1", ...}, "pos" (B,) int64 (tokens into the current chunk): a sequence split anywhere equals the whole.

Forms: ``naive_recurrent_lact`` (token loop, the gradient of each token by autograd: the specification),
``fused_recurrent_lact`` (the same loop, gradients written by hand) and ``chunk_lact`` (per chunk: one batched
forward of its queries, the chunk's gradient as three matmuls, one update; rows at different positions are shifted
onto one chunk grid, empty slots carrying zero rates).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from rnnlab.ops.chunk import acc_dtype
from rnnlab.ops.varlen import varlen

__all__ = ["naive_recurrent_lact", "fused_recurrent_lact", "chunk_lact", "newton_schulz", "NEWTON_SCHULZ", "LACT_KEYS"]

NEWTON_SCHULZ = {"muon": (3.4445, -4.7750, 2.0315), "cubic": (1.5, -0.5, 0.0), "none": None}
LACT_KEYS = ("w1", "w2", "w3")


def newton_schulz(g: Tensor, coefficients: tuple[float, float, float], steps: int = 5, eps: float = 1e-7) -> Tensor:
    """g (N, m, n) -> an approximately orthogonalized g (Muon): X = g / ‖g‖_F, then ``steps`` times
    X ← a X + (b A + c A²) X with A = X Xᵀ (on the shorter side)."""
    a, b, c = coefficients
    tall = g.shape[-2] > g.shape[-1]
    X = g.transpose(-1, -2) if tall else g
    X = X / (X.flatten(1).norm(dim=1)[:, None, None] + eps)
    for _ in range(steps):
        A = X @ X.transpose(-1, -2)
        X = a * X + (b * A + c * A @ A) @ X
    return X.transpose(-1, -2) if tall else X


def _swiglu(W: dict, x: Tensor) -> Tensor:
    """f_W(x): x (N, L, K) -> (N, L, K)."""
    return (F.silu(x @ W["w1"]) * (x @ W["w3"])) @ W["w2"]


def _loss(W: dict, k: Tensor, v: Tensor, lr: Tensor) -> Tensor:
    """Σ_s lr_s ℓ(W; k_s, v_s) = −Σ_s lr_s f_W(k_s) · v_s (summed over rows too: their gradients stay apart)."""
    return -(_swiglu(W, k) * v * lr[..., None]).sum()


def _grad_autograd(W: dict, k: Tensor, v: Tensor, lr: Tensor) -> dict:
    return torch.func.grad(_loss)(W, k, v, lr)


def _grad_manual(W: dict, k: Tensor, v: Tensor, lr: Tensor) -> dict:
    """The same gradient by hand, summed over the L tokens: dW2 = hᵀ δ, dW1 = kᵀ (δ W2ᵀ ⊙ b ⊙ SiLU'(z1)),
    dW3 = kᵀ (δ W2ᵀ ⊙ SiLU(z1)), δ = −lr v, h = SiLU(z1) ⊙ b, z1 = k W1, b = k W3."""
    z1, b = k @ W["w1"], k @ W["w3"]
    s = torch.sigmoid(z1)
    a = z1 * s
    d = -v * lr[..., None]
    dh = d @ W["w2"].transpose(1, 2)
    kt = k.transpose(1, 2)
    return {"w1": kt @ (dh * b * s * (1 + z1 * (1 - s))), "w2": (a * b).transpose(1, 2) @ d, "w3": kt @ (dh * a)}


def _update(W: dict, G: dict, Mo: dict, beta: float, ns) -> tuple[dict, dict]:
    """The end of a chunk: g = NS(G), M ← β M + g, W ← renorm(W − M) (columns keep their norms)."""
    newW, newM = {}, {}
    for n in LACT_KEYS:
        g = newton_schulz(G[n], ns) if ns is not None else G[n]
        m = beta * Mo[n] + g if beta else g
        w = W[n] - m
        newW[n] = w * (W[n].norm(dim=1, keepdim=True) / w.norm(dim=1, keepdim=True).clamp_min(1e-12))
        newM[n] = m
    return newW, newM


def _check(q, k, v, lr, state, chunk_size, beta, newton_schulz_name):
    for name, t in (("q", q), ("k", k), ("v", v), ("lr", lr)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor")
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must be (B, T, H, K) alike, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if tuple(lr.shape) != tuple(q.shape[:3]):
        raise ValueError(f"lr must be (B, T, H) = {tuple(q.shape[:3])}, got {tuple(lr.shape)}")
    want = set(LACT_KEYS) | {"g_" + n for n in LACT_KEYS} | {"m_" + n for n in LACT_KEYS} | {"pos"}
    if not isinstance(state, dict) or set(state) != want:
        raise ValueError(f"initial_state must hold the keys {sorted(want)}, got {sorted(state) if isinstance(state, dict) else state!r}")
    B, _, H, K = q.shape
    Fh = state["w1"].shape[-1]
    shapes = {"w1": (B, H, K, Fh), "w3": (B, H, K, Fh), "w2": (B, H, Fh, K)}
    for n in LACT_KEYS:
        for c in ("", "g_", "m_"):
            if tuple(state[c + n].shape) != shapes[n]:
                raise ValueError(f"initial_state[{c + n!r}] must be {shapes[n]}, got {tuple(state[c + n].shape)}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not (isinstance(beta, (int, float)) and 0 <= beta < 1):
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    if newton_schulz_name not in NEWTON_SCHULZ:
        raise ValueError(f"newton_schulz must be one of {tuple(NEWTON_SCHULZ)}, got {newton_schulz_name!r}")


def _load(state: dict, dt) -> tuple[dict, dict, dict]:
    rows = lambda t: t.to(dt).reshape(-1, *t.shape[2:])  # noqa: E731  (B, H, ...) -> (B·H, ...)
    return tuple({n: rows(state[c + n]) for n in LACT_KEYS} for c in ("", "g_", "m_"))


def _store(W: dict, G: dict, Mo: dict, pos: Tensor, B: int) -> dict:
    out = {}
    for c, Z in (("", W), ("g_", G), ("m_", Mo)):
        out.update({c + n: Z[n].reshape(B, -1, *Z[n].shape[1:]) for n in LACT_KEYS})
    out["pos"] = pos
    return out


def _where(cond: Tensor, a: dict, b: dict) -> dict:
    return {n: torch.where(cond[:, None, None], a[n], b[n]) for n in a}


def _recurrent(grad_fn, q, k, v, lr, initial_state, chunk_size, beta, ns, output_final_state):
    B, T, H, K = q.shape
    dt = acc_dtype(q)
    W, G, Mo = _load(initial_state, dt)
    pos = initial_state["pos"].repeat_interleave(H)
    tok = lambda t: rearrange(t.to(dt), "b t h ... -> t (b h) 1 ...").unbind(0)  # noqa: E731
    os = []
    for qt, kt, vt, lt in zip(tok(q), tok(k), tok(v), tok(lr)):
        os.append(_swiglu(W, qt)[:, 0])                # apply: the weights of the chunks before
        u = grad_fn(W, kt, vt, lt)
        G = {n: G[n] + u[n] for n in LACT_KEYS}
        done = pos + 1 == chunk_size
        W2, M2 = _update(W, G, Mo, beta, ns)
        W, Mo = _where(done, W2, W), _where(done, M2, Mo)
        G = {n: torch.where(done[:, None, None], torch.zeros_like(G[n]), G[n]) for n in LACT_KEYS}
        pos = torch.where(done, torch.zeros_like(pos), pos + 1)
    o = rearrange(torch.stack(os, 0), "t (b h) k -> b t h k", b=B).to(v.dtype)
    return o, (_store(W, G, Mo, pos.reshape(B, H)[:, 0].contiguous(), B) if output_final_state else None)


def _chunk(q, k, v, lr, initial_state, chunk_size, beta, ns, output_final_state):
    B, T, H, K = q.shape
    L, dt = chunk_size, acc_dtype(q)
    W, G, Mo = _load(initial_state, dt)
    pos = initial_state["pos"].to(torch.int64)
    hi = int(pos.max()) if pos.device.type == "cpu" else L - 1
    NC = -(-(T + hi) // L)
    slots = pos[:, None] + torch.arange(T, device=pos.device)  # token t of row i at slot pos_i + t

    def grid(x):
        idx = slots.reshape(B, T, *(1,) * (x.dim() - 2)).expand_as(x)
        full = torch.zeros(B, NC * L, *x.shape[2:], dtype=dt, device=x.device).scatter(1, idx, x.to(dt))
        return rearrange(full, "b (n l) h ... -> n (b h) l ...", l=L).unbind(0)

    last_chunk = ((pos + T - 1) // L).repeat_interleave(H)  # the chunk of each row's last token; it ends there
    ends = ((pos + T) % L == 0).repeat_interleave(H)        # ... exactly at that chunk's end
    outs = []
    for n, (qn, kn, vn, ln) in enumerate(zip(grid(q), grid(k), grid(v), grid(lr))):
        outs.append(_swiglu(W, qn))
        u = _grad_manual(W, kn, vn, ln)
        G = {name: G[name] + u[name] for name in LACT_KEYS}
        W2, M2 = _update(W, G, Mo, beta, ns)
        complete = (n < last_chunk) | ((n == last_chunk) & ends)  # rows past their last token keep their state
        W, Mo = _where(complete, W2, W), _where(complete, M2, Mo)
        G = {name: torch.where(complete[:, None, None], torch.zeros_like(G[name]), G[name]) for name in LACT_KEYS}
    o = rearrange(torch.stack(outs, 0), "n (b h) l k -> b (n l) h k", b=B)
    o = o.gather(1, slots.reshape(B, T, 1, 1).expand(B, T, H, K)).to(v.dtype)
    return o, (_store(W, G, Mo, (pos + T) % L, B) if output_final_state else None)


def _run(form, q, k, v, lr, initial_state, chunk_size, beta, newton_schulz, output_final_state):
    _check(q, k, v, lr, initial_state, chunk_size, beta, newton_schulz)
    ns = NEWTON_SCHULZ[newton_schulz]
    if form == "chunk":
        return _chunk(q, k, v, lr, initial_state, chunk_size, float(beta), ns, output_final_state)
    return _recurrent(_grad_autograd if form == "naive" else _grad_manual, q, k, v, lr, initial_state, chunk_size, float(beta), ns,
                      output_final_state)


@varlen(("q", "k", "v", "lr"))
def naive_recurrent_lact(q, k, v, lr, initial_state, chunk_size=64, beta=0.0, newton_schulz="muon", output_final_state=False):
    """The specification (module docstring): a token loop, each token's gradient by autograd."""
    return _run("naive", q, k, v, lr, initial_state, chunk_size, beta, newton_schulz, output_final_state)


@varlen(("q", "k", "v", "lr"))
def fused_recurrent_lact(q, k, v, lr, initial_state, chunk_size=64, beta=0.0, newton_schulz="muon", output_final_state=False):
    """The token loop with the gradient written by hand (the decode path)."""
    return _run("fused", q, k, v, lr, initial_state, chunk_size, beta, newton_schulz, output_final_state)


@varlen(("q", "k", "v", "lr"))
def chunk_lact(q, k, v, lr, initial_state, chunk_size=64, beta=0.0, newton_schulz="muon", output_final_state=False):
    """The chunk form (module docstring): per chunk one forward of its queries, one gradient, one update."""
    return _run("chunk", q, k, v, lr, initial_state, chunk_size, beta, newton_schulz, output_final_state)
