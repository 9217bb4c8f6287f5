"""plstm2d (pLSTM's Source-Transition-Mark recurrence on a 2-D grid): the wavefront form (anti-diagonals batched) and
the hierarchical form (blocks merged in log-depth levels, whole-grid and smaller blocks with padding) against the
cell-by-cell reference differentiated by autograd: outputs, final boundary states and the gradients of q, k, v, every
gate and both initial boundary states under random cotangents; grids 1x1, 1x5, 5x1, 3x7, 8x8, 6x5; float64 and
float32; a one-row grid equals the 1-D plstm op; the grid DAG's dependence cone; bad input."""
import pytest
import torch

from rnnlab.ops.plstm import plstm
from rnnlab.ops.plstm2d import plstm2d, plstm2d_ref
from rnnlab.testing import assert_close


def _inputs(X, Y, B=2, H=3, K=4, V=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    T = torch.tanh(r(B, X, Y, H, 2, 2)) / 2  # signed; each incoming edge's |T| summed over outgoing <= 1 (P-mode)
    x = dict(q=r(B, X, Y, H, K), k=r(B, X, Y, H, K), v=r(B, X, Y, H, V), S=torch.sigmoid(r(B, X, Y, H, 2)), T=T,
             M=torch.sigmoid(r(B, X, Y, H, 2)), D=torch.sigmoid(r(B, X, Y, H)),
             initial_state=(r(B, Y, H, K, V), r(B, X, H, K, V)))
    return {n: (tuple(s.to(dtype) for s in t) if isinstance(t, tuple) else t.to(dtype)) for n, t in x.items()}


def _run(fn, x, seed=1, **kw):
    flat = {n: t for n, t in x.items() if n != "initial_state"}
    flat["C_left"], flat["C_top"] = x["initial_state"]
    leaves = {n: t.detach().clone().requires_grad_() for n, t in flat.items()}
    args = {n: t for n, t in leaves.items() if n not in ("C_left", "C_top")}
    y, (C_right, C_bottom) = fn(**args, initial_state=(leaves["C_left"], leaves["C_top"]), **kw)
    g = torch.Generator().manual_seed(seed)
    cot = lambda t: torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)  # noqa: E731
    loss = (y * cot(y)).sum() + (C_right * cot(C_right)).sum() + (C_bottom * cot(C_bottom)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {"y": y, "C_right": C_right, "C_bottom": C_bottom, **{f"d{n}": d for n, d in zip(leaves, grads)}}


# (backend, block): the hierarchical form as one block of the whole grid (log-depth merges only), as blocks of 2 x 2
# (merges, a wavefront over the blocks, the grid padded to even sides where a side is odd), and as the default
FORMS = [("wavefront", 4), ("hierarchical", 16), ("hierarchical", 2), ("auto", 4)]


@pytest.mark.parametrize("backend,block", FORMS)
@pytest.mark.parametrize("X,Y", [(1, 1), (1, 5), (5, 1), (3, 7), (8, 8), (6, 5)])
def test_forms_match_reference(backend, block, X, Y):
    x = _inputs(X, Y)
    got, want = _run(plstm2d, x, backend=backend, block=block), _run(plstm2d_ref, x)
    for name in want:
        assert_close(got[name], want[name], name=name)


@pytest.mark.parametrize("backend,block", FORMS)
def test_float32_against_float64_reference(backend, block):
    x = _inputs(4, 6, dtype=torch.float32)
    got = _run(plstm2d, x, backend=backend, block=block)
    want = _run(plstm2d_ref, {n: (tuple(s.double() for s in t) if isinstance(t, tuple) else t.double()) for n, t in x.items()})
    for name in want:
        assert_close(got[name], want[name].float(), name=name)


def test_one_row_is_the_sequence_op():
    """X = 1: the d-edges form a chain along y, the 1-D recurrence with T = T^du, S = S^d, M = M^u, started from the
    boundary above; the left boundary adds M^l qᵀ C_left (and T^dl C_left to the chain: set to 0 here)."""
    x = _inputs(1, 9)
    x["T"][..., 1, 0] = 0.0
    y2, (_, C_bottom) = plstm2d_ref(**x)
    seq = lambda t: t[:, 0]  # noqa: E731
    y1, C = plstm(seq(x["q"]), seq(x["k"]), seq(x["v"]), seq(x["S"])[..., 1], seq(x["T"])[..., 1, 1], seq(x["M"])[..., 1],
                  seq(x["D"]), x["initial_state"][1][:, 0], backend="reference")
    left = torch.einsum("byhk,byhkv->byhv", seq(x["q"]), x["initial_state"][0]) * seq(x["M"])[..., 0, None] * 4 ** -0.5
    assert_close(y2[:, 0], y1 + left, name="y")
    assert_close(C_bottom[:, 0], C, name="C")


@pytest.mark.parametrize("backend", ["wavefront", "hierarchical"])
def test_dependence_cone(backend):
    """Cell (x, y) depends only on the cells (x', y') with x' <= x and y' <= y (the grid DAG's ancestors)."""
    x = _inputs(4, 5, B=1)
    v = x["v"].clone().requires_grad_()
    y, _ = plstm2d(**{**x, "v": v}, backend=backend)
    (g,) = torch.autograd.grad(y[0, 2, 3].sum(), v)
    touched = g[0].abs().sum((-1, -2)) > 0
    xs, ys = torch.meshgrid(torch.arange(4), torch.arange(5), indexing="ij")
    assert torch.equal(touched, (xs <= 2) & (ys <= 3))


def test_errors():
    x = _inputs(2, 3)
    with pytest.raises(ValueError, match="gate T must be"):
        plstm2d(**{**x, "T": x["T"][..., 0]})
    with pytest.raises(ValueError, match="initial_state must be"):
        plstm2d(**{**x, "initial_state": x["initial_state"][::-1]})
    with pytest.raises(ValueError, match="backend must be one of"):
        plstm2d(**x, backend="chunk")
    with pytest.raises(ValueError, match="block must be a power of two"):
        plstm2d(**x, backend="hierarchical", block=3)
