"""Test-time memory: a memory — a linear map or a two-layer MLP per head — trained while it reads, by gradient
steps on an inner loss, and read with a query (TTT-Linear / TTT-MLP, Titans' neural memory).

    q, k (B, T, H, K), v (B, T, H, V), per-token gates (B, T, H), initial_state (dict, below)
    -> o (B, T, H, V) in v's dtype, final_state (dict, float32; float64 for float64 inputs) or None

The memory of one head, with weights W = (W1, b1[, W2, b2]):

    g(x; W) = x W1 + b1                      (depth 1: a linear map)
            = φ(x W1 + b1) W2 + b2           (depth 2: an MLP, φ = GELU in its tanh form, or SiLU)
    f(x; W) = [x +] [LN_{γ,β}] g(x; W)       (``residual``; ``ln_weight`` / ``ln_bias`` = the LN's γ, β, outer
                                              parameters, never updated by the inner steps; eps 1e-6)
    ℓ(W; k, v) = ‖f(k; W) − v‖²  (``loss="l2"``)  or  ½‖f(k; W) − v‖²  (``"half_l2"``)
    u_t = ∇_W ℓ(W_{t'}; k_t, v_t)            every gradient of a mini-batch of b tokens is taken at the weights
                                              W_{t'} the mini-batch started from (t' = t − t mod b); with
                                              ``max_grad_norm`` scaled to at most that norm (all layers jointly)
    o_t = f(q_t; W_t)                        read after the update with token t

Two update rules, each a recurrence over tokens whose state is the memory's weights plus what the mini-batch
needs: its starting weights, accumulators and the position r = t mod b of the next token (``pos``, int64):

* ``*_ttt`` (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive Hidden States", §2.4
  mini-batch TTT, §2.5 dual form, §2.7 learnable η; the token scale τ of the authors' code):

      G_t = G_{t−1} + lr_t u_t,    W_t = W_{t'} − τ_r G_t      (G = 0 at a mini-batch start; r = t − t')

  lr (B, T, H) ≥ 0 the per-token inner learning rate, tau (b,) ≥ 0 the scale of position r (its length is b).
  State: the mini-batch's starting weights {"w1", "b1", ...}, the accumulators {"g_w1", "g_b1", ...}, "pos".
  At the end of a mini-batch (r = b − 1) W_{t'} ← W_t and G ← 0. With tau ≡ 1 this is the paper's eq. for
  mini-batch GD, W_t = W_{t'} − Σ_{s=t'}^{t} lr_s ∇ℓ(W_{t'}; x_s); the authors' code scales the sum by τ_r.
* ``*_titans`` (Behrouz, Zhong & Mirrokni 2024, "Titans: Learning to Memorize at Test Time", §3.1 eqs. 9-14
  surprise with momentum and forgetting, §3.2 the parallel form with gradients at the chunk's start):

      S_t = η_t S_{t−1} − θ_t u_t,    M_t = (1 − α_t) M_{t−1} + S_t

  theta (B, T, H) ≥ 0, log_eta = log η_t ≤ 0, log_decay = log(1 − α_t) ≤ 0 (B, T, H), carried in log space.
  State: the chunk's starting memory {"w1", ...}, the memory {"m_w1", ...}, the momentum {"s_w1", ...}, "pos".

Shapes of a state (per row, per head): "w1" (B, H, K, F), "b1" (B, H, F), "w2" (B, H, F, V), "b2" (B, H, V)
(F = V at depth 1, where "w2"/"b2" are absent; "b*" absent without biases); the depth and the biases are read
off the keys of ``initial_state``, which is required (the memory starts from learned weights).

Forms, one signature:

* ``naive_recurrent_*``: the specification. A loop over tokens; the inner gradient by autograd
  (torch.func.grad of the loss written plainly), the rule as written above.
* ``fused_recurrent_*``: the same loop with the gradient written by hand (the decode path).
* ``chunk_*``: the mini-batch (dual) form (TTT §2.5; Titans §3.2). Per chunk of b tokens, one forward and
  one hand-written backward of the memory at the chunk's starting weights give every token's gradient as
  rank-one factors per layer, u_s = x_s ⊗ δ_s (x_s the layer's input, δ_s the loss gradient at its output).
  The weights at token t are a linear combination of the carried tensors and of those factors,
  W_t = Σ_j c_j(t) Z_j + Σ_{s ≤ t} C_ts x_s ⊗ δ_s, so a query reads them without forming W_t:
  q W_t = Σ_j c_j(t) (q Z_j) + Σ_s C_ts (q · x_s) δ_s (an attention-like (b, b) product per layer, layer 2
  reading the query's hidden activation). C and the c_j come from the gates alone (TTT: C_ts = −τ_t lr_s;
  Titans: C = −(D_α ⊙ 1) (D_η) diag(θ) with D the pairwise decay ratios of the chunk, exps of differences of
  cumulative log-gates), computed for all chunks at once; a loop over chunks carries the state. Autograd
  differentiates the whole form, the hand-written inner gradient included (second order).
  Rows at different positions r (a sequence continued from a state mid-mini-batch) are shifted by their r
  (token t of row i sits at slot r_i + t of an aligned chunk grid; the empty slots carry zero rates, so they
  change nothing); every row's final state is read at its last token.

Chunk size 1 makes every form fully sequential: each gradient is taken at the weights of the previous token.
Computed in float32 (float64 for float64 inputs) whatever the input dtype; the state stays float32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.checkpoint import checkpoint

from rnnlab.ops._exp import decay_exp
from rnnlab.ops.chunk import acc_dtype, decay_ratios
from rnnlab.ops.varlen import varlen

__all__ = [f"{form}_{rule}" for rule in ("ttt", "titans", "yaad", "moneta") for form in ("naive_recurrent", "fused_recurrent", "chunk")]
__all__ += ["memory_keys", "layer_norm", "ACTIVATIONS", "LOSSES"]

LN_EPS = 1e-6  # the TTT authors' LN epsilon


# --------------------------------------------------------------------------- the memory model
def _gelu(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _gelu_grad(x: Tensor) -> Tensor:
    """d/dx of GELU's tanh form, 0.5 x (1 + tanh(c (x + 0.044715 x³)))."""
    c = math.sqrt(2 / math.pi)
    t = torch.tanh(c * (x + 0.044715 * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)


def _silu_grad(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


ACTIVATIONS = {"gelu": (_gelu, _gelu_grad), "silu": (F.silu, _silu_grad)}

# inner losses of the error e = f(k) − v (…, V), summed over the value dim: (value, derivative); a: the per-token
# parameter (Huber's δ_t, (…, 1)) or None; p: the ℓ_p exponent
def _inside(e, a):
    """‖e‖₂ <= δ, compared squared (no norm, whose slope at e = 0 is 0/0)."""
    return e.pow(2).sum(-1, keepdim=True) <= a * a


def _huber_value(e, a, p):
    return torch.where(_inside(e, a), 0.5 * e.pow(2).sum(-1, keepdim=True), a * e.abs().sum(-1, keepdim=True))[..., 0]


def _norm_beyond(e, a):
    """max(‖e‖₂, δ) from squares, floored at the dtype's tiny (an empty chunk slot has e = 0 and δ = 0)."""
    return torch.maximum(e.pow(2).sum(-1, keepdim=True), a * a).clamp_min(torch.finfo(e.dtype).tiny).sqrt()


def _huber_norm_value(e, a, p):
    return torch.where(_inside(e, a), 0.5 * e.pow(2).sum(-1, keepdim=True), a * _norm_beyond(e, a) - 0.5 * a * a)[..., 0]


def _huber_norm_grad(e, a, p):
    return e * (a / _norm_beyond(e, a))  # e · min(1, δ/‖e‖), no norm at e = 0


LOSSES = {
    "l2": (lambda e, a, p: e.pow(2).sum(-1), lambda e, a, p: 2 * e),                      # Titans: ‖f(k) − v‖²
    "half_l2": (lambda e, a, p: 0.5 * e.pow(2).sum(-1), lambda e, a, p: e),                # TTT: ½‖f(k) − v‖²
    "lp": (lambda e, a, p: e.abs().pow(p).sum(-1), lambda e, a, p: p * e * e.abs().pow(p - 2)),  # Moneta: ‖·‖_p^p, p >= 2
    # Yaad (Miras eq. 16): ∇ℓ₂ = e while ‖e‖₂ <= δ_t, else δ_t ∇ℓ₁ = δ_t sign(e) (jumps by up to √V at ‖e‖₂ = δ_t)
    "huber_sign": (_huber_value, lambda e, a, p: torch.where(_inside(e, a), e, a * torch.sign(e))),
    # Miras eq. 15: the Huber function of ‖e‖₂, gradient e · min(1, δ_t / ‖e‖₂) (continuous at the threshold)
    "huber": (_huber_norm_value, _huber_norm_grad),
}


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = LN_EPS) -> Tensor:
    """LayerNorm over the last dim with the given γ (weight) and β (bias), written out (the spec's LN)."""
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) * torch.rsqrt(var + eps) * weight + bias


