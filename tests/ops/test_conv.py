import pytest
import torch

from rnnlab.ops.conv import causal_conv1d, causal_conv1d_ref
from rnnlab.testing import assert_close


@pytest.mark.parametrize("T", [1, 2, 17, 64, 1000])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv1d_matches_reference(T, with_state, activation):
    g = torch.Generator().manual_seed(T)
    x = torch.randn(2, T, 6, generator=g, requires_grad=True)
    w = torch.randn(6, 4, generator=g, requires_grad=True)
    b = torch.randn(6, generator=g, requires_grad=True)
    s0 = torch.randn(2, 3, 6, generator=g, requires_grad=True) if with_state else None
    y, s = causal_conv1d(x, w, b, s0, activation=activation)
    y_ref, s_ref = causal_conv1d_ref(x, w, b, s0, activation=activation)
    assert_close(y, y_ref, name="y")
    assert_close(s, s_ref, name="state")
    cot = torch.randn(y.shape, generator=g)
    leaves = [x, w, b] + ([s0] if with_state else [])
    grads = torch.autograd.grad((y * cot).sum() + s.sum(), leaves)
    grads_ref = torch.autograd.grad((y_ref * cot).sum() + s_ref.sum(), leaves)
    for name, a, e in zip("xwbs", grads, grads_ref):
        assert_close(a, e, name=f"grad {name}")


def test_causal_conv1d_split_equals_full():
    x, w = torch.randn(1, 20, 3), torch.randn(3, 4)
    y, _ = causal_conv1d(x, w)
    y1, s = causal_conv1d(x[:, :7], w)
    y2, _ = causal_conv1d(x[:, 7:], w, None, s)
    assert_close(torch.cat([y1, y2], 1), y)


def test_causal_conv1d_no_bias_wide_kernel_short_input():
    """W - 1 > T: every output row reads the state; no bias."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    w = torch.randn(4, 6, generator=g, requires_grad=True)
    s0 = torch.randn(2, 5, 4, generator=g, requires_grad=True)
    y, s = causal_conv1d(x, w, None, s0, activation="silu")
    y_ref, s_ref = causal_conv1d_ref(x, w, None, s0, activation="silu")
    assert_close(y, y_ref, name="y")
    assert_close(s, s_ref, name="state")
    cot = torch.randn(y.shape, generator=g)
    grads = torch.autograd.grad((y * cot).sum() + s.sum(), [x, w, s0])
    grads_ref = torch.autograd.grad((y_ref * cot).sum() + s_ref.sum(), [x, w, s0])
    for name, a, e in zip("xws", grads, grads_ref):
        assert_close(a, e, name=f"grad {name}")


def test_causal_conv1d_bad_activation():
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(torch.randn(1, 4, 2), torch.randn(2, 4), activation="relu")
