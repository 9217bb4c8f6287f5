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
- ``hierarchical``: the paper's parallelization of the grid (its log-time form for regular grids, in the formulation of
  the authors' code, github.com/ml-jku/plstm ``src/plstm/torch/plstm_2d.py``: transition / source / mark / gating
  matrices of ever larger meta-cells, level by level, then a recurrence over the meta-cells; written here from the
  equations). A block of cells is one linear map from the states on its entering edges [l, u] and its cells' k vᵀ
  to the states on its leaving edges [r, d] and its cells' outputs, in four parts: transition T (edges -> edges),
  source S (cells -> edges), mark M (edges -> cells) and gating G (cells -> cells; the direct D on its diagonal).
  A cell is the block [[T, S], [M, D]]; two neighbouring blocks join by routing the first one's leaving edges on
  the shared side into the second one's entering edges (a matrix product per part, ``_merge``), so log2(block)
  levels along each axis, each batched over all blocks, build blocks of up to ``block`` x ``block`` cells (the grid
  padded with pass-through cells to multiples of the block side, a power of two). The blocks' boundary states then
  run the wavefront above over the grid of blocks (one step when one block holds the grid), and each cell reads
  y = qᵀ (M · the block's entering states) + Σ_c' G_cc' (q · k_c') v_c' (a masked attention inside the block).
  Memory and work grow with the block's area squared (G); autograd.

Inputs in bfloat16/float16 are computed in float32 (float64 stays float64); y has v's dtype, the states the compute
dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from rnnlab.ops.forms import check_form
from rnnlab.ops.plstm import check_inputs, promoted

__all__ = ["plstm2d", "plstm2d_ref", "BACKENDS"]

BACKENDS = ("auto", "wavefront", "hierarchical", "reference")  # rnnlab.ops.forms


def _check(q, k, v, S, T, M, D, h0, who: str) -> None:
    check_inputs(q, k, v, {"S": (S, (2,)), "T": (T, (2, 2)), "M": (M, (2,)), "D": (D, ())}, ("X", "Y"), who)
    if h0 is not None:
        B, X, Y, H, K = q.shape
        want = ((B, Y, H, K, v.shape[-1]), (B, X, H, K, v.shape[-1]))
        if len(h0) != 2 or tuple(h0[0].shape) != want[0] or tuple(h0[1].shape) != want[1]:
            raise ValueError(f"{who}: initial_state must be (C_left {want[0]}, C_top {want[1]}), got "
                             f"{[tuple(t.shape) for t in h0]}")


def _prepare(q, k, v, S, T, M, D, h0):
    inputs = promoted(q, k, v, S, T, M, D)
    dt = inputs[0].dtype
    B, X, Y, H, K = q.shape
    if h0 is None:
        h0 = (q.new_zeros(B, Y, H, K, v.shape[-1], dtype=dt), q.new_zeros(B, X, H, K, v.shape[-1], dtype=dt))
    return inputs, tuple(t.to(dt) for t in h0)


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


def _spans(X: int, Y: int) -> tuple[list[int], list[int]]:
    """The anti-diagonals d = x + y of an X x Y grid: -> (lo, counts): diagonal d holds x = lo[d] .. lo[d] + counts[d] - 1."""
    lo = [max(0, d - Y + 1) for d in range(X + Y - 1)]
    return lo, [min(d, X - 1) + 1 - lo[d] for d in range(X + Y - 1)]


def _diagonals(X: int, Y: int, device) -> tuple[Tensor, Tensor, list[int]]:
    """The cells in wavefront order: -> (order (X·Y,): flat index x·Y + y of the cells of diagonal 0, 1, ..., each by
    increasing x; back (X·Y,): where each flat cell lies in that order; counts of every diagonal)."""
    lo, counts = _spans(X, Y)
    order = torch.tensor([x * Y + d - x for d in range(X + Y - 1) for x in range(lo[d], lo[d] + counts[d])], device=device)
    return order, torch.argsort(order), counts


