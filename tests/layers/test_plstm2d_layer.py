"""PLSTM2D (pLSTM on 2-D grids) and GridMixer: shapes and gradients in both modes on odd grids; the P-mode bound
(per incoming edge, the |T| to the two outgoing edges sum to <= 1) and the D-mode multitree (T^dl = 0, |T| <= 1)
on random gate inputs; the wavefront, hierarchical and reference forms agree through the layer's four orientations;
the boundary state joins two halves of a grid cut along x or y into the whole grid; every cell sees the whole grid;
a SequenceModel with mixer="plstm2d" reads square lengths and refuses others."""
import pytest
import torch

from rnnlab.layers.plstm2d import _FLIPS, _GATES, PLSTM2D
from rnnlab.models.config import ModelConfig
from rnnlab.models.model import SequenceModel
from rnnlab.testing import assert_close


@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("X,Y", [(1, 1), (3, 5)])
def test_shapes_and_gradients(mode, X, Y):
    torch.manual_seed(0)
    layer = PLSTM2D(16, num_heads=2, mode=mode)
    x = torch.randn(2, X, Y, 16, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("transition", ["tanh", "logsigmoid"])
def test_modes_keep_the_bound(transition):
    g = torch.Generator().manual_seed(0)
    for mode in ("P", "D"):
        layer = PLSTM2D(8, num_heads=2, mode=mode, transition=transition)
        pre = {n: 3 * torch.randn(1000, generator=g) for n in _GATES[mode]}
        S, T, M = layer._transitions(pre)
        assert T.shape == (1000, 2, 2) and S.shape == M.shape == (1000, 2)
        if mode == "P":
            assert (T.abs().sum(-2) <= 1 + 1e-6).all()  # sum over the outgoing edges of each incoming one
            assert (S.sum(-1) <= 1 + 1e-6).all()
        else:
            assert (T[:, 1, 0] == 0).all() and (T.abs() <= 1).all()


def _random_gates(layer: PLSTM2D) -> PLSTM2D:
    with torch.no_grad():  # input-dependent gates away from their constant init, sources and marks open (S, M ~ 0.5)
        layer.gates.weight.normal_(0, 0.5), layer.direct.weight.normal_(0, 0.5), layer.gates.bias.normal_(0, 1)
    return layer


@pytest.mark.parametrize("backend", ["wavefront", "hierarchical"])
def test_forms_equal_reference_through_the_layer(backend):
    torch.manual_seed(0)
    layer = _random_gates(PLSTM2D(8, num_heads=2, mode="P", backend=backend, block=2).double())
    x = torch.randn(2, 3, 4, 8, dtype=torch.float64)
    want = layer(x)
    layer.backend = "reference"
    assert_close(layer(x), want, name="y")


@pytest.mark.parametrize("axis", [1, 2])
def test_boundary_state_joins_two_halves(axis):
    """The grid cut along x (axis 1) or y (axis 2) into A then B: each half, given the other half's final state on
    the cut for the orientations crossing it towards this half (zeros elsewhere), gives the whole grid's output, and
    the halves' final states make the whole grid's."""
    torch.manual_seed(0)
    layer = _random_gates(PLSTM2D(8, num_heads=2, conv_size=1).double())
    x = torch.randn(2, 5, 6, 8, dtype=torch.float64)
    want, whole = layer(x, return_state=True)
    A, B = x.split([2, x.shape[axis] - 2], axis)
    cut = 0 if axis == 1 else 1  # the state crossing a cut along x is C_x (indexed by y), along y C_y
    forward = torch.tensor([axis not in f for f in _FLIPS]).view(1, -1, 1, 1, 1, 1)  # orientations going A -> B
    (_, fa), (_, fb) = layer(A, return_state=True), layer(B, return_state=True)

    def given(other, mine, towards):  # the other half's crossing state for the orientations towards this half
        state = [torch.zeros_like(mine[0]), torch.zeros_like(mine[1])]
        state[cut] = torch.where(towards, other[cut], 0.0)
        return tuple(state)

    ya, fa2 = layer(A, initial_state=given(fb, fa, ~forward), return_state=True)
    yb, fb2 = layer(B, initial_state=given(fa, fb, forward), return_state=True)
    assert_close(torch.cat([ya, yb], axis), want, name="y")  # (the halves without the exchange: ~0.1 off)
    assert_close(torch.where(forward, fb2[cut], fa2[cut]), whole[cut], name="state on the far sides of the cut")
    assert_close(torch.cat([fa2[1 - cut], fb2[1 - cut]], 2), whole[1 - cut], name="state along the cut")
    with pytest.raises(ValueError, match="initial_state must be"):
        layer(A, initial_state=given(fb, fa, ~forward)[::-1])


def test_every_cell_sees_the_whole_grid():
    torch.manual_seed(0)
    layer = PLSTM2D(8, num_heads=2)
    with torch.no_grad():
        layer.gates.bias.fill_(0.2)  # mid-range gates (T = tanh(1)): no contribution underflows to an exact zero
    x = torch.randn(1, 4, 5, 8, requires_grad=True)
    (g,) = torch.autograd.grad(layer(x)[0, 1, 2].sum(), x)
    assert (g[0].abs().sum(-1) > 0).all()


def test_sequence_model_reads_square_grids():
    cfg = ModelConfig(mixer="plstm2d", input_dim=10, head="classify", num_classes=2, pool="mean", d_model=16,
                      mixer_kwargs={"num_heads": 2, "mode": "D"})
    model = SequenceModel(cfg)
    assert model(torch.randn(3, 25, 10))[0].shape == (3, 2)
    with pytest.raises(ValueError, match="must be a square"):
        model(torch.randn(3, 24, 10))
    with pytest.raises(ValueError, match="grid module 'plstm2d': unknown|unknown option"):
        ModelConfig(mixer="plstm2d", input_dim=10, head="classify", num_classes=2, mixer_kwargs={"heads": 2})
    with pytest.raises(ValueError, match='mode must be "P" or "D"'):
        PLSTM2D(8, mode="Q")
