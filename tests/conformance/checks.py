"""The conformance checks every registered mixer must pass.

Each check takes a mixer factory (``make() -> Mixer``, fresh module, same seed
-> same weights) and raises AssertionError with a readable message when the
mixer breaks the contract. tests/conformance/test_conformance.py runs them over
``available_mixers()``; test_checks_catch_bugs.py shows they catch broken mixers.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load, save

from rnnlab.layers.base import state_numel
from rnnlab.ops.varlen import cat_rows, cu_seqlens_from_lengths
from rnnlab.testing import assert_close, rel_err

D_MODEL = 32
LENGTHS = (1, 2, 37, 67)  # 1, a prime, and lengths that are not multiples of any chunk size
BATCH = 2


def _x(batch, seq_len, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq_len, D_MODEL, generator=g).to(dtype)


def _clone_state(state):
    return {k: v.clone() for k, v in state.items()}


def _rollout(mixer, x, state=None):
    """Token-by-token recurrent form: one ``forward`` call per token. A mixer with a non-causal prompt prefix
    (``prompt_len``, e.g. jrt_rnn) gets its prompt in one call first, as its semantics require."""
    ys = []
    start = min(getattr(mixer, "prompt_len", 0), x.shape[1]) if state is None else 0
    if start:
        y, state = mixer(x[:, :start])
        ys.append(y)
    for t in range(start, x.shape[1]):
        y, state = mixer(x[:, t : t + 1], state)
        ys.append(y)
    return torch.cat(ys, 1), state


def check_parallel_equals_step(make, lengths=LENGTHS):
    """Parallel forward == token-by-token stepping, outputs and final state."""
    mixer = make().eval()
    with torch.no_grad():
        for T in lengths:
            x = _x(BATCH, T, seed=T)
            y_par, s_par = mixer(x)
            y_rec, s_rec = _rollout(mixer, x)
            assert_close(y_rec, y_par, name=f"step vs parallel output, T={T}")
            for k in s_par:
                assert_close(s_rec[k].float(), s_par[k].float(), name=f"step vs parallel state[{k!r}], T={T}")


def check_split_equals_full(make, splits=((37, 11), (67, 33), (67, 1), (67, 66))):
    """forward on [0:t) then on [t:T) from the returned state == forward on [0:T)."""
    mixer = make().eval()
    with torch.no_grad():
        for T, t in splits:
            x = _x(BATCH, T, seed=100 + T)
            t = max(t, getattr(mixer, "prompt_len", 0))  # a non-causal prompt prefix is given whole (jrt_rnn)
            y_full, s_full = mixer(x)
            y1, s1 = mixer(x[:, :t])
            y2, s2 = mixer(x[:, t:], _clone_state(s1))
            assert_close(torch.cat([y1, y2], 1), y_full, name=f"split at {t} of {T} output")
            for k in s_full:
                assert_close(s2[k].float(), s_full[k].float(), name=f"split at {t} of {T} state[{k!r}]")


def check_gradients(make, T=37):
    """After a small random perturbation of every parameter (so zero-initialised
    branches are live), every parameter and the input get finite, non-zero gradients,
    through the parallel form and through a state carried across a split."""
    mixer = make()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype) * (p.detach().float().std() if p.numel() > 1 else torch.ones(())).clamp_min(0.1))
    x = _x(BATCH, T, seed=3).requires_grad_()
    y1, s = mixer(x[:, :20])
    y2, _ = mixer(x[:, 20:], s)
    y = torch.cat([y1, y2], 1)
    cot = torch.randn(y.shape, generator=g)
    (y * cot).sum().backward()
    problems = []
    for name, p in mixer.named_parameters():
        if p.grad is None:
            problems.append(f"{name}: no gradient")
        elif not torch.isfinite(p.grad).all():
            problems.append(f"{name}: non-finite gradient")
        elif p.grad.abs().max() == 0:
            problems.append(f"{name}: zero gradient")
    if x.grad is None or not torch.isfinite(x.grad).all() or x.grad[:, :20].abs().max() == 0:
        problems.append("input: missing, non-finite or zero gradient (does the state carry information?)")
    assert not problems, "gradient check failed: " + "; ".join(problems)


def check_batch_independence(make, T=37):
    """Perturbing sample j changes no output of sample i != j (values and gradients)."""
    mixer = make().eval()
    x = _x(3, T, seed=5)
    with torch.no_grad():
        y, _ = mixer(x)
        x2 = x.clone()
        x2[1] += torch.randn(T, D_MODEL)
        y2, _ = mixer(x2)
    for i in (0, 2):
        assert_close(y2[i], y[i], tol=1e-6, name=f"sample {i} after perturbing sample 1")
    assert (y2[1] - y[1]).abs().max() > 0, "perturbing sample 1 did not change its own output"
    xg = x.clone().requires_grad_()
    yg, _ = mixer(xg)
    yg[0].sum().backward()
    assert xg.grad[1:].abs().max() == 0, "output of sample 0 has a gradient w.r.t. other samples"


def check_state_size(make, lengths=LENGTHS):
    """state_size(T) == floats actually held per sequence after T tokens; batch in dim 0."""
    mixer = make().eval()
    with torch.no_grad():
        for T in lengths:
            _, s = mixer(_x(BATCH, T))
            for k, v in s.items():
                assert v.shape[0] == BATCH, f"state[{k!r}] has shape {tuple(v.shape)}: batch must be dim 0"
            held, claimed = state_numel(s), mixer.state_size(T)
            assert held == claimed, f"state_size({T}) = {claimed} but the state holds {held} floats per sequence"
            init = mixer.init_state(BATCH)
            assert set(init) == set(s), f"init_state keys {sorted(init)} != returned state keys {sorted(s)}"


def check_bfloat16(make, T=37):
    """A bfloat16 module on bfloat16 input runs, parallel and step, with finite output."""
    mixer = make().to(torch.bfloat16).eval()
    with torch.no_grad():
        x = _x(BATCH, T, dtype=torch.bfloat16)
        y, s = mixer(x)
        assert y.dtype == torch.bfloat16, f"bfloat16 input gave {y.dtype} output"
        y1, _ = mixer(x[:, :1], s)
        assert torch.isfinite(y.float()).all() and torch.isfinite(y1.float()).all(), "non-finite bfloat16 output"
        ref, _ = make().eval()(x.float())
        assert_close(y.float(), ref, tol=0.1, name="bfloat16 vs float32 output")


def check_save_load(make, T=37):
    """Module weights and the recurrent state survive a safetensors round trip."""
    src = make().eval()
    dst = make()
    with torch.no_grad():
        for p in dst.parameters():
            p.add_(1.0)  # make sure the load really overwrites
    blob = save({k: v.contiguous() for k, v in src.state_dict().items()})
    dst.load_state_dict(load(blob))
    dst.eval()
    x = _x(BATCH, T)
    with torch.no_grad():
        y1, s1 = src(x[:, :20])
        s1_loaded = load(save({k: v.contiguous() for k, v in s1.items()}))
        ya, _ = src(x[:, 20:], s1)
        yb, _ = dst(x[:, 20:], s1_loaded)
    assert torch.equal(ya, yb), "outputs differ after a safetensors round trip of weights and state"


def check_bad_input(make):
    """Wrong shapes raise ValueError naming the expected shape."""
    mixer = make()
    for bad in (torch.randn(2, 5, D_MODEL + 1), torch.randn(5, D_MODEL), torch.randn(2, 0, D_MODEL)):
        try:
            mixer(bad)
        except ValueError as e:
            assert str(D_MODEL) in str(e), f"error for shape {tuple(bad.shape)} does not name the expected d_model: {e}"
        else:
            raise AssertionError(f"input of shape {tuple(bad.shape)} was accepted")
    y, s = mixer(_x(0, 5))  # an empty batch: empty outputs and states, no error
    assert y.shape == (0, 5, D_MODEL) and all(t.shape[0] == 0 for t in s.values())
    x = _x(2, 5)
    for dtype in (torch.float64, torch.bfloat16):  # a float32 module outside autocast
        with pytest.raises(ValueError, match="float32"):
            mixer(x.to(dtype))
    for key, t in mixer.init_state(2).items():  # one state tensor at a time, every inner dim one too large
        if t.dim() < 2:
            continue
        bad = mixer.init_state(2)
        bad[key] = torch.zeros(2, *(n + 1 for n in t.shape[1:]), dtype=t.dtype)
        with pytest.raises(ValueError, match=rf"state\['{key}'\] has shape"):
            mixer(x, bad)


PACKED_LENGTHS = (5, 1, 37, 2, 67, 3)  # 1, primes, shorter than every conv width / token shift, not chunk multiples
PREFIXES = (3, 0, 8, 1, 0, 20)          # per-sequence initial states: rows at different positions


def _merge(states):
    """Per-sequence states (batch 1 each) -> one state with N rows (caches right-aligned, zero-padded)."""
    out = {}
    for k in states[0]:
        t = states[0][k]
        for s in states[1:]:
            t = cat_rows(t, s[k])
        out[k] = t
    return out


def _leaf_state(state):
    return {k: (v.detach().clone().requires_grad_() if v.is_floating_point() or v.is_complex() else v.clone()) for k, v in state.items()}


def check_packed_equals_separate(make, lengths=PACKED_LENGTHS, prefixes=PREFIXES):
    """N sequences packed back to back (cu_seqlens), each from its own initial state, == the N separate
    runs: outputs, final states, and gradients of the inputs, the initial states and every parameter."""
    mixer = make()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # perturb so zero-initialised branches are live (as check_gradients)
        for p in mixer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype) * (p.detach().float().std() if p.numel() > 1 else torch.ones(())).clamp_min(0.1))
    xs = [_x(1, L, seed=200 + i) for i, L in enumerate(lengths)]
    inits = []
    with torch.no_grad():
        for i, P in enumerate(prefixes):
            s = mixer.init_state(1) if P == 0 else mixer(_x(1, P, seed=300 + i))[1]
            inits.append(s)
    cots = [torch.randn(x.shape, generator=g) for x in xs]

    def loss(ys, final):
        total = sum((y * c).sum() for y, c in zip(ys, cots))
        return total + sum(0.01 * v.float().pow(2).sum() for v in final.values() if v.is_floating_point() or v.is_complex())

    def grads(leaves):
        params = list(mixer.parameters())
        gs = torch.autograd.grad(loss_value, params + leaves, allow_unused=True)
        return gs

    # separate runs
    sep_x = [x.clone().requires_grad_() for x in xs]
    sep_s = [_leaf_state(s) for s in inits]
    ys, finals = zip(*[mixer(x, s) for x, s in zip(sep_x, sep_s)])
    final_sep = _merge(list(finals))
    loss_value = loss(ys, final_sep)
    keys = sorted(k for k, v in sep_s[0].items() if v.requires_grad)
    leaves_sep = sep_x + [s[k] for s in sep_s for k in keys]
    g_sep = grads(leaves_sep)
    # packed run
    pk_x = [x.clone().requires_grad_() for x in xs]
    pk_s = [_leaf_state(s) for s in inits]
    cu = cu_seqlens_from_lengths(lengths)
    y, final_pk = mixer(torch.cat(pk_x, 1), _merge(pk_s), cu_seqlens=cu)
    assert y.shape == (1, sum(lengths), D_MODEL), f"packed output has shape {tuple(y.shape)}"
    y_parts = list(y.split(list(lengths), 1))
    for i, (a, b) in enumerate(zip(y_parts, ys)):
        assert_close(a, b.detach(), name=f"packed vs separate output of sequence {i} (length {lengths[i]})")
    assert set(final_pk) == set(final_sep), f"packed state keys {sorted(final_pk)} != {sorted(final_sep)}"
    for k in final_sep:
        a, b = final_pk[k], final_sep[k]
        assert a.shape[0] == len(lengths), f"packed final state[{k!r}] has {a.shape[0]} rows, expected N = {len(lengths)}"
        a, b = cat_rows(a[:0], a), cat_rows(a[:0], b)  # same right-aligned shape
        a, b = cat_rows(b[:0], a), cat_rows(a[:0], b)
        assert_close(a.float() if not a.is_complex() else a, (b.float() if not b.is_complex() else b).detach(),
                     name=f"packed vs separate final state[{k!r}]")
    loss_value = loss(y_parts, final_pk)
    leaves_pk = pk_x + [s[k] for s in pk_s for k in keys]
    g_pk = grads(leaves_pk)
    n_par = len(list(mixer.parameters()))

    def grouped(gs):  # parameters one by one; the inputs and each initial-state key as one tensor over all sequences
        out = dict(zip([n for n, _ in mixer.named_parameters()], gs[:n_par]))
        rest = list(gs[n_par:])
        out["x"] = torch.cat([r if r is not None else torch.zeros_like(x) for r, x in zip(rest[: len(xs)], xs)], 1)
        rest = rest[len(xs):]
        # the state leaves are sequence-major over ``keys``
        for j, k in enumerate(keys):
            rows = rest[j :: len(keys)]
            rows = [r if r is not None else torch.zeros_like(s[k]) for r, s in zip(rows, sep_s)]
            out[f"initial state[{k!r}]"] = _merge([{k: r} for r in rows])[k]
        return out

    ga, gb = grouped(g_pk), grouped(g_sep)
    for n, b in gb.items():
        a = ga[n]
        if b is None:
            assert a is None or a.abs().max() == 0, f"gradient of {n}: packed has one, separate none"
            continue
        assert a is not None, f"gradient of {n}: missing in the packed run"
        assert_close(a, b, name=f"packed vs separate gradient of {n}")


def check_packed_nonfinite_isolated(make, lengths=(7, 20, 5, 33)):
    """A NaN or inf inside one packed sequence never reaches another sequence's outputs or final state: they stay
    finite and equal to the clean run's (to float32 roundoff: chunked ops pick their factorization from the
    decays of the whole call, so another row's values may move the others by an ulp; as check_batch_independence)."""
    mixer = make().eval()
    x = _x(1, sum(lengths), seed=17)
    cu = cu_seqlens_from_lengths(lengths)
    with torch.no_grad():
        y, s = mixer(x, cu_seqlens=cu)
        for bad in (float("nan"), float("inf")):
            xb = x.clone()
            xb[0, lengths[0] + 3] = bad  # inside sequence 1
            yb, sb = mixer(xb, cu_seqlens=cu)
            for i, (a, b) in enumerate(zip(y[0].split(list(lengths)), yb[0].split(list(lengths)))):
                if i != 1:
                    assert_close(b, a, tol=1e-6, name=f"a {bad} in sequence 1: outputs of sequence {i}")
            keep = [i for i in range(len(lengths)) if i != 1]
            for k in s:
                assert_close(sb[k][keep].float(), s[k][keep].float(), tol=1e-6, name=f"a {bad} in sequence 1: state[{k!r}] of the others")