def _sweep(X: int, Y: int, left: Tensor, top: Tensor, step) -> tuple[Tensor, Tensor]:
    """The grid DAG's wavefront over an X x Y grid of nodes (cells, or blocks of cells): left (B, Y, ...) and top
    (B, X, ...) the edge states entering from the left and from above; ``step(d, r_in, d_in) -> (r_out, d_out)`` runs
    the nodes of anti-diagonal d (by increasing x), r_in / d_in (B, counts[d], ...) the r- and d-edges entering them.
    -> (right (B, Y, ...), bottom (B, X, ...)): the edges leaving the grid."""
    lo, counts = _spans(X, Y)
    right, bottom = [None] * Y, [None] * X
    r_prev = d_prev = None  # the diagonal before's outgoing edges
    for d in range(X + Y - 1):
        # node (x, d-x) reads the r-edge of (x-1, d-x) (the left boundary at x = 0) and the d-edge of (x, d-x-1)
        # (the upper boundary at y = 0); the diagonal before holds x from lo[d-1]
        hi = lo[d] + counts[d]
        r_in = r_prev[:, :hi - 1 - lo[d - 1]] if d else left[:, :0]
        if d < Y:
            r_in = torch.cat([left[:, d:d + 1], r_in], 1)
        d_in = d_prev[:, lo[d] - lo[d - 1]:min(hi, d) - lo[d - 1]] if d else top[:, :0]
        if d < X:
            d_in = torch.cat([d_in, top[:, d:d + 1]], 1)
        r_prev, d_prev = step(d, r_in, d_in)
        if d >= X - 1:  # node (X-1, d-X+1) ends a row's r-edges
            right[d - X + 1] = r_prev[:, X - 1 - lo[d]]
        if d >= Y - 1:  # node (d-Y+1, Y-1) ends a column's d-edges
            bottom[d - Y + 1] = d_prev[:, d - Y + 1 - lo[d]]
    return torch.stack(right, 1), torch.stack(bottom, 1)


def _wavefront(q, k, v, S, T, M, D, C_left, C_top, scale):
    """The cells' anti-diagonals in turn, each batched (module doc); inputs prepared, shapes as the module doc."""
    X, Y = q.shape[1:3]
    order, back, counts = _diagonals(X, Y, q.device)
    # cells in wavefront order, then one slice per diagonal, cut once (views; their backward is one concatenation)
    diag = lambda t: t.flatten(1, 2)[:, order].split(counts, 1)  # noqa: E731
    now = scale * (D * (q * k).sum(-1))[..., None] * v  # the direct term of every cell at once
    kv = diag(einsum(k, v, "b x y h k, b x y h v -> b x y h k v"))
    q, S, T, M = diag(scale * q[..., None]), diag(S[..., None, None]), diag(T[..., None, None]), diag(M[..., None, None])
    ys = []

    def step(d, r_in, d_in):  # the gates' 2 x 2 pairs as elementwise products (cheaper than an einsum)
        (Sr, Sd), ((Trl, Tru), (Tdl, Tdu)), (Ml, Mu) = S[d].unbind(3), (t.unbind(3) for t in T[d].unbind(3)), M[d].unbind(3)
        ys.append((q[d] * (Ml * r_in + Mu * d_in)).sum(-2))
        return Trl * r_in + Tru * d_in + Sr * kv[d], Tdl * r_in + Tdu * d_in + Sd * kv[d]

    final = _sweep(X, Y, C_left, C_top, step)
    y = torch.cat(ys, 1)[:, back] + now.flatten(1, 2)
    return rearrange(y, "b (x y) h v -> b x y h v", x=X), final


def _insert(base: Tensor, extra: Tensor, at: int, dim: int) -> Tensor:
    """``extra`` put into ``base`` before its index ``at`` along ``dim`` (negative)."""
    return torch.cat([base.narrow(dim, 0, at), extra, base.narrow(dim, at, base.shape[dim] - at)], dim)


