"""linear_scan fast forms vs the reference loop: values and gradients (random cotangents)."""
import logging

import pytest
import torch

from rnnlab.ops.scan import linear_scan, linear_scan_ref
from rnnlab.testing import assert_close

FORMS = ["kernel", "parallel"]


def _inputs(T, kind, with_h0, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (2, T, 3, 5)
    if kind == "positive":
        a = torch.rand(shape, generator=g) * 0.5 + 0.5
    elif kind == "negative":  # a in (-1, 1): negative eigenvalues
        a = torch.rand(shape, generator=g) * 2 - 1
    else:  # complex, |a| < 1
        a = torch.polar(torch.rand(shape, generator=g) ** 0.3, torch.randn(shape, generator=g) * 3)
    dtype = a.dtype
    b = torch.randn(shape, generator=g, dtype=dtype)
    h0 = torch.randn(2, 3, 5, generator=g, dtype=dtype) if with_h0 else None
    return a, b, h0


def _grads(fn, a, b, h0, seed=1):
    leaves = [t.detach().clone().requires_grad_() for t in (a, b) + ((h0,) if h0 is not None else ())]
    h, h_last = fn(leaves[0], leaves[1], leaves[2] if h0 is not None else None)
    g = torch.Generator().manual_seed(seed)
    gh = torch.randn(h.shape, generator=g, dtype=h.dtype)
    gl = torch.randn(h_last.shape, generator=g, dtype=h.dtype)
    loss = (h * gh.conj()).real.sum() + (h_last * gl.conj()).real.sum()
    return (h, h_last), torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("backend", FORMS)
@pytest.mark.parametrize("T", [1, 17, 64, 1000])
@pytest.mark.parametrize("kind", ["positive", "negative", "complex"])
@pytest.mark.parametrize("with_h0", [False, True])
def test_linear_scan_matches_reference(backend, T, kind, with_h0):
    a, b, h0 = _inputs(T, kind, with_h0)
    (h, hl), grads = _grads(lambda *x: linear_scan(*x, backend=backend), a, b, h0)
    (hr, hlr), grads_ref = _grads(linear_scan_ref, a, b, h0)
    assert_close(h, hr, name="h")
    assert_close(hl, hlr, name="h_last")
    for name, x, y in zip(["da", "db", "dh0"], grads, grads_ref):
        assert_close(x, y, name=name)


@pytest.mark.parametrize("backend", FORMS + ["reference"])
def test_split_sequence_equals_full(backend):
    a, b, h0 = _inputs(37, "negative", True)
    h, hl = linear_scan(a, b, h0, backend=backend)
    h1, s = linear_scan(a[:, :20], b[:, :20], h0, backend=backend)
    h2, hl2 = linear_scan(a[:, 20:], b[:, 20:], s, backend=backend)
    assert_close(torch.cat([h1, h2], 1), h)
    assert_close(hl2, hl)


@pytest.mark.parametrize("backend", FORMS)
def test_broadcast_a_and_bf16(backend):
    b = torch.randn(2, 33, 4)
    a = torch.rand(4) * 0.9  # time-invariant decay broadcast over (B, T)
    h, hl = linear_scan(a, b, backend=backend)
    hr, _ = linear_scan_ref(a.expand_as(b), b)
    assert_close(h, hr)
    hb, hlb = linear_scan(a.bfloat16(), b.bfloat16(), backend=backend)
    assert hb.dtype == torch.bfloat16 and hlb.dtype == torch.float32
    assert_close(hb.float(), hr, tol=2e-2)
    # gradient of a broadcast a is summed over (B, T)
    a1 = a.clone().requires_grad_()
    a2 = a.clone().requires_grad_()
    linear_scan(a1, b, backend=backend)[0].sum().backward()
    linear_scan_ref(a2.expand_as(b), b)[0].sum().backward()
    assert_close(a1.grad, a2.grad)


def test_inputs_not_modified():
    a, b, h0 = _inputs(17, "negative", True)
    a0, b0, h00 = a.clone(), b.clone(), h0.clone()
    for be in FORMS:
        linear_scan(a, b, h0, backend=be)
    assert torch.equal(a, a0) and torch.equal(b, b0) and torch.equal(h0, h00)


def test_bad_input_raises():
    b = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="backend"):
        linear_scan(b, b, backend="fast")
    with pytest.raises(ValueError, match="initial_state"):
        linear_scan(b, b, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="broadcastable"):
        linear_scan(torch.rand(2, 5, 4), b)
    with pytest.raises(ValueError, match="kernel"):
        linear_scan(b.to("meta"), b.to("meta"), backend="kernel")


def test_backend_choice_is_logged(caplog):
    import rnnlab.ops.scan as scan

    scan._LOGGED.clear()
    with caplog.at_level(logging.INFO, logger="rnnlab.ops.scan"):
        linear_scan(torch.rand(1, 3, 2), torch.rand(1, 3, 2))
    assert any("backend='kernel'" in r.getMessage() for r in caplog.records)