def check_bad_cu_seqlens(make):
    """Invalid cu_seqlens raise ValueError naming the rule."""
    mixer = make()
    x = _x(1, 10)
    bad = {
        "start at 0": torch.tensor([1, 4, 10]),
        "end at": torch.tensor([0, 4, 9]),
        "strictly increasing": torch.tensor([0, 6, 4, 10]),
        "int64": torch.tensor([0.0, 4.0, 10.0]),
    }
    for rule, cu in bad.items():
        try:
            mixer(x, cu_seqlens=cu)
        except ValueError as e:
            assert rule in str(e), f"cu_seqlens {cu.tolist()}: error does not name the rule {rule!r}: {e}"
        else:
            raise AssertionError(f"invalid cu_seqlens {cu.tolist()} was accepted")
    try:
        mixer(x, mixer.init_state(3), cu_seqlens=torch.tensor([0, 4, 10]))
    except ValueError as e:
        assert "batch size" in str(e) and "2" in str(e), f"state/cu_seqlens mismatch error is unclear: {e}"
    else:
        if mixer.init_state(3):  # a stateless mixer (moe: {}) has no rows to mismatch
            raise AssertionError("a state of 3 rows was accepted for 2 packed sequences")
    try:
        mixer(_x(2, 10), cu_seqlens=torch.tensor([0, 4, 10]))
    except ValueError as e:
        assert "(1, T" in str(e), f"packed batch-size error is unclear: {e}"
    else:
        raise AssertionError("x with batch 2 was accepted with cu_seqlens")