def _layer_norm_grad(x: Tensor, dy: Tensor, weight: Tensor, eps: float = LN_EPS) -> Tensor:
    """∂/∂x of Σ dy · LN(x) (the authors' ln_fused_l2_bwd without the loss): x, dy (..., D), weight (..., D)."""
    D = x.shape[-1]
    mu = x.mean(-1, keepdim=True)
    rstd = torch.rsqrt((x - mu).pow(2).mean(-1, keepdim=True) + eps)
    xhat = (x - mu) * rstd
    gx = dy * weight
    return (gx - gx.mean(-1, keepdim=True) - xhat * (gx * xhat).sum(-1, keepdim=True) / D) * rstd


@dataclass(frozen=True)
class _Memory:
    """What the memory is: depth (1 or 2), biases, φ, the LN (γ, β given) and residual of f, the inner loss, the
    per-token gradient clipping."""

    depth: int
    bias: bool
    activation: str
    norm: bool
    residual: bool
    loss: str
    max_grad_norm: float | None = None
    p: float = 2.0

    @property
    def names(self) -> tuple[str, ...]:
        return memory_keys(self.depth, self.bias)


def memory_keys(depth: int, bias: bool) -> tuple[str, ...]:
    """The state keys of a memory's weights: ("w1", "b1", "w2", "b2") at depth 2 with biases."""
    return tuple(n for i in range(1, depth + 1) for n in (f"w{i}", f"b{i}") if bias or n[0] == "w")


def _layers(p: dict, mem: _Memory) -> list[tuple[Tensor, Tensor | None]]:
    return [(p[f"w{i}"], p.get(f"b{i}")) for i in range(1, mem.depth + 1)]


