"""plstm (pLSTM's 1-D Source-Transition-Mark recurrence): the chunk and recurrent forms (signs of the transition
absorbed into q and k, the GLA core) against the reference loop differentiated by autograd: values, final states
and the gradients of q, k, v, every gate and the initial state under random cotangents; lengths 1, 2, primes and
non-multiples of the chunk; signed transitions incl. exact zeros; float64 and float32; state continuation; bad
input. (Packed cu_seqlens: tests/ops/test_ops_varlen.py.)"""
import pytest
import torch

from rnnlab.ops.plstm import plstm, plstm_ref
from rnnlab.testing import assert_close


def _inputs(T, B=2, H=3, K=4, V=5, seed=0, dtype=torch.float64, zeros=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    Tg = torch.tanh(2 * r(B, T, H))  # signed, |T| < 1 (P-mode)
    if zeros:
        Tg[:, ::3] = 0.0
    gates = dict(S=torch.sigmoid(r(B, T, H)), T=Tg, M=torch.sigmoid(r(B, T, H)), D=torch.sigmoid(r(B, T, H)))
    x = dict(q=r(B, T, H, K), k=r(B, T, H, K), v=r(B, T, H, V), **gates, initial_state=r(B, H, K, V))
    return {n: t.to(dtype) for n, t in x.items()}


def _run(fn, x, seed=1, **kw):
    leaves = {n: t.detach().clone().requires_grad_() for n, t in x.items()}
    y, C = fn(**leaves, **kw)
    g = torch.Generator().manual_seed(seed)
    cot = lambda t: torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)  # noqa: E731  (same draws in any dtype)
    loss = (y * cot(y)).sum() + (C * cot(C)).sum()
    return {"y": y, "C": C, **{f"d{n}": d for n, d in zip(leaves, torch.autograd.grad(loss, list(leaves.values())))}}


@pytest.mark.parametrize("form", ["chunk", "recurrent"])
@pytest.mark.parametrize("T", [1, 2, 17, 37, 65])
def test_matches_reference(form, T):
    x = _inputs(T)
    got, want = _run(plstm, x, backend=form, chunk_size=16), _run(plstm_ref, x)
    for name in want:
        assert_close(got[name], want[name], name=name)


@pytest.mark.parametrize("form", ["chunk", "recurrent"])
@pytest.mark.parametrize("zeros", [False, True])
def test_float32_and_zero_transitions(form, zeros):
    """float32 against the float64 loop; transitions exactly 0 on every third step (the state is reset there): every
    value and gradient but dT, which the log-decay core cannot give at T = 0 exactly (module doc)."""
    x = _inputs(40, zeros=zeros, dtype=torch.float32)
    got, want = _run(plstm, x, backend=form, chunk_size=16), _run(plstm_ref, {n: t.double() for n, t in x.items()})
    for name in want:
        if not (zeros and name == "dT"):
            assert_close(got[name], want[name].float(), 1e-5, name=name)
    if zeros:
        nonzero = x["T"] != 0
        assert_close(got["dT"][nonzero], want["dT"][nonzero].float(), 1e-5, name="dT where T != 0")


def test_state_continuation_and_errors():
    x = _inputs(30)
    y, C = plstm(**x)
    first = {n: (t[:, :13] if t.dim() > 3 or n in "STMD" else t) for n, t in x.items()}
    rest = {n: (t[:, 13:] if t.dim() > 3 or n in "STMD" else t) for n, t in x.items()}
    y1, C1 = plstm(**first)
    y2, C2 = plstm(**{**rest, "initial_state": C1})
    assert_close(torch.cat([y1, y2], 1), y, name="y")
    assert_close(C2, C, name="C")
    with pytest.raises(ValueError, match="gate T must be"):
        plstm(**{**x, "T": x["T"][..., :1]})
    with pytest.raises(ValueError, match="backend must be one of"):
        plstm(**x, backend="scan")