def _finite(t):
    return bool(torch.isfinite(torch.view_as_real(t) if t.is_complex() else t.float()).all())


def check_autocast_bfloat16(make, T=37):
    """A float32 module under ``torch.autocast("cpu", dtype=torch.bfloat16)`` runs the parallel form and one step
    after it, forward and backward: finite outputs, finite gradients of the input and of every parameter, and
    outputs within the bfloat16 tolerance of check_bfloat16 (0.1 relative) of the float32 module's."""
    ref_mixer = make().eval()
    x = _x(BATCH, T + 1, seed=23)
    with torch.no_grad():
        ref_y, ref_s = ref_mixer(x[:, :T])
        ref_y1, _ = ref_mixer(x[:, T:], ref_s)
    mixer = make().eval()
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = mixer(xg[:, :T])
        y1, s1 = mixer(xg[:, T:], s)
    assert _finite(y) and _finite(y1), "non-finite output under bfloat16 autocast"
    for k, v in s1.items():
        if v.is_floating_point() or v.is_complex():
            assert _finite(v), f"non-finite state[{k!r}] under bfloat16 autocast"
    assert_close(y.float(), ref_y, tol=0.1, name="autocast bfloat16 vs float32 parallel output")
    assert_close(y1.float(), ref_y1, tol=0.1, name="autocast bfloat16 vs float32 step output")
    g = torch.Generator().manual_seed(29)
    loss = (y.float() * torch.randn(y.shape, generator=g)).sum() + (y1.float() * torch.randn(y1.shape, generator=g)).sum()
    loss.backward()
    problems = []
    if xg.grad is None or not _finite(xg.grad):
        problems.append("input: missing or non-finite gradient")
    for name, p in mixer.named_parameters():
        if p.grad is not None and not _finite(p.grad):
            problems.append(f"{name}: non-finite gradient")
        elif p.grad is not None and p.grad.dtype != p.dtype:
            problems.append(f"{name}: gradient dtype {p.grad.dtype} != parameter dtype {p.dtype}")
    assert not problems, "autocast bfloat16 backward failed: " + "; ".join(problems)


