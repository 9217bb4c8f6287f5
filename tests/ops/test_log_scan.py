"""minGRU/minLSTM log-space scan: chunked Heinsen form vs the reference loop (values and
gradients), the paper's g / log g, finiteness at T = 4096, bad input."""
import pytest
import torch
import torch.nn.functional as F

from rnnlab.ops.log_scan import g, log_g, log_scan, log_scan_ref
from rnnlab.testing import assert_close


def _inputs(T, with_h0, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(2, T, 3, 4, generator=gen) * scale  # gate logits (minGRU's z)
    x = torch.randn(2, T, 3, 4, generator=gen)  # candidate pre-activations
    h0 = torch.rand(2, 3, 4, generator=gen) if with_h0 else None
    return k, x, h0


def _run(fn, k, x, h0, seed=1):
    leaves = [t.clone().requires_grad_() for t in (k, x) + ((h0,) if h0 is not None else ())]
    log_a = -F.softplus(leaves[0])  # log(1 - z)
    log_b = -F.softplus(-leaves[0]) + log_g(leaves[1])  # log z + log g(x)
    h, h_last = fn(log_a, log_b, leaves[2] if h0 is not None else None)
    gen = torch.Generator().manual_seed(seed)
    loss = (h * torch.randn(h.shape, generator=gen)).sum() + (h_last * torch.randn(h_last.shape, generator=gen)).sum()
    return (h, h_last), torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("backend,method", [("kernel", "logaddexp"), ("parallel", "logaddexp"), ("kernel", "heinsen")])
@pytest.mark.parametrize("T", [1, 17, 64, 1000])
@pytest.mark.parametrize("with_h0", [False, True])
def test_log_scan_matches_reference(backend, method, T, with_h0):
    k, x, h0 = _inputs(T, with_h0)
    (h, hl), grads = _run(lambda *a: log_scan(*a, backend=backend, method=method), k, x, h0)
    (h_r, hl_r), grads_r = _run(log_scan_ref, k, x, h0)
    assert_close(h, h_r, name="h")
    assert_close(hl, hl_r, name="h_last")
    for name, a, b in zip(["dk", "dx", "dh0"], grads, grads_r):
        assert_close(a, b, name=name)


@pytest.mark.parametrize("method", ["logaddexp", "heinsen"])
@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_log_scan_chunk_sizes_and_methods(chunk_size, method):
    """Every chunk size / method is the same function (heinsen, chunk 64 > T: the paper's single Heinsen scan)."""
    k, x, h0 = _inputs(37, True)
    (h, _), grads = _run(lambda *a: log_scan(*a, chunk_size=chunk_size, method=method), k, x, h0)
    (h_r, _), grads_r = _run(log_scan_ref, k, x, h0)
    assert_close(h, h_r)
    for a, b in zip(grads, grads_r):
        assert_close(a, b)


@pytest.mark.parametrize("method", ["logaddexp", "heinsen"])
def test_log_scan_finite_and_accurate_at_4096(method):
    """Strong forgetting over T = 4096: cumsum(log a) reaches ~ -1e4, where an unchunked
    float32 Heinsen scan loses ~1e-3; the chunked form stays at float32 accuracy."""
    k, x, _ = _inputs(4096, False, scale=3.0)
    k, x = k[:, :, :1], x[:, :, :1]
    (h, hl), grads = _run(lambda *a: log_scan(*a, method=method), k, x, None)
    assert torch.isfinite(h).all() and all(torch.isfinite(t).all() for t in grads)
    h64, _ = log_scan_ref(-F.softplus(k.double()), -F.softplus(-k.double()) + log_g(x.double()))
    assert_close(h, h64.float())
    assert (-F.softplus(k)).sum(1).min() < -2000  # the test really is in the hard regime


def test_log_scan_split_equals_full():
    k, x, h0 = _inputs(50, True)
    la, lb = -F.softplus(k), -F.softplus(-k) + log_g(x)
    h, hl = log_scan(la, lb, h0)
    h1, s = log_scan(la[:, :21], lb[:, :21], h0)
    h2, hl2 = log_scan(la[:, 21:], lb[:, 21:], s)
    assert_close(torch.cat([h1, h2], 1), h)
    assert_close(hl2, hl)


def test_g_and_log_g():
    x = torch.linspace(-30, 30, 601, dtype=torch.float64, requires_grad=True)
    assert_close(log_g(x).exp(), g(x))
    assert (g(x) > 0).all()
    assert_close(g(torch.tensor([0.0, 2.0, -1.0])), torch.tensor([0.5, 2.5, torch.sigmoid(torch.tensor(-1.0)).item()]))
    log_g(x).sum().backward()
    assert torch.isfinite(x.grad).all()  # no NaN leaking from the unused branch


def test_log_scan_bfloat16():
    k, x, _ = _inputs(33, False)
    la, lb = -F.softplus(k), -F.softplus(-k) + log_g(x)
    h, hl = log_scan(la.bfloat16(), lb.bfloat16())
    assert h.dtype == torch.bfloat16 and hl.dtype == torch.float32
    assert_close(h.float(), log_scan_ref(la, lb)[0], tol=2e-2)


def test_log_scan_bad_input():
    la = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match=r"\(B, T, \*\)"):
        log_scan(la, torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="initial_state"):
        log_scan(la, la, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        log_scan(la, la, chunk_size=0)
    with pytest.raises(ValueError, match="backend"):
        log_scan(la, la, backend="gpu")
    with pytest.raises(ValueError, match="method"):
        log_scan(la, la, method="cumsum")
