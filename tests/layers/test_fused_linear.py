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