def _linear(h: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    """h (N, L, din) @ W (N, din, dout) + b (N, dout)."""
    return torch.bmm(h, W) if b is None else torch.baddbmm(b.unsqueeze(1), h, W)


def _outer(g: Tensor, x: Tensor, mem: _Memory, ln) -> Tensor:
    """f from g: [x +] [LN] g."""
    f = layer_norm(g, *ln) if mem.norm else g
    return x + f if mem.residual else f


def _model(p: dict, x: Tensor, mem: _Memory, ln) -> Tensor:
    """f(x; W): x (N, L, K), the weights p as in the state (rows N) -> (N, L, V)."""
    act = ACTIVATIONS[mem.activation][0]
    h = x
    for i, (W, b) in enumerate(_layers(p, mem)):
        h = _linear(h, W, b)
        if i < mem.depth - 1:
            h = act(h)
    return _outer(h, x, mem, ln)


def _inner_loss(p: dict, k: Tensor, v: Tensor, a, mem: _Memory, ln) -> Tensor:
    """Σ over rows and tokens of ℓ(W; k, v), written plainly (autograd takes the reference's gradients)."""
    return LOSSES[mem.loss][0](_model(p, k, mem, ln) - v, a, mem.p).sum()


def _key_pass(P: list, k: Tensor, v: Tensor, a, mem: _Memory, ln) -> tuple[list[Tensor], list[Tensor]]:
    """The inner gradient by hand. P the layers [(W, b)] at the anchor, k (N, L, K), v (N, L, V), a (N, L, 1) the
    loss's per-token parameter or None ->
    (xs, ds): per layer its inputs x_s (N, L, din) and the loss gradient δ_s at its output (N, L, dout), so
    ∇_W ℓ_s = x_s ⊗ δ_s and ∇_b ℓ_s = δ_s."""
    act, dact = ACTIVATIONS[mem.activation]
    xs, pre, h = [k], [], k
    for i, (W, b) in enumerate(P):
        h = _linear(h, W, b)
        if i < mem.depth - 1:
            pre.append(h)
            h = act(h)
            xs.append(h)
    g = h
    dg = LOSSES[mem.loss][1](_outer(g, k, mem, ln) - v, a, mem.p)
    if mem.norm:
        dg = _layer_norm_grad(g, dg, ln[0])
    ds = [dg]
    for i in range(mem.depth - 1, 0, -1):
        ds.insert(0, torch.bmm(ds[0], P[i][0].transpose(1, 2)) * dact(pre[i - 1]))
    if mem.max_grad_norm is not None:  # ‖x ⊗ δ‖² = ‖x‖² ‖δ‖² per token and layer (+ ‖δ‖² for the bias)
        sq = sum((x.pow(2).sum(-1) + (1 if mem.bias else 0)) * d.pow(2).sum(-1) for x, d in zip(xs, ds))
        scale = _clip_scale(sq, mem.max_grad_norm)[..., None]
        ds = [d * scale for d in ds]
    return xs, ds


def _clip_scale(sq_norm: Tensor, max_norm: float) -> Tensor:
    """min(1, max_norm / ‖u‖) from ‖u‖²: the max before the sqrt, so a zero gradient (an empty slot, a zero key)
    never meets sqrt's infinite slope at 0."""
    return max_norm / torch.maximum(sq_norm, torch.full_like(sq_norm, max_norm ** 2)).sqrt()


def _manual_grad(p: dict, k: Tensor, v: Tensor, a, mem: _Memory, ln) -> dict:
    """∇_W ℓ(W; k, v) summed over the L tokens, as a dict like p (the fused recurrent form's gradient)."""
    xs, ds = _key_pass(_layers(p, mem), k, v, a, mem, ln)
    out = {}
    for i, (x, d) in enumerate(zip(xs, ds), 1):
        out[f"w{i}"] = torch.bmm(x.transpose(1, 2), d)
        if mem.bias:
            out[f"b{i}"] = d.sum(1)
    return out


def _autograd_grad(p: dict, k: Tensor, v: Tensor, a, mem: _Memory, ln) -> dict:
    """The reference's gradient (one token, L = 1): autograd of the plain loss, then the clip by its norm."""
    u = torch.func.grad(_inner_loss)(p, k, v, a, mem, ln)
    if mem.max_grad_norm is not None:
        scale = _clip_scale(sum(t.pow(2).flatten(1).sum(1) for t in u.values()), mem.max_grad_norm)
        u = {n: _col(scale, t) * t for n, t in u.items()}
    return u


# --------------------------------------------------------------------------- the rules
class _TTT:
    """W_t = W_{t'} − τ_r G_t, G_t = G_{t−1} + lr_t u_t; carried: the accumulator G ("g_")."""

    carried = ("g_",)
    transform = None  # the carried tensors are the memory's weights

    def __init__(self, lr: Tensor, tau: Tensor):
        self.gates, self.tau = (lr,), tau

    # the specification, one token: W0 the anchor, u the gradient, gates (lr,) (N,), r (N,) the position,
    # done (N,) whether the token ends its mini-batch
    def step(self, W0: dict, carried: tuple, u: dict, gates: tuple, r: Tensor, done: Tensor):
        (G,), (lr,) = carried, gates
        G = {n: G[n] + _col(lr, G[n]) * u[n] for n in G}
        tau = self.tau[r]
        return {n: W0[n] - _col(tau, G[n]) * G[n] for n in W0}, (G,)

    @staticmethod
    def reset(carried: tuple, done: Tensor) -> tuple:
        (G,) = carried
        return ({n: torch.where(_col(done, t), torch.zeros_like(t), t) for n, t in G.items()},)

    @staticmethod
    def scale_grads(W0: list, ds: list) -> list:
        return ds

    # the chunk form: gates (NC, N, L) for all chunks at once
    def coefficients(self, gates: tuple, mask: Tensor) -> dict:
        (lr,) = gates
        L = lr.shape[-1]
        tril = torch.ones(L, L, dtype=torch.bool, device=lr.device).tril()
        C = torch.where(tril, -self.tau[:, None] * lr[..., None, :], 0.0)  # C_ts = −τ_t lr_s, s <= t
        return {"C": C, "lr": lr}

    def read_terms(self, c: dict, W0: list, carried: tuple) -> list:
        (G,) = carried
        return [(None, W0)] + ([(-self.tau, G)] if G is not None else [])

    def at(self, c: dict, W0: list, carried: tuple, xs, ds, p: Tensor) -> tuple:
        """The carried tensors after slot p (N,) of the chunk, no mini-batch end: G + Σ_{s<=p} lr_s u_s."""
        (G,) = carried
        L = c["lr"].shape[-1]
        upto = torch.arange(L, device=p.device) <= p[:, None]
        return (_combine([(None, G)] if G is not None else [], xs, ds, torch.where(upto, c["lr"], 0.0), W0),)

    def complete(self, c: dict, W0: list, carried: tuple, xs, ds) -> tuple[list, tuple, None]:
        """The state after a full mini-batch: W0 ← W_{b−1}, G ← 0 (None: a structural zero); no read rescale."""
        (G,) = carried
        terms = [(None, W0)] + ([(-self.tau[-1].expand(W0[0][0].shape[0]), G)] if G is not None else [])
        return _combine(terms, xs, ds, c["C"][:, -1], W0), (None,), None


class _Titans:
    """S_t = η_t S_{t−1} − θ_t u_t, M_t = (1 − α_t) M_{t−1} + S_t; carried: M ("m_"), S ("s_").

    Without momentum (log_eta None; carried M only): M_t = (1 − α_t) M_{t−1} − θ_t u_t, Yaad's rule (Miras eq. 26)
    and Moneta's accumulator. With ``q`` (Moneta, Miras eq. 24): M holds A_t / ν_{t'}, the accumulator over the
    normalizer of the chunk's start, ν = ‖A_{t'}‖_q^{q−2} (per layer, read off the anchor W_{t'} = A_{t'} / ν as
    ν = ‖W_{t'}‖_q^{(q−2)/(3−q)}), so the gradient enters divided by ν and the read inside a chunk uses that
    normalizer; the token that ends a chunk reads (and the next chunk starts from) the exact W = A / ‖A‖_q^{q−2}.
    With ``transform`` (Memora: a softmax per output column) M holds logits and the memory's weights are
    transform(M): the gradients are taken with respect to those weights and the chunk form reads transform(M_t),
    formed per token (:func:`_materialized_read`)."""

    def __init__(self, theta: Tensor, log_eta: Tensor | None, log_decay: Tensor, q: float | None = None, transform=None):
        self.momentum, self.q, self.transform = log_eta is not None, q, transform
        self.gates = (theta, log_eta, log_decay) if self.momentum else (theta, log_decay)
        self.carried = ("m_", "s_") if self.momentum else ("m_",)

    def _split(self, gates: tuple):
        return gates if self.momentum else (gates[0], None, gates[1])

    def _norm(self, W: Tensor) -> Tensor:
        """‖W‖_q per row of W (N, ...), scaled by its largest entry first (no under- or overflow of |W|^q)."""
        m = W.detach().abs().flatten(1).amax(1).clamp_min(torch.finfo(W.dtype).tiny)
        return m * (W / _col(m, W)).abs().pow(self.q).flatten(1).sum(1).pow(1 / self.q)

    def _nu(self, W: Tensor) -> Tensor:
        """ν per row of the anchor's weight W (N, din, dout): ‖W‖_q^{(q−2)/(3−q)}."""
        return self._norm(W).pow((self.q - 2) / (3 - self.q))

    def _normalized(self, M: Tensor, nu: Tensor) -> Tensor:
        """The factor s with W = A / ‖A‖_q^{q−2} = s M for A = ν M: s = ν^{3−q} / ‖M‖_q^{q−2} (N,)."""
        return nu.pow(3 - self.q) / self._norm(M).pow(self.q - 2)

    def step(self, W0: dict, carried: tuple, u: dict, gates: tuple, r: Tensor, done: Tensor):
        theta, log_eta, log_decay = self._split(gates)
        keep = log_decay.exp()
        if self.q is not None:  # the gradient of the accumulator, over the chunk start's normalizer
            u = {n: u[n] / _col(self._nu(W0["w" + n[1:]]), u[n]) for n in u}
        if self.momentum:
            M, S = carried
            S = {n: _col(log_eta.exp(), S[n]) * S[n] - _col(theta, u[n]) * u[n] for n in S}
            M = {n: _col(keep, M[n]) * M[n] + S[n] for n in M}
        else:
            (M,) = carried
            M = {n: _col(keep, M[n]) * M[n] - _col(theta, u[n]) * u[n] for n in M}
        if self.q is not None:  # the chunk's last token: the exact normalization
            s = {n: self._normalized(M[n], self._nu(W0[n])) for n in M}
            M = {n: torch.where(_col(done, M[n]), _col(s[n], M[n]) * M[n], M[n]) for n in M}
        return M, ((M, S) if self.momentum else (M,))

    @staticmethod
    def reset(carried: tuple, done: Tensor) -> tuple:
        return carried

    def scale_grads(self, W0: list, ds: list) -> list:
        if self.q is None:
            return ds
        return [d / _col(self._nu(W), d) for d, (W, _) in zip(ds, W0)]

    def coefficients(self, gates: tuple, mask: Tensor) -> dict:
        theta, log_eta, log_decay = self._split(gates)
        L = theta.shape[-1]
        tril = torch.ones(L, L, dtype=torch.bool, device=theta.device).tril()
        La = log_decay.cumsum(-1)[..., None]  # (NC, N, L, 1) inclusive
        Dal = torch.where(tril, decay_ratios(La, La), 0.0)  # Π_{r<p<=t} (1 − α_p)
        A = decay_exp(La[..., 0], max=0.0)                   # M_t = A_t M [+ e_t S] + Σ C_ts u_s
        if not self.momentum:
            return {"C": -Dal * theta[..., None, :], "A": A}
        Le = log_eta.cumsum(-1)[..., None]
        Deta = torch.where(tril, decay_ratios(Le, Le), 0.0)  # Π_{s<p<=t} η_p
        Dal = Dal * mask[..., None, :]                        # only real tokens add S_r to M
        P = decay_exp(Le[..., 0], max=0.0)                    # S_t = P_t S + Σ E_ts u_s
        return {"C": -(Dal @ Deta) * theta[..., None, :], "E": -Deta * theta[..., None, :], "A": A,
                "e": (Dal @ P[..., None])[..., 0], "P": P}

    def read_terms(self, c: dict, W0: list, carried: tuple) -> list:
        return [(c["A"], carried[0])] + ([(c["e"], carried[1])] if self.momentum else [])

    def _memory_at(self, c, carried, xs, ds, row, mat, like):
        terms = [(row(c["A"]), carried[0])] + ([(row(c["e"]), carried[1])] if self.momentum else [])
        M = _combine(terms, xs, ds, mat(c["C"]), like)
        if not self.momentum:
            return (M,)
        return M, _combine([(row(c["P"]), carried[1])], xs, ds, mat(c["E"]), like)

    def at(self, c: dict, W0: list, carried: tuple, xs, ds, p: Tensor) -> tuple:
        row = lambda t: t.gather(-1, p[:, None])[:, 0]  # noqa: E731  (N, L) at slot p
        mat = lambda t: t.gather(1, p[:, None, None].expand(-1, 1, t.shape[-1]))[:, 0]  # noqa: E731  (N, L, L) row p
        return self._memory_at(c, carried, xs, ds, row, mat, W0)

    def complete(self, c: dict, W0: list, carried: tuple, xs, ds) -> tuple[list, tuple, list | None]:
        new = self._memory_at(c, carried, xs, ds, lambda t: t[:, -1], lambda t: t[:, -1], W0)
        if self.q is None:
            return new[0], new, None
        s = [self._normalized(M, self._nu(W)) for (M, _), (W, _) in zip(new[0], W0)]
        M = [(_col(si, M) * M, None if b is None else _col(si, b) * b) for si, (M, b) in zip(s, new[0])]
        return M, (M,) + new[1:], s


def _effective(rule, W: dict) -> dict:
    """The memory's weights from a state's tensors: the rule's transform on the weight matrices (Memora's logits)."""
    if rule.transform is None:
        return W
    return {n: (rule.transform(t) if n[0] == "w" else t) for n, t in W.items()}


def checkpoint_tree(fn, *args):
    """checkpoint(fn, *args) (non-reentrant) with every tensor inside args' lists, tuples and dicts passed as an input of
    its own. checkpoint saves only top-level tensor arguments its way; a list or dict argument it keeps by strong
    reference in the graph until the backward, so a chunk loop passing its memories in lists would keep every chunk's
    memory alive (O(T) memory copies, the ATLAS chunk form's growth until this)."""
    leaves, spec = tree_flatten(args)
    return checkpoint(lambda *flat: fn(*tree_unflatten(list(flat), spec)), *leaves, use_reentrant=False)


def _materialized_read(transform, h: Tensor, C: Tensor, x: Tensor, d: Tensor, coefs: list, Zs: list) -> Tensor:
    """h (N, L, din) through the weights transform(Z_t) of every token t (N, din, dout), Z_t = Σ_j coef_j(t) Z_j +
    Σ_{s<=t} C_ts x_s ⊗ δ_s: the read when the weights are not linear in the carried tensors. coefs: (N, L) per
    term, Zs: (N, din, dout) per term. Token by token: a chunk's weights at once, (N, L, din, dout), are L times the
    memory, and those large short-lived blocks fragment the heap between the saved tensors of the chunks (Memora at
    B 4, d_model 256, T 512: 1.8 GB held after the forward against 0.76 GB token by token; docs/benchmarks.md)."""
    out = []
    for t in range(C.shape[1]):
        Z = torch.bmm(x.transpose(1, 2), d * C[:, t, :, None])
        for coef, Zj in zip(coefs, Zs):
            Z = Z.addcmul_(Zj, coef[:, t, None, None])
        out.append(torch.bmm(h[:, t, None], transform(Z))[:, 0])
    return torch.stack(out, 1)


def _col(c: Tensor, like: Tensor) -> Tensor:
    """A per-row scalar c (N,) shaped to broadcast against like (N, ...)."""
    return c.reshape(c.shape + (1,) * (like.dim() - 1))


def _combine(terms: list, xs: list, ds: list, c: Tensor, like: list) -> list:
    """Weights Σ_j coef_j Z_j + Σ_s c_s x_s ⊗ δ_s per layer (biases: Σ_j coef_j b_j + Σ_s c_s δ_s).
    terms: [(coef (N,) or None = 1, layers [(W, b)])]; xs, ds from _key_pass; c (N, L); like: layers with the
    memory's biases (None where it has none)."""
    out = []
    for i, (x, d) in enumerate(zip(xs, ds)):
        cd = d * c[..., None]
        W = torch.bmm(x.transpose(1, 2), cd)  # fresh: the terms accumulate into it in place (one pass each)
        b = cd.sum(1) if like[i][1] is not None else None
        for coef, Z in terms:
            ZW, Zb = Z[i]
            W = W.add_(ZW) if coef is None else W.addcmul_(ZW, _col(coef, ZW))
            if b is not None:
                b = b.add_(Zb) if coef is None else b.addcmul_(Zb, _col(coef, Zb))
        out.append((W, b))
    return out


# --------------------------------------------------------------------------- validation and state layout
def _check(q, k, v, gates: dict, state) -> None:
    for name, t in (("q", q), ("k", k), ("v", v), *gates.items()):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor")
    if q.dim() != 4:
        raise ValueError(f"q must be (B, T, H, K), got shape {tuple(q.shape)}")
    B, T, H, K = q.shape
    if tuple(k.shape) != (B, T, H, K):
        raise ValueError(f"k must be (B, T, H, K) = {(B, T, H, K)} like q, got {tuple(k.shape)}")
    if v.dim() != 4 or tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"v must be (B, T, H, V) with (B, T, H) = {(B, T, H)}, got {tuple(v.shape)}")
    for name, t in gates.items():
        if tuple(t.shape) != (B, T, H):
            raise ValueError(f"{name} must be (B, T, H) = {(B, T, H)}, got {tuple(t.shape)}")
    if not isinstance(state, dict) or "w1" not in state or "pos" not in state:
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"initial_state must be a dict holding the memory ('w1', ...) and 'pos', got {got}")


