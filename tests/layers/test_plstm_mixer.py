"""plstm mixer: the parallel pass through the chunk form equals the same layer through the reference loop (values
and the gradients of every parameter and of x), both transition representations; the transition stays in
(−1, 1) (P-mode) or (0, 1). (Packing, step = parallel, state continuation: tests/conformance -k plstm.)"""
import pytest
import torch

from rnnlab.layers import create_mixer
from rnnlab.testing import assert_close


@pytest.mark.parametrize("transition", ["tanh", "logsigmoid"])
def test_chunk_equals_reference_loop(transition):
    torch.manual_seed(0)
    layer = create_mixer("plstm", d_model=16, num_heads=2, chunk_size=16, transition=transition).double()
    with torch.no_grad():  # move the gates off their constant init so every path carries signal
        layer.gates.weight.normal_(0, 0.5)
        layer.gates.bias.normal_(0, 1)
    x = torch.randn(2, 37, 16, dtype=torch.float64)
    results = []
    for backend in ("chunk", "reference"):
        layer.backend = backend
        xi = x.clone().requires_grad_()
        y, _ = layer(xi)
        y.pow(2).sum().backward()
        results.append([y.detach(), xi.grad] + [p.grad.clone() for p in layer.parameters()])
        layer.zero_grad()
    for got, want in zip(*results):
        assert_close(got, want)
    z = torch.linspace(-3, 3, 101)
    from rnnlab.layers.plstm import _TRANSITIONS
    T = _TRANSITIONS[transition](z)
    assert T.abs().max() <= 1 and (transition == "tanh") == bool((T < 0).any())