def _merge(blocks: tuple[Tensor, Tensor, Tensor, Tensor], cells: Tensor, px: int, py: int, axis: int):
    """Join neighbouring blocks of px x py cells in pairs along ``axis`` (0: x, 1: y): A the first of a pair, B the
    second. A block is its linear map from its entering edges [l (py), u (px)] and its n = px·py cells' k vᵀ to its
    leaving edges [r (py), d (px)] and its cells' outputs, in four parts over (.., nx, ny): transition T (E, E),
    source S (E, n), mark M (n, E), gating G (n, n), E = py + px, rows out, columns in; cells (n, 2): each cell's
    (x, y) in the block, in the parts' cell order.

    A's leaving edges on the shared side ("mid": its r-edges along x, its d-edges along y) are B's entering edges
    there, so whatever of B reads mid (B's columns mid) reads A's inputs through those columns @ A's rows mid; the
    rest of A reads A's inputs only. The joined edges stay in order (r: B's r along x, A's then B's along y; d: A's
    then B's along x, B's along y; l, u likewise): A's other leaving edges go into B's rows at ``row_at``, B's other
    entering edges into A's columns at ``col_at``; the joined cells are A's then B's (a Z-order, undone at the end).
    -> the joined parts and cells."""
    pair = (lambda t, i: t[..., i::2, :, :, :]) if axis == 0 else (lambda t, i: t[..., i::2, :, :])  # noqa: E731
    (TA, SA, MA, GA), (TB, SB, MB, GB) = ([pair(t, i) for t in blocks] for i in (0, 1))
    E = px + py
    mid, keep = (slice(0, py), slice(py, E)) if axis == 0 else (slice(py, E), slice(0, py))
    row_at, col_at = (py, E) if axis == 0 else (0, py)
    tA, sA = TA[..., mid, :], SA[..., mid, :]  # what leaves A through mid
    tB, mB = TB[..., :, mid], MB[..., :, mid]  # what of B reads mid
    zero = lambda a, b: a.new_zeros(*a.shape[:-1], b.shape[-1])  # noqa: E731  rows of a, as many columns as b
    A_rest = TA[..., keep, :]
    T = _insert(_insert(tB @ tA, TB[..., keep], col_at, -1), _insert(A_rest, zero(A_rest, TB[..., keep]), col_at, -1),
                row_at, -2)
    S = _insert(torch.cat([tB @ sA, SB], -1), torch.cat([SA[..., keep, :], zero(SA[..., keep, :], SB)], -1), row_at, -2)
    M = torch.cat([_insert(MA, zero(MA, MB[..., keep]), col_at, -1), _insert(mB @ tA, MB[..., keep], col_at, -1)], -2)
    G = torch.cat([torch.cat([GA, zero(GA, GB)], -1), torch.cat([mB @ sA, GB], -1)], -2)
    step = torch.tensor([px, 0] if axis == 0 else [0, py], device=cells.device)
    return (T, S, M, G), torch.cat([cells, cells + step])


