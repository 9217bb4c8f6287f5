"""The base class's per-call checks at decode (rnnlab.layers.base): a state the mixer returned is not re-checked, and
anything else still fails with a clear error; the module's dtype is found again after its parameters change."""
import pickle

import pytest
import torch

from rnnlab.layers.registry import create_mixer, mixer_info

NAMES = ["attention", "gla", "lstm", "mamba2"]


def _mixer(name):
    torch.manual_seed(0)
    return create_mixer(name, 16, **mixer_info(name).small)


@pytest.mark.parametrize("name", NAMES)
def test_a_returned_state_skips_check_state_and_any_change_is_checked(name, monkeypatch):
    m = _mixer(name)
    x = torch.randn(2, 1, 16)
    _, s = m(torch.randn(2, 5, 16))
    calls = []
    check = m.check_state
    monkeypatch.setattr(m, "check_state", lambda *a, **k: calls.append(1) or check(*a, **k))
    _, s = m(x, s)
    assert calls == []  # the state the last call returned: already checked
    key, t = next((k, v) for k, v in s.items() if v.dim() >= 2)
    bad = dict(s)
    bad[key] = torch.zeros(2, *(n + 1 for n in t.shape[1:]), dtype=t.dtype)  # one entry replaced by a wrong one
    with pytest.raises(ValueError, match=rf"state\['{key}'\] has shape"):
        m(x, bad)
    with pytest.raises(ValueError, match="batch size"):  # the same tensors for another batch size
        m(torch.randn(3, 1, 16), s)
    with pytest.raises(ValueError, match="expects a state dict with keys"):  # an entry added
        m(x, {**s, "extra": t})
    assert len(calls) == 3


def test_the_module_dtype_follows_replaced_and_converted_parameters():
    m = _mixer("gla")
    x = torch.randn(1, 1, 16)
    m(x)
    m.double()  # converted in place
    with pytest.raises(ValueError, match="float64 parameters"):
        m(x)
    m.load_state_dict({k: v.float() for k, v in m.state_dict().items()}, assign=True)  # parameters replaced
    m(x)
    with pytest.raises(ValueError, match="float32 parameters"):
        m(x.double())


def test_a_mixer_with_its_decode_records_pickles():
    m = _mixer("attention")
    _, s = m(torch.randn(1, 3, 16))
    _, s = m(torch.randn(1, 1, 16), s)
    m2 = pickle.loads(pickle.dumps(m))
    y, _ = m2(torch.randn(1, 1, 16), s)
    assert y.shape == (1, 1, 16)
