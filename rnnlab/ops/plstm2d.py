"""pLSTM's Source-Transition-Mark linear recurrence on a 2-D grid (Pöppel, Freinschlag, Schmied, Lin & Hochreiter
2025, "pLSTM: parallelizable Linear Source Transition Mark networks", Sec. 3-4: the line-graph recurrence of a DAG,
here the grid DAG whose node (x, y) has incoming edges from its left (x-1, y) and upper (x, y-1) neighbours and
outgoing edges "r" (to x+1) and "d" (to y+1)). States live on edges; per head, with C (K, V):

    C^r_xy = T^rl_xy C^r_{x-1,y} + T^ru_xy C^d_{x,y-1} + S^r_xy k_xy v_xyᵀ        (source S, transition T)
    C^d_xy = T^dl_xy C^r_{x-1,y} + T^du_xy C^d_{x,y-1} + S^d_xy k_xy v_xyᵀ
    y_xy   = scale q_xyᵀ (M^l_xy C^r_{x-1,y} + M^u_xy C^d_{x,y-1}) + D_xy scale (q_xy · k_xy) v_xy    (mark M, direct D)

    q, k (B, X, Y, H, K), v (B, X, Y, H, V), S (B, X, Y, H, 2) [r, d], T (B, X, Y, H, 2, 2) [out r/d, in l/u],
    M (B, X, Y, H, 2) [l, u], D (B, X, Y, H); initial_state (C_left (B, Y, H, K, V), C_top (B, X, H, K, V)): the
    states on the edges entering the grid from the left of column 0 and above row 0 (None: zeros)
    -> (y (B, X, Y, H, V), (C_right (B, Y, H, K, V), C_bottom (B, X, H, K, V))): the edges leaving the grid.

The gates are scalars per head (the authors' state-tracking dims J = 1). What bounds the state (P-mode: for each
incoming edge, sum over outgoing |T| <= 1; D-mode: a multitree line graph, each |T| <= 1) is the layer's business
(rnnlab/layers/plstm2d.py); the op takes any T. A grid is one sequence (no packing); the four orientations of the
paper are flips of the grid (the layer's).

Forms (one signature; rnnlab.ops.forms):

- ``reference`` (``plstm2d_ref``): cell by cell in raster order (a topological order of the DAG), differentiated by
  autograd step by step: the specification.
- ``wavefront``: the cells of one anti-diagonal x + y = d depend only on the diagonal before, so the X + Y - 1
  diagonals run in turn, each one batched over its cells (the cells are gathered once into diagonal order and split
  into one view per diagonal: no padding cells). X + Y - 1 steps instead of X·Y; autograd.
  The paper's hierarchical (log-depth) form is not built.

Inputs in bfloat16/float16 are computed in float32 (float64 stays float64); y has v's dtype, the states the compute
dtype.
"""
from __future__ import annotations

import torch
from einops import einsum, rearrange
from torch import Tensor

from rnnlab.ops.chunk import acc_dtype
from rnnlab.ops.forms import check_form

__all__ = ["plstm2d", "plstm2d_ref", "BACKENDS"]

BACKENDS = ("auto", "wavefront", "reference")  # rnnlab.ops.forms