def _hierarchical(q, k, v, S, T, M, D, C_left, C_top, scale, block: int):
    """Blocks of up to block x block cells, each block's map built in log2 levels of pairwise merges, then the blocks'
    wavefront (module doc); inputs prepared, shapes as the module doc."""
    B, X, Y, H = q.shape[:4]
    px, py = (min(1 << (n - 1).bit_length(), block) for n in (X, Y))  # block sides: powers of two
    Xp, Yp = -(-X // px) * px, -(-Y // py) * py
    S, M, D = S[..., None], M[..., None, :], D[..., None, None]  # a cell's parts: T (2, 2), S (2, 1), M (1, 2), G (1, 1)
    if (Xp, Yp) != (X, Y):
        # padded cells pass their r-edge on (x >= X, inside a real row) or their d-edge (y >= Y), and read and write
        # nothing else: the real cells and the boundary states are those of the unpadded grid
        pad = lambda t, inner: F.pad(t, (0, 0) * inner + (0, Yp - Y, 0, Xp - X))  # noqa: E731  inner: dims after y
        xs, ys = torch.arange(Xp, device=q.device)[:, None, None], torch.arange(Yp, device=q.device)[None, :, None]
        r_on, d_on = (xs >= X) & (ys < Y), (xs < X) & (ys >= Y)  # (Xp, Yp, 1)
        off = torch.zeros_like(r_on)
        through = torch.stack([torch.stack([r_on, off], -1), torch.stack([off, d_on], -1)], -2)  # (Xp, Yp, 1, 2, 2)
        T, S, M, D = pad(T, 3) + through.to(T.dtype), pad(S, 3), pad(M, 3), pad(D, 3)
        q, k, v = pad(q, 2), pad(k, 2), pad(v, 2)
        C_left, C_top = F.pad(C_left, (0, 0, 0, 0, 0, 0, 0, Yp - Y)), F.pad(C_top, (0, 0, 0, 0, 0, 0, 0, Xp - X))
    nx, ny = Xp // px, Yp // py
    parts = tuple(rearrange(t, "b x y h i j -> (b h) x y i j") for t in (T, S, M, D))
    cells, bx, by = torch.zeros(1, 2, dtype=torch.long, device=q.device), 1, 1
    while bx < px or by < py:  # alternate the axes: blocks stay square until one side is done
        axis = 0 if bx < px and (bx <= by or by == py) else 1
        parts, cells = _merge(parts, cells, bx, by, axis)
        bx, by = (2 * bx, by) if axis == 0 else (bx, 2 * by)
    TT, SS, MM, GG = parts
    raster = cells[:, 0] * py + cells[:, 1]
    blocks = lambda t: rearrange(t, "b (i p) (j r) h e -> (b h) i j (p r) e", p=px, r=py)[..., raster, :]  # noqa: E731
    q, k, v = blocks(scale * q), blocks(k), blocks(v)
    # the cells' part of the leaving edges, Σ_c S_ec k_c v_cᵀ, as (S_ec k_c) over c times v (no (cells, K, V) k vᵀ)
    source = rearrange(rearrange(SS[..., None] * k[..., None, :, :], "n i j e c k -> n i j (e k) c") @ v,
                       "n i j (e k) v -> n i j e k v", k=k.shape[-1])
    order, back, counts = _diagonals(nx, ny, q.device)
    diag = lambda t: t.flatten(1, 2)[:, order].split(counts, 1)  # noqa: E731
    TTd, sourced, entered = diag(TT), diag(source), []

    def step(d, r_in, d_in):
        entered.append(torch.cat([r_in, d_in], 2))
        out = einsum(TTd[d], entered[-1], "n c f e, n c e k v -> n c f k v") + sourced[d]
        return out[:, :, :py], out[:, :, py:]

    split = lambda t, p: rearrange(t, "b (i p) h k v -> (b h) i p k v", p=p)  # noqa: E731
    right, bottom = _sweep(nx, ny, split(C_left, py), split(C_top, px), step)
    entering = rearrange(torch.cat(entered, 1)[:, back], "n (i j) e k v -> n i j (e k) v", i=nx)
    # qᵀ (M C) as one product: (M_ce q_c) over (e, k) times C over (e, k)
    y = rearrange(MM[..., None] * q[..., None, :], "n i j c e k -> n i j c (e k)") @ entering
    y = y + ((q @ k.transpose(-1, -2)) * GG) @ v
    y = rearrange(y[..., torch.argsort(raster), :], "(b h) i j (p r) v -> b (i p) (j r) h v", h=H, p=px)[:, :X, :Y]
    join = lambda t, n: rearrange(t, "(b h) i p k v -> b (i p) h k v", h=H)[:, :n]  # noqa: E731
    return y, (join(right, Y), join(bottom, X))


def plstm2d(q: Tensor, k: Tensor, v: Tensor, S: Tensor, T: Tensor, M: Tensor, D: Tensor,
            initial_state: tuple[Tensor, Tensor] | None = None, scale: float | None = None,
            backend: str = "auto", block: int = 4) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Shapes as the module doc. backend: "auto" (= "hierarchical", the faster on CPU: docs/benchmarks.md), "wavefront",
    "hierarchical", "reference"; scale None = K^-1/2; block: the hierarchical form's largest block side (a power of
    two >= 1; 4 measured fastest on CPU at 16x16 and 32x32, where 8 and 16 pay for the blocks' n² gating parts)."""
    form = check_form(backend, BACKENDS, "plstm2d")
    if form == "reference":
        return plstm2d_ref(q, k, v, S, T, M, D, initial_state, scale)
    if block < 1 or block & (block - 1):
        raise ValueError(f"plstm2d: block must be a power of two >= 1, got {block}")
    _check(q, k, v, S, T, M, D, initial_state, "plstm2d")
    out_dtype = v.dtype
    (q, k, v, S, T, M, D), (C_left, C_top) = _prepare(q, k, v, S, T, M, D, initial_state)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if form in ("auto", "hierarchical"):
        y, final = _hierarchical(q, k, v, S, T, M, D, C_left, C_top, scale, block)
    else:
        y, final = _wavefront(q, k, v, S, T, M, D, C_left, C_top, scale)
    return y.to(out_dtype), final