def check_float64(make, T=37):
    """A float64 module on float64 input runs, parallel and one step after it: float64 outputs (and floating
    states), equal to the float32 module's outputs within the float32 tolerance."""
    ref_mixer = make().eval()
    x = _x(BATCH, T + 1, seed=31)
    mixer = make().to(torch.float64).eval()
    with torch.no_grad():
        ref_y, ref_s = ref_mixer(x[:, :T])
        ref_y1, _ = ref_mixer(x[:, T:], ref_s)
        x64 = x.double()
        y, s = mixer(x64[:, :T])
        y1, s1 = mixer(x64[:, T:], s)
    assert y.dtype == torch.float64 and y1.dtype == torch.float64, f"float64 input gave {y.dtype} / {y1.dtype} output"
    for k, v in s1.items():
        if v.is_floating_point():
            assert v.dtype == torch.float64, f"float64 module returned state[{k!r}] in {v.dtype}"
        elif v.is_complex():
            assert v.dtype == torch.complex128, f"float64 module returned state[{k!r}] in {v.dtype}"
    assert_close(y, ref_y, name="float64 vs float32 parallel output")
    assert_close(y1, ref_y1, name="float64 vs float32 step output")


def _dt(batch, seq_len, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 1.8 * torch.rand(batch, seq_len, generator=g)


def check_time_step(make, T=37):
    """The per-token time step dt (B, T) of continuous-time mixers (``takes_dt``) follows x's contract: parallel ==
    stepping, split == full, packed == separate (outputs, final states, input gradients), dt = 1 == no dt, and dt
    changes the output. A mixer without ``takes_dt`` rejects dt; a dt of the wrong shape is a ValueError."""
    mixer = make().eval()
    x = _x(BATCH, T, seed=41)
    if not mixer.takes_dt:
        with pytest.raises(ValueError, match="dt"):
            mixer(x, dt=_dt(BATCH, T))
        return
    for bad in (_dt(BATCH, T + 1), _dt(BATCH, T)[..., None], -_dt(BATCH, T)):
        with pytest.raises(ValueError, match="dt"):
            mixer(x, dt=bad)
    dt = _dt(BATCH, T, seed=43)
    with torch.no_grad():
        y, s = mixer(x, dt=dt)
        ys, state = [], None
        for t in range(T):
            yt, state = mixer(x[:, t:t + 1], state, dt=dt[:, t:t + 1])
            ys.append(yt)
        assert_close(torch.cat(ys, 1), y, name="step vs parallel output with dt")
        for k in s:
            assert_close(state[k].float(), s[k].float(), name=f"step vs parallel state[{k!r}] with dt")
        y1, s1 = mixer(x[:, :11], dt=dt[:, :11])
        y2, s2 = mixer(x[:, 11:], _clone_state(s1), dt=dt[:, 11:])
        assert_close(torch.cat([y1, y2], 1), y, name="split output with dt")
        y_one, _ = mixer(x, dt=torch.ones(BATCH, T))
        y_none, _ = mixer(x)
        assert_close(y_one, y_none, name="dt = 1 vs no dt")
        assert rel_err(y_none, y) > 1e-3, "dt does not change the output"
    lengths = (5, 1, 13, 2)
    xs = [_x(1, L, seed=50 + i).requires_grad_() for i, L in enumerate(lengths)]
    dts = [_dt(1, L, seed=60 + i) for i, L in enumerate(lengths)]
    seps = [mixer(xi, dt=di) for xi, di in zip(xs, dts)]
    xp = torch.cat([xi.detach() for xi in xs], 1).requires_grad_()
    yp, sp = mixer(xp, dt=torch.cat(dts, 1), cu_seqlens=cu_seqlens_from_lengths(lengths))
    assert_close(yp, torch.cat([o[0] for o in seps], 1).detach(), name="packed vs separate output with dt")
    for k in sp:
        assert_close(sp[k].float(), torch.cat([o[1][k] for o in seps]).float().detach(), name=f"packed vs separate state[{k!r}] with dt")
    cot = torch.randn(yp.shape, generator=torch.Generator().manual_seed(3))
    (gp,) = torch.autograd.grad((yp * cot).sum(), xp)
    gs = torch.autograd.grad(sum((o[0] * c).sum() for o, c in zip(seps, cot.split(list(lengths), 1))), xs)
    assert_close(gp, torch.cat(gs, 1), name="packed vs separate input gradient with dt")


CHECKS = {
    "parallel_equals_step": check_parallel_equals_step,
    "split_equals_full": check_split_equals_full,
    "gradients": check_gradients,
    "batch_independence": check_batch_independence,
    "state_size": check_state_size,
    "bfloat16": check_bfloat16,
    "save_load": check_save_load,
    "bad_input": check_bad_input,
    "packed_equals_separate": check_packed_equals_separate,
    "bad_cu_seqlens": check_bad_cu_seqlens,
    "packed_nonfinite_isolated": check_packed_nonfinite_isolated,
    "autocast_bfloat16": check_autocast_bfloat16,
    "float64": check_float64,
    "time_step": check_time_step,
}


def factory(name: str, seed: int = 0, **overrides):
    """make() -> a fresh small instance of a registered mixer, same weights every call."""
    from rnnlab.layers.registry import create_mixer, mixer_info

    kwargs = {**mixer_info(name).small, **overrides}

    def make():
        torch.manual_seed(seed)
        return create_mixer(name, D_MODEL, **kwargs)

    return make