def _spec(state: dict, activation: str, ln_weight, ln_bias, residual: bool, loss: str, max_grad_norm, carried: tuple, K: int, V: int,
          H: int, p: float = 2.0) -> _Memory:
    depth = 2 if "w2" in state else 1
    bias = "b1" in state
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {loss!r}")
    if (ln_weight is None) != (ln_bias is None):
        raise ValueError("ln_weight and ln_bias go together (the LN's γ and β), got one of them")
    if max_grad_norm is not None and not (isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be None or > 0, got {max_grad_norm!r}")
    mem = _Memory(depth, bias, activation, ln_weight is not None, residual, loss, None if max_grad_norm is None else float(max_grad_norm),
                  float(p))
    want = {n for n in mem.names} | {c + n for c in carried for n in mem.names} | {"pos"}
    if set(state) != want:
        raise ValueError(f"initial_state must hold the keys {sorted(want)}, got {sorted(state)}")
    B = state["pos"].shape[0]
    F_ = state["w1"].shape[-1]
    shapes = {"w1": (B, H, K, F_), "b1": (B, H, F_), "w2": (B, H, F_, V), "b2": (B, H, V)}
    if depth == 1:
        shapes["w1"], shapes["b1"] = (B, H, K, V), (B, H, V)
    for n in mem.names:
        for c in ("",) + carried:
            if tuple(state[c + n].shape) != shapes[n]:
                raise ValueError(f"initial_state[{c + n!r}] must be {shapes[n]}, got {tuple(state[c + n].shape)}")
    if tuple(state["pos"].shape) != (B,) or state["pos"].is_floating_point():
        raise ValueError(f"initial_state['pos'] must be an int64 (B,) = ({B},) position tensor, got {state['pos'].dtype} {tuple(state['pos'].shape)}")
    if mem.residual and K != V:
        raise ValueError(f"a residual memory needs K == V, got K={K}, V={V}")
    if mem.norm and (tuple(ln_weight.shape) != (H, V) or tuple(ln_bias.shape) != (H, V)):
        raise ValueError(f"ln_weight and ln_bias must be (H, V) = {(H, V)}, got {tuple(ln_weight.shape)}, {tuple(ln_bias.shape)}")
    return mem


def _rows(t: Tensor, dt) -> Tensor:
    """A state tensor (B, H, ...) -> (B·H, ...) in the compute dtype."""
    return t.to(dt).reshape(-1, *t.shape[2:])


def _unrows(t: Tensor, B: int) -> Tensor:
    return t.reshape(B, -1, *t.shape[1:])


def _ln_rows(ln_weight, ln_bias, B: int, dt):
    """γ, β (H, V) -> (B·H, 1, V) (broadcast over a chunk's tokens), or None."""
    if ln_weight is None:
        return None
    return tuple(t.to(dt).unsqueeze(0).expand(B, *t.shape).reshape(-1, 1, t.shape[-1]) for t in (ln_weight, ln_bias))


# --------------------------------------------------------------------------- the recurrent forms
def _recurrent(rule, grad_fn, mem: _Memory, q, k, v, a, initial_state, ln_weight, ln_bias, L, output_final_state):
    """The token loop shared by the naive (autograd gradient) and fused (hand-written gradient) forms."""
    B, T, H, K = q.shape
    dt = acc_dtype(q)
    ln = _ln_rows(ln_weight, ln_bias, B, dt)
    W0 = {n: _rows(initial_state[n], dt) for n in mem.names}
    carried = tuple({n: _rows(initial_state[c + n], dt) for n in mem.names} for c in rule.carried)
    r = initial_state["pos"].repeat_interleave(H)
    rows = lambda t: rearrange(t.to(dt), "b t h ... -> t (b h) 1 ...")  # noqa: E731  one (N, 1, ...) slice per token
    gates = [rearrange(g.to(dt), "b t h -> t (b h)").unbind(0) for g in rule.gates]
    aa = rearrange(a.to(dt), "b t h -> t (b h) 1 1").unbind(0) if a is not None else [None] * T
    os = []
    for t, (qt, kt, vt) in enumerate(zip(rows(q).unbind(0), rows(k).unbind(0), rows(v).unbind(0))):
        u = grad_fn(_effective(rule, W0), kt, vt, aa[t], mem, ln)
        done = r + 1 == L
        Wt, carried = rule.step(W0, carried, u, tuple(g[t] for g in gates), r, done)
        os.append(_model(_effective(rule, Wt), qt, mem, ln)[:, 0])
        W0 = {n: torch.where(_col(done, W0[n]), Wt[n], W0[n]) for n in W0}
        carried = rule.reset(carried, done)
        r = torch.where(done, torch.zeros_like(r), r + 1)
    o = rearrange(torch.stack(os, 0), "t (b h) v -> b t h v", b=B).to(v.dtype)
    if not output_final_state:
        return o, None
    final = {n: _unrows(W0[n], B) for n in mem.names}
    for c, Z in zip(rule.carried, carried):
        final.update({c + n: _unrows(Z[n], B) for n in mem.names})
    final["pos"] = r.reshape(B, H)[:, 0].contiguous()
    return o, final


# --------------------------------------------------------------------------- the chunk form
def _chunk(rule, mem: _Memory, q, k, v, a, initial_state, ln_weight, ln_bias, L, output_final_state):
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = acc_dtype(q)
    ln = _ln_rows(ln_weight, ln_bias, B, dt)
    pos = initial_state["pos"].to(torch.int64)
    # token t of row i sits at slot pos_i + t of a grid of NC aligned chunks (empty slots: zero inputs and rates)
    host = pos.device.type == "cpu"
    lo, hi = (int(pos.min()), int(pos.max())) if host else (0, L - 1)
    NC = -(-(T + hi) // L)
    if host and lo == hi:
        place = lambda x: F.pad(x, (0, 0) * (x.dim() - 2) + (lo, NC * L - T - lo))  # noqa: E731
    else:
        slots = pos[:, None] + torch.arange(T, device=pos.device)  # (B, T)

        def place(x):
            idx = slots.reshape(B, T, *(1,) * (x.dim() - 2)).expand_as(x)
            return x.new_zeros(B, NC * L, *x.shape[2:]).scatter(1, idx, x)
    grid = lambda x: rearrange(place(x.to(dt)), "b (n l) h ... -> n (b h) l ...", l=L)  # noqa: E731
    qc, kc, vc = grid(q), grid(k), grid(v)
    ac = grid(a)[..., None].unbind(0) if a is not None else [None] * NC
    mask = grid(torch.ones(B, T, H, dtype=dt, device=q.device))
    coefs = rule.coefficients(tuple(grid(g) for g in rule.gates), mask)
    # layer 1 reads q · k_s of its own chunk: the (L, L) products for all chunks at once
    gram = torch.matmul(qc, kc.transpose(-1, -2))
    if mem.bias:
        gram = gram + 1
    gram = gram * coefs["C"]
    W0 = [(_rows(initial_state[f"w{i}"], dt), _rows(initial_state[f"b{i}"], dt) if mem.bias else None) for i in range(1, mem.depth + 1)]
    carried = tuple([(_rows(initial_state[f"{c}w{i}"], dt), _rows(initial_state[f"{c}b{i}"], dt) if mem.bias else None)
                     for i in range(1, mem.depth + 1)] for c in rule.carried)
    # where each row's last token lands: chunk n_last, slot p_last
    last = (pos + T - 1).repeat_interleave(H)
    n_last, p_last = last // L, last % L
    finals = sorted(set(n_last.tolist())) if host else [NC - 2, NC - 1]
    final = None
    outs = []
    act = ACTIVATIONS[mem.activation][0]
    # one unbind per tensor (indexing chunk n of a tensor that needs grad would allocate a full-size gradient
    # per chunk in the backward: O(T²))
    per_chunk = {key: val.unbind(0) for key, val in coefs.items()}
    last_slot = torch.arange(L, device=q.device) == L - 1
    for n, (qn, kn, vn, gram_n) in enumerate(zip(qc.unbind(0), kc.unbind(0), vc.unbind(0), gram.unbind(0))):
        c = {key: val[n] for key, val in per_chunk.items()}
        xs, ds = _key_pass(W0 if rule.transform is None else [(rule.transform(W), b) for W, b in W0], kn, vn, ac[n], mem, ln)
        ds = rule.scale_grads(W0, ds)
        W0_next, carried_next, last_scale = rule.complete(c, W0, carried, xs, ds)
        # read: layer i's pre-activation Σ_j coef_j (h Z_j) + Σ_s C_ts (h · x_s [+ 1]) δ_s
        h = qn
        for i in range(mem.depth):
            if rule.transform is not None:  # formed per token, recomputed in the backward (O(chunk) memory)
                terms = rule.read_terms(c, W0, carried)
                lin = checkpoint_tree(_materialized_read, rule.transform, h, c["C"], xs[i], ds[i], [co for co, _ in terms],
                                      [Z[i][0] for _, Z in terms])
                h = act(lin) if i < mem.depth - 1 else lin
                continue
            lin = None
            for coef, Z in rule.read_terms(c, W0, carried):
                part = _linear(h, *Z[i])
                if lin is None:
                    lin = part if coef is None else part.mul_(coef[..., None])
                else:
                    lin = lin.add_(part) if coef is None else lin.addcmul_(part, coef[..., None])
            A = gram_n if i == 0 else (torch.bmm(h, xs[i].transpose(1, 2)) + (1 if mem.bias else 0)) * c["C"]
            lin = torch.baddbmm(lin, A, ds[i]) if lin is not None else torch.bmm(A, ds[i])
            if last_scale is not None:  # the chunk's last token reads the renormalized memory
                lin = lin * torch.where(last_slot, last_scale[i][:, None], 1.0)[..., None]
            h = act(lin) if i < mem.depth - 1 else lin
        outs.append(h)
        if output_final_state and n in finals:
            here = _state_tuple(W0, rule.at(c, W0, carried, xs, ds, p_last), W0)
            cand = _state_tuple(W0_next, carried_next, W0)
            here = tuple(_where_rows(p_last == L - 1, a_, b_) for a_, b_ in zip(cand, here))
            final = here if final is None else tuple(_where_rows(n_last == n, a_, b_) for a_, b_ in zip(here, final))
        W0, carried = W0_next, carried_next
    g = rearrange(torch.stack(outs, 0), "n (b h) l v -> b (n l) h v", b=B)
    if host and lo == hi:
        g = g[:, lo:lo + T]
    else:
        g = g.gather(1, slots.reshape(B, T, 1, 1).expand(B, T, H, V))
    lnw = None if ln is None else tuple(t.reshape(B, H, V) for t in ln)
    o = _outer(g, q.to(dt), mem, None if lnw is None else (lnw[0][:, None], lnw[1][:, None]))
    o = o.to(v.dtype)
    if not output_final_state:
        return o, None
    out = {}
    for key, Z in zip(("",) + rule.carried, final):
        for i, (W, b) in enumerate(Z, 1):
            out[f"{key}w{i}"] = _unrows(W, B)
            if mem.bias:
                out[f"{key}b{i}"] = _unrows(b, B)
    out["pos"] = (pos + T) % L
    return o, out


def _state_tuple(W0: list, carried: tuple, like: list) -> tuple:
    """(anchor, *carried) with structural zeros (None) made real."""
    zeros = [(torch.zeros_like(W), None if b is None else torch.zeros_like(b)) for W, b in like]
    return (W0,) + tuple(zeros if Z is None else Z for Z in carried)


def _where_rows(cond: Tensor, a: list, b: list) -> list:
    """Per row (N,) of cond: layers of a where true, of b elsewhere."""
    return [(torch.where(_col(cond, Wa), Wa, Wb), None if ba is None else torch.where(_col(cond, ba), ba, bb))
            for (Wa, ba), (Wb, bb) in zip(a, b)]


# --------------------------------------------------------------------------- public ops
def _run(form, rule, gates: dict, q, k, v, a, initial_state, ln_weight, ln_bias, residual, activation, loss, max_grad_norm, L,
         output_final_state, p: float = 2.0):
    """Validate, then run ``form`` ("naive", "fused" or "chunk") of ``rule``."""
    _check(q, k, v, gates, initial_state)
    if not isinstance(L, int) or L < 1:
        raise ValueError(f"chunk_size must be a positive int, got {L!r}")
    mem = _spec(initial_state, activation, ln_weight, ln_bias, residual, loss, max_grad_norm, rule.carried, q.shape[-1], v.shape[-1],
                q.shape[2], p)
    if form == "chunk":
        return _chunk(rule, mem, q, k, v, a, initial_state, ln_weight, ln_bias, L, output_final_state)
    return _recurrent(rule, _autograd_grad if form == "naive" else _manual_grad, mem, q, k, v, a, initial_state, ln_weight, ln_bias, L,
                      output_final_state)


_FORM_DOC = {"naive": "The specification: a token loop, the inner gradient by autograd.",
             "fused": "A token loop with the inner gradient written by hand (the decode path).",
             "chunk": "The chunkwise (mini-batch, dual) form (module docstring)."}


def _document(doc: str, *fns) -> None:
    for fn, form in zip(fns, ("naive", "fused", "chunk")):
        fn.__doc__ = doc + "\n    " + _FORM_DOC[form] + "\n" + (fn.__doc__ or "")


# --- TTT
def _tau(tau) -> Tensor:
    if not isinstance(tau, Tensor) or tau.dim() != 1 or tau.numel() < 1 or not tau.is_floating_point():
        raise ValueError(f"tau must be a 1-D float tensor of the b token scales (b >= 1), got {tau!r}")
    return tau


def _ttt(form, q, k, v, lr, tau, initial_state, ln_weight, ln_bias, residual, activation, loss, max_grad_norm, output_final_state):
    tau = _tau(tau)
    return _run(form, _TTT(lr, tau.to(acc_dtype(q))), {"lr": lr}, q, k, v, None, initial_state, ln_weight, ln_bias, residual, activation,
                loss, max_grad_norm, tau.numel(), output_final_state)


@varlen(("q", "k", "v", "lr"))
def naive_recurrent_ttt(q, k, v, lr, tau, initial_state, ln_weight=None, ln_bias=None, residual=False, activation="gelu",
                        loss="half_l2", max_grad_norm=None, output_final_state=False):
    return _ttt("naive", q, k, v, lr, tau, initial_state, ln_weight, ln_bias, residual, activation, loss, max_grad_norm, output_final_state)


@varlen(("q", "k", "v", "lr"))
def fused_recurrent_ttt(q, k, v, lr, tau, initial_state, ln_weight=None, ln_bias=None, residual=False, activation="gelu",
                        loss="half_l2", max_grad_norm=None, output_final_state=False):
    return _ttt("fused", q, k, v, lr, tau, initial_state, ln_weight, ln_bias, residual, activation, loss, max_grad_norm, output_final_state)


@varlen(("q", "k", "v", "lr"))
def chunk_ttt(q, k, v, lr, tau, initial_state, ln_weight=None, ln_bias=None, residual=False, activation="gelu",
              loss="half_l2", max_grad_norm=None, output_final_state=False):
    return _ttt("chunk", q, k, v, lr, tau, initial_state, ln_weight, ln_bias, residual, activation, loss, max_grad_norm, output_final_state)


_document("""q, k (B, T, H, K), v (B, T, H, V), lr (B, T, H) the inner learning rates, tau (b,) the token scales
    (b = the mini-batch size), initial_state (dict: "w1"[, "b1", "w2", "b2"], "g_w1", ..., "pos"), ln_weight /
    ln_bias (H, V) or None -> (o (B, T, H, V), final_state or None). TTT's rule (module docstring):
    W_t = W_{t'} − τ_r Σ_{s=t'}^{t} lr_s ∇ℓ(W_{t'}; k_s, v_s), o_t = f(q_t; W_t).""", naive_recurrent_ttt, fused_recurrent_ttt, chunk_ttt)


# --- Titans
def _titans(form, q, k, v, theta, log_eta, log_decay, initial_state, ln_weight, ln_bias, residual, activation, loss, max_grad_norm,
            chunk_size, output_final_state):
    gates = {"theta": theta, "log_eta": log_eta, "log_decay": log_decay}
    return _run(form, _Titans(theta, log_eta, log_decay), gates, q, k, v, None, initial_state, ln_weight, ln_bias, residual, activation,
                loss, max_grad_norm, chunk_size, output_final_state)


@varlen(("q", "k", "v", "theta", "log_eta", "log_decay"))
def naive_recurrent_titans(q, k, v, theta, log_eta, log_decay, initial_state, ln_weight=None, ln_bias=None, residual=False,
                           activation="gelu", loss="l2", max_grad_norm=None, chunk_size=16, output_final_state=False):
    return _titans("naive", q, k, v, theta, log_eta, log_decay, initial_state, ln_weight, ln_bias, residual, activation, loss,
                   max_grad_norm, chunk_size, output_final_state)


@varlen(("q", "k", "v", "theta", "log_eta", "log_decay"))
def fused_recurrent_titans(q, k, v, theta, log_eta, log_decay, initial_state, ln_weight=None, ln_bias=None, residual=False,
                           activation="gelu", loss="l2", max_grad_norm=None, chunk_size=16, output_final_state=False):
    return _titans("fused", q, k, v, theta, log_eta, log_decay, initial_state, ln_weight, ln_bias, residual, activation, loss,
                   max_grad_norm, chunk_size, output_final_state)


@varlen(("q", "k", "v", "theta", "log_eta", "log_decay"))
def chunk_titans(q, k, v, theta, log_eta, log_decay, initial_state, ln_weight=None, ln_bias=None, residual=False,
                 activation="gelu", loss="l2", max_grad_norm=None, chunk_size=16, output_final_state=False):
    return _titans("chunk", q, k, v, theta, log_eta, log_decay, initial_state, ln_weight, ln_bias, residual, activation, loss,
                   max_grad_norm, chunk_size, output_final_state)


_document("""q, k (B, T, H, K), v (B, T, H, V), theta (B, T, H) the inner learning rates θ_t, log_eta (B, T, H) log of the
    momentum decay η_t, log_decay (B, T, H) log(1 − α_t) of the forgetting gate, initial_state (dict: "w1", ...,
    "m_w1", ..., "s_w1", ..., "pos"), chunk_size b -> (o (B, T, H, V), final_state or None). Titans' rule (module
    docstring): S_t = η_t S_{t−1} − θ_t ∇ℓ(M_{t'}; k_t, v_t), M_t = (1 − α_t) M_{t−1} + S_t, o_t = f(q_t; M_t).""",
          naive_recurrent_titans, fused_recurrent_titans, chunk_titans)


# --- Miras: Yaad (Huber attentional bias, ℓ2 retention) and Moneta (ℓ_p bias, ℓ_q retention)
def _yaad(form, q, k, v, theta, log_decay, delta, initial_state, ln_weight, ln_bias, residual, activation, huber, max_grad_norm,
          chunk_size, output_final_state):
    if huber not in ("norm", "sign"):
        raise ValueError(f"huber must be 'norm' (Miras eq. 15) or 'sign' (eq. 16), got {huber!r}")
    gates = {"theta": theta, "log_decay": log_decay, "delta": delta}
    return _run(form, _Titans(theta, None, log_decay), gates, q, k, v, delta, initial_state, ln_weight, ln_bias, residual, activation,
                "huber" if huber == "norm" else "huber_sign", max_grad_norm, chunk_size, output_final_state)


@varlen(("q", "k", "v", "theta", "log_decay", "delta"))
def naive_recurrent_yaad(q, k, v, theta, log_decay, delta, initial_state, ln_weight=None, ln_bias=None, residual=False,
                         activation="gelu", huber="norm", max_grad_norm=None, chunk_size=16, output_final_state=False):
    return _yaad("naive", q, k, v, theta, log_decay, delta, initial_state, ln_weight, ln_bias, residual, activation, huber, max_grad_norm,
                 chunk_size, output_final_state)


@varlen(("q", "k", "v", "theta", "log_decay", "delta"))
def fused_recurrent_yaad(q, k, v, theta, log_decay, delta, initial_state, ln_weight=None, ln_bias=None, residual=False,
                         activation="gelu", huber="norm", max_grad_norm=None, chunk_size=16, output_final_state=False):
    return _yaad("fused", q, k, v, theta, log_decay, delta, initial_state, ln_weight, ln_bias, residual, activation, huber, max_grad_norm,
                 chunk_size, output_final_state)


@varlen(("q", "k", "v", "theta", "log_decay", "delta"))
def chunk_yaad(q, k, v, theta, log_decay, delta, initial_state, ln_weight=None, ln_bias=None, residual=False,
               activation="gelu", huber="norm", max_grad_norm=None, chunk_size=16, output_final_state=False):
    return _yaad("chunk", q, k, v, theta, log_decay, delta, initial_state, ln_weight, ln_bias, residual, activation, huber, max_grad_norm,
                 chunk_size, output_final_state)


_document("""q, k (B, T, H, K), v (B, T, H, V), theta (B, T, H) the inner learning rates η_t, log_decay (B, T, H) log of the
    retention α_t, delta (B, T, H) > 0 the Huber thresholds δ_t, initial_state (dict: "w1", ..., "m_w1", ..., "pos"),
    huber, chunk_size b -> (o, final_state or None). Yaad's rule (Behrouz et al. 2025, "It's All Connected", eq. 26):
    M_t = α_t M_{t−1} − η_t g_t, gradients at the chunk's starting memory M_{t'}, with the error e = f(k) − v and
    huber="norm": g = ∇ H_δ(‖e‖₂) = e · min(1, δ_t / ‖e‖₂) (eq. 15, continuous at ‖e‖₂ = δ_t), or huber="sign":
    g = e while ‖e‖₂ <= δ_t, else δ_t ∇‖e‖₁ = δ_t sign(e) (eq. 16).""", naive_recurrent_yaad, fused_recurrent_yaad, chunk_yaad)


def _moneta(form, q, k, v, theta, log_decay, initial_state, ln_weight, ln_bias, residual, activation, p, q_norm, max_grad_norm, chunk_size,
            output_final_state):
    if not (isinstance(p, (int, float)) and p >= 2):
        raise ValueError(f"p must be a number >= 2 (the ℓ_p bias's gradient p·e·|e|^(p−2) is then smooth), got {p!r}")
    if not (isinstance(q_norm, (int, float)) and q_norm >= 2 and q_norm != 3):
        raise ValueError(f"q_norm must be a number >= 2 other than 3 (W = A / ‖A‖_q^(q−2) has unit norm at q = 3, A cannot be "
                         f"recovered from it), got {q_norm!r}")
    if "b1" in initial_state and q_norm != 2:
        raise ValueError("Moneta's ℓ_q normalization is over the weight matrices: a memory without biases is expected")
    gates = {"theta": theta, "log_decay": log_decay}
    return _run(form, _Titans(theta, None, log_decay, q=float(q_norm)), gates, q, k, v, None, initial_state, ln_weight, ln_bias, residual,
                activation, "lp", max_grad_norm, chunk_size, output_final_state, p=p)


@varlen(("q", "k", "v", "theta", "log_decay"))
def naive_recurrent_moneta(q, k, v, theta, log_decay, initial_state, ln_weight=None, ln_bias=None, residual=False, activation="gelu",
                           p=3.0, q_norm=4.0, max_grad_norm=None, chunk_size=16, output_final_state=False):
    return _moneta("naive", q, k, v, theta, log_decay, initial_state, ln_weight, ln_bias, residual, activation, p, q_norm, max_grad_norm,
                   chunk_size, output_final_state)


@varlen(("q", "k", "v", "theta", "log_decay"))
def fused_recurrent_moneta(q, k, v, theta, log_decay, initial_state, ln_weight=None, ln_bias=None, residual=False, activation="gelu",
                           p=3.0, q_norm=4.0, max_grad_norm=None, chunk_size=16, output_final_state=False):
    return _moneta("fused", q, k, v, theta, log_decay, initial_state, ln_weight, ln_bias, residual, activation, p, q_norm, max_grad_norm,
                   chunk_size, output_final_state)


@varlen(("q", "k", "v", "theta", "log_decay"))
def chunk_moneta(q, k, v, theta, log_decay, initial_state, ln_weight=None, ln_bias=None, residual=False, activation="gelu",
                 p=3.0, q_norm=4.0, max_grad_norm=None, chunk_size=16, output_final_state=False):
    return _moneta("chunk", q, k, v, theta, log_decay, initial_state, ln_weight, ln_bias, residual, activation, p, q_norm, max_grad_norm,
                   chunk_size, output_final_state)


_document("""q, k (B, T, H, K), v (B, T, H, V), theta (B, T, H) the inner learning rates η_t, log_decay (B, T, H) log of the
    retention α_t, initial_state (dict: "w1", ..., "m_w1", ..., "pos"; no biases), p, q_norm, chunk_size b ->
    (o, final_state or None). Moneta's rule (Behrouz et al. 2025, "It's All Connected", eqs. 24-25):
    A_t = α_t A_{t−1} − η_t ∇‖f(k_t) − v_t‖_p^p at W_{t'}, W_t = A_t / ‖A_t‖_q^{q−2} per weight matrix; inside a chunk
    the normalizer of its start (the paper applies the normalization at chunk boundaries), exact at the chunk's last
    token (so b = 1 is eq. 24 exactly). The state holds W_{t'} ("w*") and A_t / ‖A_{t'}‖_q^{q−2} ("m_w*").""",
          naive_recurrent_moneta, fused_recurrent_moneta, chunk_moneta)


def column_softmax(Z: Tensor) -> Tensor:
    """Memora's weights from logits Z (..., din, dout): a softmax over the inputs of each output unit (the KL
    retention keeps every column of W on the simplex ‖w‖₁ = c, Miras eq. 21, with c = 1)."""
    return torch.softmax(Z, dim=-2)


def _memora(form, q, k, v, theta, log_decay, initial_state, ln_weight, ln_bias, residual, activation, max_grad_norm, chunk_size,
            output_final_state):
    if "b1" in initial_state:
        raise ValueError("Memora's softmax retention acts on weight matrices: a memory without biases is expected")
    gates = {"theta": theta, "log_decay": log_decay}
    return _run(form, _Titans(theta, None, log_decay, transform=column_softmax), gates, q, k, v, None, initial_state, ln_weight, ln_bias,
                residual, activation, "l2", max_grad_norm, chunk_size, output_final_state)


@varlen(("q", "k", "v", "theta", "log_decay"))
def naive_recurrent_memora(q, k, v, theta, log_decay, initial_state, ln_weight=None, ln_bias=None, residual=False, activation="gelu",
                           max_grad_norm=None, chunk_size=16, output_final_state=False):
    return _memora("naive", q, k, v, theta, log_decay, initial_state, ln_weight, ln_bias, residual, activation, max_grad_norm, chunk_size,
                   output_final_state)


@varlen(("q", "k", "v", "theta", "log_decay"))
def fused_recurrent_memora(q, k, v, theta, log_decay, initial_state, ln_weight=None, ln_bias=None, residual=False, activation="gelu",
                           max_grad_norm=None, chunk_size=16, output_final_state=False):
    return _memora("fused", q, k, v, theta, log_decay, initial_state, ln_weight, ln_bias, residual, activation, max_grad_norm, chunk_size,
                   output_final_state)


@varlen(("q", "k", "v", "theta", "log_decay"))
def chunk_memora(q, k, v, theta, log_decay, initial_state, ln_weight=None, ln_bias=None, residual=False, activation="gelu",
                 max_grad_norm=None, chunk_size=16, output_final_state=False):
    return _memora("chunk", q, k, v, theta, log_decay, initial_state, ln_weight, ln_bias, residual, activation, max_grad_norm, chunk_size,
                   output_final_state)


_document("""q, k (B, T, H, K), v (B, T, H, V), theta (B, T, H) the inner learning rates η_t, log_decay (B, T, H) log of the
    retention α_t, initial_state (dict of logits: "w1", ..., "m_w1", ..., "pos"; no biases), chunk_size b ->
    (o, final_state or None). Memora's rule (Behrouz et al. 2025, "It's All Connected", eq. 27):
    W_t = Softmax(α_t log W_{t−1} − η_t ∇‖f(k_t) − v_t‖²) per output column. Since a softmax ignores a constant per
    column, log W_{t−1} can be replaced by the logits Z_{t−1}: Z_t = α_t Z_{t−1} − η_t ∇ℓ(W_{t'}), W_t = Softmax(Z_t),
    a linear recurrence on the logits (the state) with the gradients at the chunk's start W_{t'}; b = 1 is eq. 27
    exactly. The chunk form forms W_t per token (memory O(b·din·dout) per chunk, recomputed in the backward).""",
          naive_recurrent_memora, fused_recurrent_memora, chunk_memora)
__all__ += ["naive_recurrent_memora", "fused_recurrent_memora", "chunk_memora", "column_softmax"]