def _check(q, k, v, S, T, M, D, h0, who: str) -> None:
    if q.dim() != 5 or k.shape != q.shape or v.dim() != 5 or v.shape[:4] != q.shape[:4]:
        raise ValueError(f"{who}: q, k must be (B, X, Y, H, K) and v (B, X, Y, H, V) alike, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    grid = tuple(q.shape[:4])
    for name, g, tail in (("S", S, (2,)), ("T", T, (2, 2)), ("M", M, (2,)), ("D", D, ())):
        if tuple(g.shape) != grid + tail:
            raise ValueError(f"{who}: gate {name} must be (B, X, Y, H{''.join(f', {n}' for n in tail)}) = {grid + tail}, "
                             f"got {tuple(g.shape)}")
    if q.shape[1] == 0 or q.shape[2] == 0:
        raise ValueError(f"{who}: expects a grid of X, Y >= 1, got {tuple(q.shape[1:3])}")
    if h0 is not None:
        B, X, Y, H, K = q.shape
        want = ((B, Y, H, K, v.shape[-1]), (B, X, H, K, v.shape[-1]))
        if len(h0) != 2 or tuple(h0[0].shape) != want[0] or tuple(h0[1].shape) != want[1]:
            raise ValueError(f"{who}: initial_state must be (C_left {want[0]}, C_top {want[1]}), got "
                             f"{[tuple(t.shape) for t in h0]}")


def _prepare(q, k, v, S, T, M, D, h0):
    dt = acc_dtype(v)
    for t in (q, k, S, T, M, D):
        dt = torch.promote_types(dt, acc_dtype(t))
    B, X, Y, H, K = q.shape
    if h0 is None:
        h0 = (q.new_zeros(B, Y, H, K, v.shape[-1], dtype=dt), q.new_zeros(B, X, H, K, v.shape[-1], dtype=dt))
    return [t.to(dt) for t in (q, k, v, S, T, M, D)], tuple(t.to(dt) for t in h0)


def plstm2d_ref(q: Tensor, k: Tensor, v: Tensor, S: Tensor, T: Tensor, M: Tensor, D: Tensor,
                initial_state: tuple[Tensor, Tensor] | None = None, scale: float | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Shapes as the module doc: the recurrence cell by cell, rows of x in turn, y inside (the specification)."""
    _check(q, k, v, S, T, M, D, initial_state, "plstm2d_ref")
    out_dtype = v.dtype
    (q, k, v, S, T, M, D), (C_left, C_top) = _prepare(q, k, v, S, T, M, D, initial_state)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    X, Y = q.shape[1], q.shape[2]
    g = lambda t, x, y, *i: t[(slice(None), x, y, slice(None)) + i][..., None, None]  # noqa: E731  gate (B, H, 1, 1)
    right = list(C_left.unbind(1))  # right[y]: the r-edge entering (x, y) from the left
    bottom = []
    rows = []
    for x in range(X):
        down = C_top[:, x]  # the d-edge entering (x, y) from above
        row = []
        for y in range(Y):
            qxy, kxy, vxy = q[:, x, y], k[:, x, y], v[:, x, y]
            kv = kxy[..., :, None] * vxy[..., None, :]
            seen = g(M, x, y, 0) * right[y] + g(M, x, y, 1) * down
            row.append(scale * (torch.einsum("bhk,bhkv->bhv", qxy, seen)
                                + D[:, x, y, :, None] * (qxy * kxy).sum(-1, keepdim=True) * vxy))
            r = g(T, x, y, 0, 0) * right[y] + g(T, x, y, 0, 1) * down + g(S, x, y, 0) * kv
            down = g(T, x, y, 1, 0) * right[y] + g(T, x, y, 1, 1) * down + g(S, x, y, 1) * kv
            right[y] = r
        rows.append(torch.stack(row, 1))
        bottom.append(down)
    return torch.stack(rows, 1).to(out_dtype), (torch.stack(right, 1), torch.stack(bottom, 1))


def _diagonals(X: int, Y: int, device) -> tuple[Tensor, Tensor, list[int], list[int]]:
    """The cells in wavefront order: -> (order (X·Y,): flat index x·Y + y of the cells of diagonal 0, 1, ..., each by
    increasing x; back (X·Y,): where each flat cell lies in that order; counts and first x of every diagonal)."""
    lo = [max(0, d - Y + 1) for d in range(X + Y - 1)]
    counts = [min(d, X - 1) + 1 - lo[d] for d in range(X + Y - 1)]
    order = torch.tensor([x * Y + d - x for d in range(X + Y - 1) for x in range(lo[d], lo[d] + counts[d])], device=device)
    return order, torch.argsort(order), counts, lo


def plstm2d(q: Tensor, k: Tensor, v: Tensor, S: Tensor, T: Tensor, M: Tensor, D: Tensor,
            initial_state: tuple[Tensor, Tensor] | None = None, scale: float | None = None,
            backend: str = "auto") -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Shapes as the module doc. backend: "auto" (= "wavefront"), "wavefront", "reference"; scale None = K^-1/2."""
    form = check_form(backend, BACKENDS, "plstm2d")
    if form == "reference":
        return plstm2d_ref(q, k, v, S, T, M, D, initial_state, scale)
    _check(q, k, v, S, T, M, D, initial_state, "plstm2d")
    out_dtype = v.dtype
    (q, k, v, S, T, M, D), (C_left, C_top) = _prepare(q, k, v, S, T, M, D, initial_state)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    B, X, Y = q.shape[:3]
    order, back, counts, lo = _diagonals(X, Y, q.device)
    # cells in wavefront order, then one slice per diagonal, cut once (views; their backward is one concatenation)
    diag = lambda t: t.flatten(1, 2)[:, order].split(counts, 1)  # noqa: E731
    now = scale * (D * (q * k).sum(-1))[..., None] * v  # the direct term of every cell at once
    kv = diag(einsum(k, v, "b x y h k, b x y h v -> b x y h k v"))
    q, S, T, M = diag(scale * q[..., None]), diag(S[..., None, None]), diag(T[..., None, None]), diag(M[..., None, None])
    ys, right, bottom = [], [None] * Y, [None] * X
    for d in range(X + Y - 1):
        # diagonal d holds the cells x = lo[d] .. lo[d] + counts[d] - 1 (y = d - x); the diagonal before, from lo[d-1].
        # Cell (x, d-x) reads the r-edge of (x-1, d-x) (the left boundary at x = 0) and the d-edge of (x, d-x-1)
        # (the upper boundary at y = 0); the gates' 2 x 2 pairs as elementwise products (cheaper than an einsum).
        hi = lo[d] + counts[d]
        r_in = r_prev[:, :hi - 1 - lo[d - 1]] if d else C_left[:, :0]
        if d < Y:
            r_in = torch.cat([C_left[:, d:d + 1], r_in], 1)
        d_in = d_prev[:, lo[d] - lo[d - 1]:min(hi, d) - lo[d - 1]] if d else C_top[:, :0]
        if d < X:
            d_in = torch.cat([d_in, C_top[:, d:d + 1]], 1)
        (Sr, Sd), ((Trl, Tru), (Tdl, Tdu)), (Ml, Mu) = S[d].unbind(3), (t.unbind(3) for t in T[d].unbind(3)), M[d].unbind(3)
        ys.append((q[d] * (Ml * r_in + Mu * d_in)).sum(-2))
        r_prev = Trl * r_in + Tru * d_in + Sr * kv[d]
        d_prev = Tdl * r_in + Tdu * d_in + Sd * kv[d]
        if d >= X - 1:  # cell (X-1, d-X+1) ends a row of the grid's r-edges
            right[d - X + 1] = r_prev[:, X - 1 - lo[d]]
        if d >= Y - 1:  # cell (d-Y+1, Y-1) ends a column's d-edges
            bottom[d - Y + 1] = d_prev[:, d - Y + 1 - lo[d]]
    y = torch.cat(ys, 1)[:, back] + now.flatten(1, 2)
    return rearrange(y, "b (x y) h v -> b x y h v", x=X).to(out_dtype), (torch.stack(right, 1), torch.stack(bottom, 1))
