"""matrix_scan (input-dependent matrix transitions): the recurrent, chunk and log-depth forms (one hand-written
adjoint) against the reference loop differentiated by autograd, values and the gradients of A, b and the initial
state under random cotangents; full and diagonal transitions, with and without b, the unit-norm recurrence;
lengths 1, 2, primes and non-multiples of the chunk; long sequences; state continuation; bfloat16; bad input.
(Packed cu_seqlens: tests/ops/test_ops_varlen.py.)"""
import pytest
import torch

from rnnlab.ops.matrix_scan import matrix_scan, matrix_scan_ref
from rnnlab.testing import TOLERANCE, assert_close

FORMS = ["recurrent", "chunk", "scan"]


def _inputs(T, kind, B=2, H=3, n=4, seed=0, dtype=torch.float32):
    """kind: "full" (random matrices / sqrt(n), with b), "orth" (near-orthogonal, normalized recurrence: what a
    state-tracking model learns), "random_norm" (Gaussian matrices, normalized), "diag" (diagonals in (-1.2, 1.2), with b)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "diag":
        A = 2.4 * torch.rand(B, T, H, n, generator=g) - 1.2
    elif kind == "orth":
        Q = torch.linalg.qr(torch.randn(B, T, H, n, n, generator=g, dtype=torch.float64))[0]
        A = Q * (1 + 0.1 * torch.randn(B, T, H, n, 1, generator=g, dtype=torch.float64))
    else:
        A = torch.randn(B, T, H, n, n, generator=g, dtype=torch.float64) / n ** 0.5
    b = None if kind in ("orth", "random_norm") else torch.randn(B, T, H, n, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, H, n, generator=g, dtype=torch.float64)
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return cast(A), cast(b), cast(h0), kind in ("orth", "random_norm")


def _run(fn, A, b, h0, normalize, seed=1, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (A, b, h0) if t is not None]
    args = iter(leaves)
    h, h_last = fn(next(args), None if b is None else next(args), next(args), normalize=normalize, **kw)
    g = torch.Generator().manual_seed(seed)
    loss = (h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum() + (h_last * torch.randn(h_last.shape, generator=g, dtype=h.dtype)).sum()
    return [h, h_last, *torch.autograd.grad(loss, leaves)]


def _compare(actual, expected, tol=None):
    names = ["h", "h_last", "dA"] + (["db"] if len(expected) == 5 else []) + ["dh0"]
    for name, a, e in zip(names, actual, expected):
        assert_close(a, e, tol, name=name)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("T", [1, 2, 17, 37, 64, 65])
@pytest.mark.parametrize("kind", ["full", "orth", "diag"])
def test_matches_reference(form, T, kind):
    A, b, h0, normalize = _inputs(T, kind)
    _compare(_run(matrix_scan, A, b, h0, normalize, backend=form), _run(matrix_scan_ref, A, b, h0, normalize))


@pytest.mark.parametrize("kind", ["full", "orth", "diag"])
def test_one_token_without_autograd(kind):
    """A decode token without autograd (the direct step, no Function) equals every form's token with autograd."""
    A, b, h0, normalize = _inputs(1, kind)
    with torch.inference_mode():
        h, h_last = matrix_scan(A, b, h0, normalize=normalize)
    for form in FORMS:
        expected = _run(matrix_scan, A, b, h0, normalize, backend=form)
        assert_close(h, expected[0], name=f"h {form}")
        assert_close(h_last, expected[1], name=f"h_last {form}")


@pytest.mark.parametrize("form", FORMS)
def test_long_sequence(form):
    """T = 1000: the chunk form's √T chunks and the scan's 10 levels."""
    for kind in ("orth", "diag"):
        A, b, h0, normalize = _inputs(1000, kind, B=1, H=2, n=3, seed=2)
        _compare(_run(matrix_scan, A, b, h0, normalize, backend=form), _run(matrix_scan_ref, A, b, h0, normalize))


@pytest.mark.parametrize("form", FORMS)
def test_random_matrices_normalized_float64(form):
    """Gaussian transitions under normalization over 300 steps: the output forgets h0 at the gap of the top two
    Lyapunov exponents, so dh0 is exponentially small and ill-conditioned in float32 (measured 3e-5 at T = 100);
    in float64 every form agrees with the loop to 1e-10, and the products of 300 matrices of norm ~2 stay in range
    by the detached rescaling."""
    A, b, h0, normalize = _inputs(300, "random_norm", dtype=torch.float64)
    A = 2 * A
    _compare(_run(matrix_scan, A, b, h0, normalize, backend=form), _run(matrix_scan_ref, A, b, h0, normalize))


@pytest.mark.parametrize("form", FORMS + ["reference"])
def test_normalized_products_stay_finite(form):
    """2000 steps of matrices of norm ~4: the raw product would overflow float32 (4^2000); the unit-norm
    recurrence stays finite and unit-norm, values and gradients."""
    A, _, h0, _ = _inputs(2000, "random_norm", B=1, H=1, n=3, seed=3)
    out = _run(matrix_scan, 4 * A, None, h0, True, backend=form)
    assert all(torch.isfinite(t).all() for t in out)
    assert_close(out[0].norm(dim=(-2, -1)), torch.ones(1, 2000), name="|h_t|")


@pytest.mark.parametrize("form", FORMS + ["reference"])
def test_split_sequence_equals_full(form):
    for kind in ("full", "orth"):
        A, b, h0, normalize = _inputs(37, kind)
        h, hl = matrix_scan(A, b, h0, normalize=normalize, backend=form)
        h1, s = matrix_scan(A[:, :20], None if b is None else b[:, :20], h0, normalize=normalize, backend=form)
        h2, hl2 = matrix_scan(A[:, 20:], None if b is None else b[:, 20:], s, normalize=normalize, backend=form)
        assert_close(torch.cat([h1, h2], 1), h)
        assert_close(hl2, hl)


def test_zero_initial_state_is_the_default():
    A, b, _, _ = _inputs(9, "full")
    assert_close(matrix_scan(A, b)[0], matrix_scan_ref(A, b, torch.zeros(2, 3, 4))[0])


@pytest.mark.parametrize("form", FORMS)
def test_bfloat16_inputs(form):
    """bf16 transitions and inputs are computed in float32: h in bf16, the state in float32, equal to the
    float32 reference on the same rounded inputs within the bf16 tolerance."""
    A, b, h0, _ = _inputs(37, "full")
    h, hl = matrix_scan(A.bfloat16(), b.bfloat16(), h0, backend=form)
    assert h.dtype == torch.bfloat16 and hl.dtype == torch.float32
    hr, hlr = matrix_scan_ref(A.bfloat16().float(), b.bfloat16().float(), h0)
    assert_close(h.float(), hr, TOLERANCE[torch.bfloat16])
    assert_close(hl, hlr)


def test_bad_input():
    A, b, h0, _ = _inputs(5, "full")
    with pytest.raises(ValueError, match=r"A must be \(B, T, H, n, n\)"):
        matrix_scan(A[..., :3], b, h0)
    with pytest.raises(ValueError, match=r"b must be \(B, T, H, n\)"):
        matrix_scan(A, b[:, :4], h0)
    with pytest.raises(ValueError, match=r"initial_state must be \(B, H, n\)"):
        matrix_scan(A, b, h0[:1])
    with pytest.raises(ValueError, match="pass b=None"):
        matrix_scan(A, b, h0, normalize=True)
    with pytest.raises(ValueError, match="non-zero initial_state"):
        matrix_scan(A, normalize=True)
    with pytest.raises(ValueError, match="backend must be one of"):
        matrix_scan(A, b, h0, backend="kernel")
