"""Every diagonal-family mixer: its parallel form (default backend) against the same mixer with
``backend="reference"`` (the recurrence as a plain loop over t), same weights, continuing from a
non-trivial state: outputs, new state, and gradients of x, of the initial state and of every
parameter under random cotangents.  Lengths and edge cases of the ops are covered in tests/ops."""
import pytest
import torch

import rnnlab
from rnnlab.layers.registry import mixer_info
from rnnlab.testing import assert_close

MIXERS = ["s4d", "s4", "s5", "lru", "mamba", "longhorn", "hawk", "hgrn", "rwkv4", "mingru", "minlstm"]
D = 8
# S4's FFT form sums Cauchy kernels combined by the Woodbury identity: in float32 its parameter gradients differ
# from the loop's by roundoff of up to 2.5e-5 relative (Δ, Re Λ; measured on an AVX2 CPU, 1.1e-5 elsewhere), and
# the kernel in complex128 brings that to 5e-6 at 3.3x the training time. So its two forms are compared where
# roundoff cannot hide a wrong formula: in float64, to float64's tolerance (its conformance checks stay float32).
DTYPE = {"s4": torch.float64}


def _make(name, dtype=None, **kw):
    torch.manual_seed(0)
    kwargs = {**mixer_info(name).small, **kw}
    return rnnlab.create_mixer(name, D, **kwargs).to(dtype or DTYPE.get(name, torch.float32))


def _run(m, x, state, dt=None, seed=7):
    """Outputs, new state and the gradients (x, the state's tensors, dt when given, every parameter) of a random
    projection of the outputs and the new state."""
    leaves = {"x": x.clone().requires_grad_(), **{k: v.clone().requires_grad_() for k, v in state.items()}}
    if dt is not None:
        leaves["dt"] = dt.clone().requires_grad_()
    y, new = m(leaves["x"], {k: leaves[k] for k in state}, **({"dt": leaves["dt"]} if dt is not None else {}))
    g = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=g).to(y.dtype)).sum()
    loss = loss + sum((new[k] * torch.randn(new[k].shape, generator=g).to(new[k].dtype)).sum() for k in sorted(new))
    params = dict(m.named_parameters())
    grads = torch.autograd.grad(loss, list(leaves.values()) + list(params.values()), allow_unused=True)
    names = [f"d{k}" for k in leaves] + [f"d{k}" for k in params]
    return y, new, dict(zip(names, grads))


def check_against_reference(name: str, T: int = 37, with_state: bool = True, dtype: torch.dtype | None = None,
                            with_dt: bool = False, **kw) -> None:
    """The parallel form of mixer ``name`` (options ``kw``) == its backend="reference" loop on x (2, T, D), from a state
    left by an 11-token prefix (or the empty state), in ``dtype`` (default DTYPE's): outputs, new state, all gradients.
    A mixer with a time step (takes_dt) runs its prefix with random dt; ``with_dt`` gives x a random dt too."""
    fast, ref = _make(name, dtype, **kw), _make(name, dtype, backend="reference", **kw)
    f = dtype or DTYPE.get(name, torch.float32)
    ref.load_state_dict(fast.state_dict())
    with torch.no_grad():  # move away from the init so every term matters
        for p in fast.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref.load_state_dict(fast.state_dict())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        prefix = torch.randn(2, 11, D, generator=g).to(f)
        dt0 = {"dt": (0.5 + torch.rand(2, 11, generator=g)).to(f)} if fast.takes_dt else {}
        _, state = fast(prefix, **dt0)  # a realistic state to continue from
    if not with_state:
        state = fast.init_state(2)
    x = torch.randn(2, T, D, generator=g).to(f)
    dt = (0.2 + 2 * torch.rand(2, T, generator=g)).to(f) if with_dt else None
    y, s, grads = _run(fast, x, state, dt)
    y_r, s_r, grads_r = _run(ref, x, state, dt)
    assert_close(y, y_r, name="y")
    for k in s_r:
        assert_close(s[k], s_r[k], name=f"state[{k}]")
    for k, gr in grads_r.items():
        assert (gr is None) == (grads[k] is None), k
        if gr is not None:
            assert_close(grads[k], gr, name=k)


@pytest.mark.parametrize("name", MIXERS)
def test_parallel_form_matches_reference_loop(name):
    check_against_reference(name)


@pytest.mark.parametrize("name", MIXERS)
def test_fresh_state_matches_reference_loop(name):
    """Called without a state (the training path; S4/S4D then skip their initial-state terms): outputs,
    final state and every parameter's gradient == the reference loop's."""
    fast, ref = _make(name), _make(name, backend="reference")
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 37, D, generator=torch.Generator().manual_seed(2)).to(DTYPE.get(name, torch.float32))
    outs = []
    for m in (fast, ref):
        y, s = m(x)
        loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + sum(v.square().sum() for v in s.values())
        outs.append((y, s, torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)))
    (y, s, g), (y_r, s_r, g_r) = outs
    assert_close(y, y_r, name="y")
    for k in s_r:
        assert_close(s[k], s_r[k], name=f"state[{k}]")
    for (k, _), a, b in zip(fast.named_parameters(), g, g_r):
        assert (a is None) == (b is None), k
        if b is not None:
            assert_close(a, b, name=k)
