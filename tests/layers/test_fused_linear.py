"""parts.fused_linear: the projections of one input as one matmul without autograd, equal to the layers one by
one, and never stale: an optimizer step, load_state_dict or a dtype change rebuilds the concatenated weight."""
import torch
from torch import nn

from rnnlab.layers.parts import fused_linear


def _layers():
    torch.manual_seed(0)
    return [nn.Linear(16, 8, bias=False), nn.Linear(16, 3, bias=True), nn.Linear(16, 5, bias=False)]


def _separate(x, layers):
    return [layer(x) for layer in layers]


def test_equals_the_layers_one_by_one_and_follows_every_change():
    layers = _layers()
    x = torch.randn(2, 4, 16)
    with torch.no_grad():
        for a, b in zip(fused_linear(x, layers), _separate(x, layers)):
            torch.testing.assert_close(a, b)
    opt = torch.optim.SGD([p for layer in layers for p in layer.parameters()], lr=0.1)
    sum(y.sum() for y in fused_linear(x, layers)).backward()  # under autograd: the layers themselves, gradients kept
    assert all(layer.weight.grad is not None for layer in layers)
    opt.step()  # in-place update: the cached concatenation must not be used again
    with torch.no_grad():
        for a, b in zip(fused_linear(x, layers), _separate(x, layers)):
            torch.testing.assert_close(a, b)
        fresh = _layers()
        for layer, new in zip(layers, fresh):
            new.weight.mul_(3)
            layer.load_state_dict(new.state_dict())
        for a, b in zip(fused_linear(x, layers), _separate(x, layers)):
            torch.testing.assert_close(a, b)
    for layer in layers:
        layer.double()
    with torch.no_grad():
        out = fused_linear(x.double(), layers)
    assert all(y.dtype == torch.float64 for y in out)
    for a, b in zip(out, _separate(x.double(), layers)):
        torch.testing.assert_close(a, b)


def test_fused_conv_step_equals_the_convs_one_by_one():
    """parts.fused_conv_step: one decode token through several short convs as one conv, bit for bit at layer widths
    (a few tiny widths may round the sum's last bit otherwise: torch picks the reduction's order by shape), following
    a weight change; under autograd (and for T > 1) the convs themselves."""
    from rnnlab.layers.parts import ShortConv, fused_conv_step
    from rnnlab.testing import assert_close

    torch.manual_seed(0)
    for widths, exact in (((64, 64, 128), True), ((8, 8, 12), False)):
        convs = [ShortConv(c, 4, bias=False, activation="silu") for c in widths]
        xs = [torch.randn(3, 1, c.channels) for c in convs]
        states = [torch.randn(3, 3, c.channels) for c in convs]
        for _ in range(2):
            with torch.no_grad():
                fused = fused_conv_step(xs, convs, states)
                ref = [c(x, s) for x, c, s in zip(xs, convs, states)]
            for (y, f), (y_r, f_r) in zip(fused, ref):
                assert torch.equal(f, f_r)
                if exact:
                    assert torch.equal(y, y_r)
                else:
                    assert_close(y, y_r)
            with torch.no_grad():
                convs[1].weight.mul_(2)  # the cached concatenation must follow
    out = fused_conv_step(xs, convs, states)  # under autograd: the convs one by one, gradients reach each weight
    sum(y.sum() for y, _ in out).backward()
    assert all(c.weight.grad is not None for c in convs)
