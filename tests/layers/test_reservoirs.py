"""The untrained reservoirs (deep_res_esn, res_rmn): the papers' initialization (spectral radius, orthogonal
residual branches, input ranges, the units split across layers), the update equations written out, and the
recurrent forms against the reference loops (values and gradients of x and the initial state, float64)."""
import pytest
import torch

import rnnlab
from rnnlab.ops.reservoir import cycle
from rnnlab.testing import assert_close


def _radius(W):
    return torch.linalg.eigvals(W.double()).abs().max().item()


@pytest.mark.parametrize("kind", ["random", "cycle", "identity"])
def test_deep_res_esn_init(kind):
    torch.manual_seed(0)
    m = rnnlab.create_mixer("deep_res_esn", 10, layers=3, orthogonal=kind, rho=0.7, input_scaling=0.3, inter_scaling=0.5,
                            bias_scaling=0.1)
    assert m.units == [4, 3, 3] and list(m.parameters()) == []
    for i, n in enumerate(m.units):
        O = getattr(m, f"O{i}")
        assert_close(O @ O.T, torch.eye(n))
        if kind == "cycle":
            assert torch.equal(O, cycle(n))
        assert _radius(getattr(m, f"W{i}")) == pytest.approx(0.7, rel=1e-5)
        bound = 0.3 if i == 0 else 0.5
        assert getattr(m, f"W_in{i}").abs().max() <= bound and getattr(m, f"bias{i}").abs().max() <= 0.1
    assert getattr(m, "W_in1").shape == (3, 4)  # layer 2 is driven by layer 1's 4 units
    wide = rnnlab.create_mixer("deep_res_esn", 10, layers=3, concat=False)
    assert wide.units == [10, 10, 10] and wide.state_size(1) == 30
    approx = rnnlab.create_mixer("deep_res_esn", 200, layers=1, exact_radius=False)  # the circular law, the authors' code
    assert _radius(approx.W0) == pytest.approx(0.9, rel=0.1)
    with pytest.raises(ValueError, match="orthogonal"):
        rnnlab.create_mixer("deep_res_esn", 10, orthogonal="hadamard")


def test_deep_res_esn_equations():
    """h^(1)_t = α O h^(1)_{t−1} + β tanh(W_in x_t + W h^(1)_{t−1} + b), h^(2) driven by h^(1)_t; output [h^(1), h^(2)]."""
    torch.manual_seed(0)
    m = rnnlab.create_mixer("deep_res_esn", 6, layers=2, alpha=0.6, beta=0.8, bias_scaling=0.2).double()
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    y, s = m(x)
    h = [torch.zeros(2, 3, dtype=torch.float64) for _ in range(2)]
    for t in range(9):
        u = x[:, t]
        for i in range(2):
            W_in, W, b, O = (getattr(m, f"{n}{i}") for n in ("W_in", "W", "bias", "O"))
            h[i] = 0.6 * h[i] @ O.T + 0.8 * torch.tanh(u @ W_in.T + h[i] @ W.T + b)
            u = h[i]
        assert_close(y[:, t], torch.cat(h, -1))
    assert_close(s["h"], torch.cat(h, -1))


def test_res_rmn_init_and_equations():
    """m_t = C m_{t−1} + V_in x_t, h_t = α O h_{t−1} + β tanh(W_x x_t + W_m m_t + W h_{t−1} + b); ρ(W) exact."""
    torch.manual_seed(0)
    m = rnnlab.create_mixer("res_rmn", 5, memory_units=7, orthogonal="cycle", alpha=0.5, beta=0.9, rho=0.8).double()
    assert _radius(m.W) == pytest.approx(0.8, rel=1e-6) and list(m.parameters()) == []
    x = torch.randn(2, 11, 5, dtype=torch.float64)
    y, s = m(x)
    mem, h = torch.zeros(2, 7, dtype=torch.float64), torch.zeros(2, 5, dtype=torch.float64)
    C = cycle(7).double()
    for t in range(11):
        mem = mem @ C.T + x[:, t] @ m.V_in.T
        h = 0.5 * h @ m.O.T + 0.9 * torch.tanh(torch.cat([x[:, t], mem], -1) @ m.W_in.T + h @ m.W.T + m.bias)
        assert_close(y[:, t], h)
    assert_close(s["m"], mem) and assert_close(s["h"], h)


@pytest.mark.parametrize("name, kw", [("deep_res_esn", {"layers": 3, "alpha": 0.7, "beta": 0.5, "bias_scaling": 0.3}),
                                      ("deep_res_esn", {"orthogonal": "cycle", "concat": False}),
                                      ("res_rmn", {"memory_units": 5, "orthogonal": "random", "rho": 0.5, "alpha": 0.8})])
@pytest.mark.parametrize("T", [1, 17, 64])
def test_recurrent_form_equals_reference(name, kw, T):
    torch.manual_seed(0)
    fast = rnnlab.create_mixer(name, 8, **kw).double()
    ref = rnnlab.create_mixer(name, 8, backend="reference", **kw).double()
    ref.load_state_dict(fast.state_dict())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        _, state = fast(0.3 * torch.randn(2, 11, 8, generator=g).double())
    x = 0.3 * torch.randn(2, T, 8, generator=g).double()
    outs = []
    for m in (fast, ref):
        leaves = [x.clone().requires_grad_()] + [v.clone().requires_grad_() for v in state.values()]
        y, s = m(leaves[0], dict(zip(state, leaves[1:])))
        gen = torch.Generator().manual_seed(3)
        loss = (y * torch.randn(y.shape, generator=gen).double()).sum() + sum((v * torch.randn(v.shape, generator=gen).double()).sum()
                                                                             for v in s.values())
        outs.append((y, s, torch.autograd.grad(loss, leaves)))
    (y, s, g1), (y_r, s_r, g_r) = outs
    assert_close(y, y_r)
    for k in s:
        assert_close(s[k], s_r[k], name=k)
    for a, b in zip(g1, g_r):
        assert_close(a, b)
