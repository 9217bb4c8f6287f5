"""Causal probes: the split with no edit is the model, patching a sequence's own state changes nothing, a patched
state determines a one-layer model's future, zeroing a recurrent state equals a fresh start, and a head knockout
removes exactly that head's columns of the output projection."""
import copy

import pytest
import torch

from rnnlab.diagnostics import intervene, knockout_heads, locate, locate_heads
from rnnlab.models import ModelConfig, SequenceModel
from rnnlab.testing import assert_close

V, T = 13, 11


def _model(mixer, n_layers=1, kw=None):
    return SequenceModel(ModelConfig(mixer=mixer, vocab_size=V, d_model=16, n_layers=n_layers,
                                     mixer_kwargs=kw or {})).eval()  # float32: the tolerance of split == whole


HYBRID = (["mamba", "attention"], 2, [{"d_state": 4}, {"num_heads": 2}])


@pytest.mark.parametrize("p", [0, 1, 4, T - 1])
def test_no_edit_and_own_patch_equal_the_model(p):
    model = _model(*HYBRID)
    x = torch.randint(0, V, (3, T))
    with torch.no_grad():
        clean, _ = model(x)
    for layer in (0, 1):
        assert_close(intervene(model, x, layer, p, "none"), clean)
        assert_close(intervene(model, x, layer, p, "patch", source=x), clean)
    assert not model.training


@pytest.mark.parametrize("mixer,kw", [("mamba", {"d_state": 4}), ("attention", {"num_heads": 2}), ("gla", {"num_heads": 2})])
def test_patched_state_determines_the_future(mixer, kw):
    """One layer: x and s share the tokens from p on; s's state patched into x at p gives s's outputs from p on."""
    model, p = _model(mixer, 1, kw), 6
    x, s = torch.randint(0, V, (2, T)), torch.randint(0, V, (2, T))
    s[:, p:] = x[:, p:]
    with torch.no_grad():
        want, _ = model(s)
        clean, _ = model(x)
    got = intervene(model, x, 0, p, "patch", source=s)
    assert_close(got[:, p:], want[:, p:])
    assert_close(got[:, :p], clean[:, :p])
    assert (got[:, p:] - clean[:, p:]).abs().max() > 1e-6  # the prefix mattered


@pytest.mark.parametrize("mixer,kw", [("mamba", {"d_state": 4}), ("attention", {"num_heads": 2})])
def test_zero_forgets_the_prefix(mixer, kw):
    """Zeroing a one-layer model's state at p (emptying attention's cache, its positions kept) = running the tokens
    from p alone from that state: for mamba the zero initial state; for attention a fresh cache at position p."""
    model, p = _model(mixer, 1, kw), 5
    x = torch.randint(0, V, (2, T))
    got = intervene(model, x, 0, p, "zero")
    start = model.init_state(2)
    if mixer == "attention":
        start["0.mixer.pos"] = torch.full((2,), p)
    with torch.no_grad():
        want, _ = model(x[:, p:], start)
    assert_close(got[:, p:], want)


def test_locate_table():
    model = _model(*HYBRID)
    x = torch.randint(0, V, (2, T))
    y = torch.randint(0, V, (2, T))
    y[:, :3] = -100
    none = locate(model, x, y, positions=[0, 3, 7], mode="none")
    assert none["layers"] == [0, 1] and none["positions"] == [0, 3, 7]
    assert max(abs(d) for row in none["delta_logp"] for d in row) < 1e-5
    zero = locate(model, x, y, positions=[2, 8], mode="zero")
    flat = [(d, i, p) for i, row in zip(zero["layers"], zero["delta_logp"]) for d, p in zip(row, zero["positions"])]
    d, i, p = min(flat)
    assert zero["located"] == {"layer": i, "position": p, "delta_logp": d,
                               "acc": zero["acc"][zero["layers"].index(i)][zero["positions"].index(p)]}
    assert d != 0.0
    with pytest.raises(ValueError, match="patch"):
        locate(model, x, y, mode="patch")


def test_head_knockout_removes_that_heads_columns():
    model = _model("attention", 2, {"num_heads": 4})
    x = torch.randint(0, V, (2, T))
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.blocks[1].mixer.out.weight[:, 2 * 4:3 * 4] = 0  # head 2 of layer 1 (head_dim 4)
        want, _ = ref(x)
        clean, _ = model(x)
        with knockout_heads(model, 1, [2]):
            got, _ = model(x)
        with knockout_heads(model, 1, [2], positions=[5]):
            at5, _ = model(x)
        after, _ = model(x)
    assert_close(got, want)
    assert torch.equal(after, clean)  # the hook is gone
    assert torch.equal(at5[:, :5], clean[:, :5]) and (at5[:, 5] - clean[:, 5]).abs().max() > 0
    assert torch.equal(at5[:, 6:], clean[:, 6:])  # one layer above: position 5's change reaches only position 5
    y = torch.randint(0, V, (2, T))
    table = locate_heads(model, x, y)
    assert table["heads"] == [[i, h] for i in range(2) for h in range(4)] and len(table["delta_logp"]) == 8
    ssm = _model("mamba", 1, {"d_state": 4})
    with pytest.raises(ValueError, match="heads"):
        with knockout_heads(ssm, 0, [0]):
            pass
    assert locate_heads(ssm, x, y) == {"heads": []}
