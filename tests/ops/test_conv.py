import pytest
import torch

from rnnlab.ops.conv import causal_conv1d, causal_conv1d_ref
from rnnlab.testing import assert_close


@pytest.mark.parametrize("T", [1, 2, 17, 64, 1000])
@pytest.mark.parametrize("with_state", [False, True])
def test_causal_conv1d_matches_reference(T, with_state):
    g = torch.Generator().manual_seed(T)
    x = torch.randn(2, T, 6, generator=g, requires_grad=True)
    w = torch.randn(6, 4, generator=g, requires_grad=True)
    b = torch.randn(6, generator=g, requires_grad=True)
    s0 = torch.randn(2, 3, 6, generator=g, requires_grad=True) if with_state else None
    y, s = causal_conv1d(x, w, b, s0)
    y_ref, s_ref = causal_conv1d_ref(x, w, b, s0)
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
