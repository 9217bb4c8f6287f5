"""Every public op with fla's packed ``cu_seqlens`` (rnnlab.ops.varlen.varlen): N sequences back to back in
(1, T, ...), N initial states, N final states == the op run on each sequence alone (and == the reference
loop run on each sequence alone): outputs, final states, and the gradients of every input and of the
initial states. Lengths 1, a prime, below the conv width, not multiples of the chunk size; strong decays
(log-decays -5 to -30 per step, where a sequence that was not reset would see its neighbour through the
e^-30 floor of rnnlab/ops/_exp.py) for the decaying ops. Then the argument rules: bad cu_seqlens, batch
!= 1, unknown keywords (TypeError), fla arguments that are not implemented (NotImplementedError)."""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from rnnlab.ops import (cfc, conv, delta, gla, hippo, hippo_rnn, log_scan, ltc, matrix_scan, mlstm, plstm, rat, reservoir, rnn,
                        rwkv6, rwkv7, scan, selective_scan, ssm_kernels, wkv4)
from rnnlab.ops.varlen import cu_seqlens_from_lengths, map_state
from rnnlab.testing import assert_close

LENGTHS = (5, 1, 37, 2, 67)  # 1; 37, 67 prime; 1, 2 below the conv width 4; none a multiple of a chunk
T_ALL, N = sum(LENGTHS), len(LENGTHS)
CU = cu_seqlens_from_lengths(LENGTHS)
BOUNDS = list(zip(CU[:-1].tolist(), CU[1:].tolist()))
H, K, V, D, NS = 2, 8, 8, 6, 4  # heads, key and value dims, channels, SSM state size


def _strong(*shape):
    """log-decays in [-30, -5] per step."""
    return -(5 + 25 * torch.rand(*shape))


# At log-decays of -5 to -30 on every step the chunk forms' gradient of the log-decay (and mLSTM's of its gates)
# is read off sums of O(1) terms that cancel (q.dq - k.dk, the diagonal pairs of a chunk, its last key: each
# factor e^0 = 1 enters twice with opposite signs) while the true gradient is of the size of e^g, so its float32
# relative error is ~1e-4 (measured 7.5e-5 to 3.9e-4 against the float64 loop), the same packed or sequence by
# sequence: a property of those chunk backwards, not of the packing. Those results are left out of the
# all-strong cases; the mild cases compare them, and every output, state and other gradient is compared.
STRONG_DECAY_NOTE = "chunk-form decay gradients at all-strong decays: ~1e-4 float32 error, packed or not"


def _ill(form, strong, names):
    return names if strong and form == "chunk" else ()


@dataclass
class Case:
    """One op: ``time`` the time-major inputs (1, T, ...), ``params`` the other arguments (tensors are
    differentiated too), ``state`` the N initial states (None: the op has none)."""
    fn: Callable
    ref: Callable
    time: dict
    params: dict = field(default_factory=dict)
    state: object = None
    state_name: str | None = "initial_state"
    final: str | None = "output_final_state"  # None: the op always returns its final state
    ill: tuple[str, ...] = ()  # results not compared (see STRONG_DECAY_NOTE)


def _qkv(Hq=H):
    return dict(q=torch.randn(1, T_ALL, Hq, K), k=torch.randn(1, T_ALL, Hq, K), v=torch.randn(1, T_ALL, H, V))


def _gla(form, kind, strong):
    fn = getattr(gla, f"{form}_{kind}")
    ref = getattr(gla, f"naive_recurrent_{kind}")
    time = _qkv(Hq=H if kind == "gla" else 1)  # simple GLA and linear attention: q, k shared by the two heads
    if kind == "gla":
        time["g"] = _strong(1, T_ALL, H, K) if strong else F.logsigmoid(torch.randn(1, T_ALL, H, K)) / 4
    elif kind == "simple_gla":
        time["g"] = _strong(1, T_ALL, H) if strong else -0.3 * torch.rand(1, T_ALL, H)
    return Case(fn, ref, time, state=torch.randn(N, H, K, V), ill=_ill(form, strong, ("dg",)))


def _linear_attn_normalized(form):
    time = dict(q=torch.rand(1, T_ALL, H, K), k=torch.rand(1, T_ALL, H, K), v=torch.randn(1, T_ALL, H, V))  # q.k > 0
    return Case(getattr(gla, f"{form}_linear_attn"), gla.naive_recurrent_linear_attn, time, dict(normalize=True),
                state=torch.randn(N, H, K, V))


def _mlstm(form, strong):
    time = _qkv()
    time.update(i=torch.randn(1, T_ALL, H), f=_strong(1, T_ALL, H) if strong else 3 + 3 * torch.rand(1, T_ALL, H))
    state = (torch.randn(N, H, K, V), torch.randn(N, H, K), torch.randn(N, H))
    return Case(getattr(mlstm, f"{form}_mlstm"), mlstm.naive_recurrent_mlstm, time, state=state, ill=_ill(form, strong, ("di", "df")))


def _rwkv6(form, strong):
    time = dict(r=torch.randn(1, T_ALL, H, K), k=torch.randn(1, T_ALL, H, K), v=torch.randn(1, T_ALL, H, V),
                w=_strong(1, T_ALL, H, K) if strong else -torch.exp(-6 + 5 * torch.rand(1, T_ALL, H, K)))
    return Case(getattr(rwkv6, f"{form}_rwkv6"), rwkv6.naive_recurrent_rwkv6, time, dict(u=torch.randn(H, K)),
                state=torch.randn(N, H, K, V), ill=_ill(form, strong, ("dw",)))


def _delta(form, kind, strong, groups=1):
    """``groups`` G: G·H value heads (grouped value heads, the gated delta rule)."""
    nh = 2 if kind == "delta_product" else None
    extra = () if nh is None else (nh,)
    HV = groups * H
    time = dict(q=torch.randn(1, T_ALL, H, K), k=F.normalize(torch.randn(1, T_ALL, H, *extra, K), dim=-1),
                v=torch.randn(1, T_ALL, HV, *extra, V), beta=2 * torch.rand(1, T_ALL, HV, *extra))
    if kind != "delta_rule":
        time["g"] = _strong(1, T_ALL, HV) if strong else -0.3 * torch.rand(1, T_ALL, HV)
    params = {} if nh is None else dict(num_householder=nh)
    name = f"{form}_{kind}" if kind != "delta_rule" else f"{form}_delta_rule"
    return Case(getattr(delta, name), getattr(delta, f"naive_recurrent_{kind}"), time, params, state=torch.randn(N, HV, K, V),
                ill=_ill(form, strong, ("dg",)))


def _rwkv7(form, strong):
    kk = F.normalize(torch.randn(1, T_ALL, H, K), dim=-1)
    time = dict(q=torch.randn(1, T_ALL, H, K), k=torch.randn(1, T_ALL, H, K), v=torch.randn(1, T_ALL, H, V),
                w=_strong(1, T_ALL, H, K) if strong else -0.6 * torch.rand(1, T_ALL, H, K),
                a=-kk, b=kk * torch.rand(1, T_ALL, H, K))
    return Case(getattr(rwkv7, f"{form}_rwkv7"), rwkv7.naive_recurrent_rwkv7, time, state=torch.randn(N, H, K, V),
                ill=_ill(form, strong, ("dw",)))


def _linear_scan(backend, strong, broadcast=False):
    a = torch.exp(_strong(1, T_ALL, D)) if strong else 0.5 + 0.5 * torch.rand(1, T_ALL, D)
    time, params = dict(b=torch.randn(1, T_ALL, D)), dict(backend=backend)
    if broadcast:
        params["a"] = a[0, 0]  # (D,): one decay for every step
    else:
        time["a"] = a
    ref = lambda b, a, initial_state, backend: scan.linear_scan_ref(a.expand_as(b), b, initial_state)  # noqa: E731
    return Case(scan.linear_scan, ref, time, params, state=torch.randn(N, D), final=None)


def _selective_scan(backend, strong):
    A = -(1 + torch.rand(D, NS))
    dt = (5 + 10 * torch.rand(1, T_ALL, D)) if strong else 0.1 * torch.rand(1, T_ALL, D)  # dt A in [-30, -5] when strong
    time = dict(x=torch.randn(1, T_ALL, D), dt=dt, B=torch.randn(1, T_ALL, NS), C=torch.randn(1, T_ALL, NS), z=torch.randn(1, T_ALL, D))
    params = dict(A=A, D=torch.randn(D), backend=backend)
    ref = lambda backend, **kw: selective_scan.selective_scan_ref(**kw)  # noqa: E731
    return Case(selective_scan.selective_scan, ref, time, params, state=torch.randn(N, D, NS), final=None)


def _log_scan(method, strong):
    time = dict(log_a=_strong(1, T_ALL, D) if strong else F.logsigmoid(torch.randn(1, T_ALL, D)), log_b=torch.randn(1, T_ALL, D))
    ref = lambda method, **kw: log_scan.log_scan_ref(**kw)  # noqa: E731
    return Case(log_scan.log_scan, ref, time, dict(method=method), state=torch.rand(N, D) + 0.1, final=None)


def _wkv4(strong):
    time = dict(k=torch.randn(1, T_ALL, D), v=torch.randn(1, T_ALL, D))
    params = dict(w=_strong(D) if strong else -torch.exp(0.5 * torch.randn(D)), u=torch.randn(D))
    state = torch.stack([torch.randn(N, D), torch.rand(N, D) + 0.5, torch.randn(N, D)], 1)  # [num, den, max]
    return Case(wkv4.wkv4, wkv4.wkv4_ref, time, params, state=state)


def _matrix_scan(backend, kind):
    """Input-dependent transitions: near-orthogonal 3x3 matrices with b, the same normalized without b, diagonals in (-1, 1)."""
    Q = torch.linalg.qr(torch.randn(1, T_ALL, H, 3, 3))[0] * (1 + 0.1 * torch.randn(1, T_ALL, H, 3, 1))
    time = dict(A=2 * torch.rand(1, T_ALL, H, 3) - 1 if kind == "diag" else Q)
    if kind != "normalize":
        time["b"] = torch.randn(1, T_ALL, H, 3)
    ref = lambda backend, **kw: matrix_scan.matrix_scan_ref(**kw)  # noqa: E731
    return Case(matrix_scan.matrix_scan, ref, time, dict(normalize=kind == "normalize", backend=backend),
                state=torch.randn(N, H, 3), final=None)


def _plstm(backend):
    """pLSTM's source / signed transition / mark / direct gates per head (rnnlab.ops.plstm)."""
    gates = dict(S=torch.rand(1, T_ALL, H), T=2 * torch.rand(1, T_ALL, H) - 1, M=torch.rand(1, T_ALL, H), D=torch.rand(1, T_ALL, H))
    ref = lambda backend, chunk_size, **kw: plstm.plstm_ref(**kw)  # noqa: E731
    return Case(plstm.plstm, ref, {**_qkv(), **gates}, dict(backend=backend, chunk_size=16), state=torch.randn(N, H, K, V), final=None)


def _diag_loop(u, C, log_z, Bbar, h0):
    """S4D's recurrence, the specification of diag_conv: h_t = e^{log_z} h_{t-1} + B̄ u_t, y_t = 2 Re(C h_t)."""
    h = h0 if h0 is not None else torch.zeros(u.shape[0], *C.shape, dtype=C.dtype)
    ys = []
    for ut in u.unbind(1):
        h = torch.exp(log_z) * h + Bbar * ut[..., None]
        ys.append(2 * (C * h).sum(-1).real)
    return torch.stack(ys, 1), h


def _diag_conv(strong):
    cplx = lambda re: torch.complex(re, torch.randn(H, NS))  # noqa: E731
    log_z = cplx(_strong(H, NS) if strong else -0.5 * torch.rand(H, NS))
    params = dict(C=cplx(torch.randn(H, NS)), log_z=log_z, Bbar=cplx(torch.randn(H, NS)))
    state = torch.complex(torch.randn(N, H, NS), torch.randn(N, H, NS))
    return Case(ssm_kernels.diag_conv, _diag_loop, dict(u=torch.randn(1, T_ALL, H)), params, state=state, state_name="h0", final=None)


def _dense_ssm():
    from rnnlab.ops.hippo import discretize, legs

    A, B = legs(NS)
    Ab, Bb = (t.float() for t in discretize(A, B, torch.tensor([0.05, 0.2], dtype=torch.float64)))
    return Case(ssm_kernels.dense_ssm_conv, ssm_kernels.dense_ssm_ref, dict(u=torch.randn(1, T_ALL, H)),
                dict(Abar=Ab, Bbar=Bb, C=torch.randn(H, NS)), state=torch.randn(N, H, NS), state_name="h0", final=None)


def _continuous(name):
    """The continuous-time cells with a per-token time step dt, packed like x."""
    Hh = 6
    time = dict(x=torch.randn(1, T_ALL, D), dt=0.2 + 2 * torch.rand(1, T_ALL))
    if name == "ltc":
        params = dict(sensory_mu=torch.rand(D, Hh), sensory_sigma=3 + torch.rand(D, Hh), sensory_w=torch.rand(D, Hh),
                      sensory_erev=torch.randn(D, Hh), mu=torch.rand(Hh, Hh), sigma=3 + torch.rand(Hh, Hh), w=torch.rand(Hh, Hh),
                      erev=torch.randn(Hh, Hh), gleak=torch.rand(Hh), vleak=torch.randn(Hh), cm=0.5 + torch.rand(Hh))
        return Case(ltc.ltc, ltc.ltc_ref, time, params, state=torch.randn(N, Hh), final=None)
    if name == "cfc":
        params = dict(weight=torch.randn(16, D + Hh) / 4, bias=torch.randn(16), head_weight=torch.randn(3 * Hh, 16) / 4,
                      head_bias=torch.randn(3 * Hh))
        return Case(cfc.cfc, cfc.cfc_ref, time, params, state=torch.randn(N, Hh), final=None)
    M, NN = 2, 5
    params = dict(weight=torch.randn(2 * Hh, Hh + M * NN + D) / 4, bias=torch.randn(2 * Hh), weight_f=torch.randn(M, Hh),
                  bias_f=torch.randn(M), N=NN)
    state = (torch.randn(N, Hh), torch.randn(N, M, NN), torch.rand(N) * 5)
    return Case(hippo_rnn.hippo_rnn, hippo_rnn.hippo_rnn_ref, time, params, state=state, final=None)


def _reservoir(name):
    Nr = 6
    if name == "cyclic_memory":
        return Case(reservoir.cyclic_memory, reservoir.cyclic_memory_ref, dict(x=torch.randn(1, T_ALL, D)),
                    dict(V_in=torch.randn(Nr, D), bias=torch.randn(Nr)), state=torch.randn(N, Nr), final=None)
    params = dict(W_in=torch.randn(Nr, D), W=reservoir.spectral_rescale(torch.randn(Nr, Nr), 0.9), bias=torch.randn(Nr),
                  O=reservoir.orthogonal(Nr, "random"), alpha=0.5, beta=0.7)
    return Case(reservoir.residual_reservoir, reservoir.residual_reservoir_ref, dict(x=torch.randn(1, T_ALL, D)), params,
                state=torch.randn(N, Nr), final=None)


def _fft_causal_conv():
    return Case(ssm_kernels.fft_causal_conv, ssm_kernels.fft_causal_conv_ref, dict(u=torch.randn(1, T_ALL, H)),
                dict(K=torch.randn(H, T_ALL)), state_name=None, final=None)


def _causal_conv1d():
    params = dict(weight=torch.randn(D, 4), bias=torch.randn(D), activation="silu")
    return Case(conv.causal_conv1d, conv.causal_conv1d_ref, dict(x=torch.randn(1, T_ALL, D)), params,
                state=torch.randn(N, 3, D), final=None)


def _rnn(cell):
    G, S = rnn.CELLS[cell]
    Hh = 8
    params = dict(weight_hh=torch.randn(G * Hh, Hh) / Hh ** 0.5, bias_hh=torch.randn(G * Hh))
    state = tuple(torch.randn(N, Hh) for _ in range(S))
    if cell == "slstm":  # n > 0 (a normalizer), m the stabilizer
        state = (state[0], state[1], torch.rand(N, Hh) + 0.5, state[3])
    return Case(getattr(rnn, cell), getattr(rnn, f"{cell}_ref"), dict(gx=torch.randn(1, T_ALL, G * Hh)), params, state=state)


CASES = {
    **{f"{form}_{kind}{'_strong' * s}": (lambda form=form, kind=kind, s=s: _gla(form, kind, s))
       for form in ("chunk", "fused_recurrent", "naive_recurrent") for kind in ("gla", "simple_gla", "linear_attn")
       for s in ((False, True) if kind != "linear_attn" else (False,))},
    **{f"{form}_linear_attn_normalize": (lambda form=form: _linear_attn_normalized(form)) for form in ("chunk", "fused_recurrent", "naive_recurrent")},
    **{f"{form}_mlstm{'_strong' * s}": (lambda form=form, s=s: _mlstm(form, s)) for form in ("chunk", "fused_recurrent", "naive_recurrent") for s in (False, True)},
    **{f"{form}_rwkv6{'_strong' * s}": (lambda form=form, s=s: _rwkv6(form, s)) for form in ("chunk", "fused_recurrent", "naive_recurrent") for s in (False, True)},
    **{f"{form}_{kind}{'_strong' * s}": (lambda form=form, kind=kind, s=s: _delta(form, kind, s))
       for form in ("chunk", "fused_recurrent", "naive_recurrent") for kind in ("delta_rule", "gated_delta_rule", "delta_product")
       for s in ((False, True) if kind != "delta_rule" else (False,))},
    **{f"{form}_gated_delta_rule_grouped_v": (lambda form=form: _delta(form, "gated_delta_rule", False, groups=2))
       for form in ("chunk", "fused_recurrent", "naive_recurrent")},
    **{f"{form}_rwkv7{'_strong' * s}": (lambda form=form, s=s: _rwkv7(form, s)) for form in ("chunk", "fused_recurrent", "naive_recurrent") for s in (False, True)},
    **{f"linear_scan_{be}{'_strong' * s}": (lambda be=be, s=s: _linear_scan(be, s)) for be in ("auto", "parallel", "reference") for s in (False, True)},
    "linear_scan_broadcast_a": lambda: _linear_scan("auto", False, broadcast=True),
    **{f"selective_scan_{be}{'_strong' * s}": (lambda be=be, s=s: _selective_scan(be, s)) for be in ("auto", "chunked") for s in (False, True)},
    **{f"log_scan_{m}{'_strong' * s}": (lambda m=m, s=s: _log_scan(m, s)) for m in ("logaddexp", "heinsen") for s in (False, True)},
    **{f"wkv4{'_strong' * s}": (lambda s=s: _wkv4(s)) for s in (False, True)},
    **{f"diag_conv{'_strong' * s}": (lambda s=s: _diag_conv(s)) for s in (False, True)},
    **{f"matrix_scan_{be}_{kind}": (lambda be=be, kind=kind: _matrix_scan(be, kind))
       for be in ("chunk", "scan", "recurrent", "reference") for kind in ("full", "normalize", "diag")},
    **{f"plstm_{be}": (lambda be=be: _plstm(be)) for be in ("chunk", "recurrent", "reference")},
    "fft_causal_conv": _fft_causal_conv,
    "dense_ssm_conv": _dense_ssm,
    **{name: (lambda name=name: _continuous(name)) for name in ("ltc", "cfc", "hippo_rnn")},
    **{name: (lambda name=name: _reservoir(name)) for name in ("residual_reservoir", "cyclic_memory")},
    "causal_conv1d": _causal_conv1d,
    **{cell: (lambda cell=cell: _rnn(cell)) for cell in ("elman", "lstm", "gru", "slstm")},
}


def _leaves(case: Case) -> tuple[dict, dict, object, list]:
    time = {n: t.clone().requires_grad_() for n, t in case.time.items()}
    params = {n: (t.clone().requires_grad_() if isinstance(t, torch.Tensor) else t) for n, t in case.params.items()}
    state = map_state(case.state, lambda t: t.clone().requires_grad_())
    leaves = list(time.values()) + [t for t in params.values() if isinstance(t, torch.Tensor)]
    map_state(state, lambda t: leaves.append(t) or t)
    return time, params, state, leaves


def _call(fn, case: Case, time, params, state, **kw):
    args = {**time, **params, **kw}
    if case.state_name:
        args[case.state_name] = state
    if case.final:
        args[case.final] = True
    out = fn(**args)
    return (out, None) if case.state_name is None else out


def _per_sequence(fn, case: Case, time, params, state):
    """The op on each sequence alone, outputs concatenated along time, final states stacked along dim 0."""
    outs, finals = [], []
    for i, (a, b) in enumerate(BOUNDS):
        o, f = _call(fn, case, {n: t[:, a:b] for n, t in time.items()}, params, map_state(state, lambda t: t[i : i + 1]))
        outs.append(o)
        finals.append(f)
    if case.state_name is None:
        return torch.cat(outs, 1), None
    final = (tuple(torch.cat(parts, 0) for parts in zip(*finals)) if isinstance(finals[0], tuple) else torch.cat(finals, 0))
    return torch.cat(outs, 1), final


def _flat(x) -> list:
    out = []
    map_state(x, lambda t: out.append(t) or t)
    return out


def _real(t):
    return torch.view_as_real(t) if t.is_complex() else t


def _results(run, case: Case) -> dict:
    """Run ``run(time, params, state) -> (out, final)`` on fresh leaves: values and the gradients of a random
    projection of every output and final-state tensor (fixed cotangents) with respect to every leaf."""
    time, params, state, leaves = _leaves(case)
    out, final = run(time, params, state)
    values = [out] + _flat(final)
    gen = torch.Generator().manual_seed(7)
    loss = sum((_real(v).float() * torch.randn(_real(v).shape, generator=gen)).sum() for v in values)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    names = list(time) + [n for n, t in params.items() if isinstance(t, torch.Tensor)] + [f"initial_state[{j}]" for j in range(len(_flat(state)))]
    res = {"o": out, **{f"final[{j}]": f for j, f in enumerate(_flat(final))}}
    res.update({f"d{n}": (g if g is not None else torch.zeros_like(leaf)) for n, g, leaf in zip(names, grads, leaves)})
    return res


@pytest.mark.parametrize("name", list(CASES))
def test_packed_equals_per_sequence(name):
    torch.manual_seed(0)
    case = CASES[name]()
    packed = _results(lambda t, p, s: _call(case.fn, case, t, p, s, cu_seqlens=CU), case)
    expected = {"per sequence": _results(lambda t, p, s: _per_sequence(case.fn, case, t, p, s), case)}
    if case.ref is not case.fn:
        expected["reference loop"] = _results(lambda t, p, s: _per_sequence(case.ref, case, t, p, s), case)
    failures = []
    for what, exp in expected.items():
        assert set(packed) == set(exp)
        for key in exp:
            if key in case.ill:
                continue
            try:
                assert_close(packed[key], exp[key], name=f"{key} (packed vs {what})")
            except AssertionError as e:
                failures.append(str(e))
    assert not failures, f"{name}: " + "; ".join(failures)


def test_final_state_dropped_when_not_requested():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, T_ALL, H, K), torch.randn(1, T_ALL, H, K), torch.randn(1, T_ALL, H, V)
    o, S = gla.chunk_linear_attn(q, k, v, cu_seqlens=CU)
    assert S is None and o.shape == (1, T_ALL, H, V)
    o_full, S_full = gla.chunk_linear_attn(q, k, v, cu_seqlens=CU, output_final_state=True)
    assert_close(o, o_full)
    assert S_full.shape == (N, H, K, V)


# --------------------------------------------------------------------------- argument rules
def _small():
    q, k, v = torch.randn(1, T_ALL, H, K), torch.randn(1, T_ALL, H, K), torch.randn(1, T_ALL, H, V)
    return q, k, v, -torch.rand(1, T_ALL, H)


@pytest.mark.parametrize("cu, rule", [
    (torch.tensor([0, 5, 3, T_ALL]), "strictly increasing"),
    (torch.tensor([0, 5, 5, T_ALL]), "strictly increasing"),
    (torch.tensor([1, 5, T_ALL]), "start at 0"),
    (torch.tensor([0, 5, T_ALL - 1]), "end at the packed length"),
    (torch.tensor([0.0, 5.0, float(T_ALL)]), "int64"),
    (torch.tensor([[0, T_ALL]]), "1-D"),
    (torch.tensor([0]), re.escape("N + 1 >= 2")),
    ([0, 5, T_ALL], "1-D int64 tensor"),
])
def test_bad_cu_seqlens_raises(cu, rule):
    q, k, v, g = _small()
    with pytest.raises(ValueError, match=rule):
        gla.chunk_simple_gla(q, k, v, g, cu_seqlens=cu)


def test_state_rows_must_match_sequences():
    q, k, v, g = _small()
    with pytest.raises(ValueError, match="N = 5 sequences but the state has batch size 4"):
        gla.chunk_simple_gla(q, k, v, g, initial_state=torch.zeros(N - 1, H, K, V), cu_seqlens=CU)
    with pytest.raises(ValueError, match="dim 0"):
        mlstm.chunk_mlstm(q, k, v, g, g, initial_state=(torch.zeros(N, H, K, V), torch.zeros(N, H, K), torch.zeros(1, H)), cu_seqlens=CU)


def test_batch_must_be_one():
    q, k, v, g = (t.expand(2, *t.shape[1:]) for t in _small())
    with pytest.raises(ValueError, match="batch 1"):
        gla.chunk_simple_gla(q, k, v, g, cu_seqlens=CU)
    with pytest.raises(ValueError, match="batch 1"):
        conv.causal_conv1d(torch.randn(2, T_ALL, D), torch.randn(D, 4), cu_seqlens=CU)
    with pytest.raises(ValueError, match="packed length"):  # a time input of another length
        gla.chunk_simple_gla(q[:1], k[:1], v[:1], g[:1, :-1], cu_seqlens=CU)


PUBLIC_OPS = [
    *(getattr(gla, f"{form}_{kind}") for form in ("chunk", "fused_recurrent", "naive_recurrent") for kind in ("gla", "simple_gla", "linear_attn")),
    *(getattr(mlstm, f"{form}_mlstm") for form in ("chunk", "fused_recurrent", "naive_recurrent")),
    *(getattr(rwkv6, f"{form}_rwkv6") for form in ("chunk", "fused_recurrent", "naive_recurrent")),
    *(getattr(delta, f"{form}_{kind}") for form in ("chunk", "fused_recurrent", "naive_recurrent")
      for kind in ("delta_rule", "gated_delta_rule", "delta_product")),
    *(getattr(rwkv7, f"{form}_rwkv7") for form in ("chunk", "fused_recurrent", "naive_recurrent")),
    *(getattr(rat, f"{form}_rat") for form in ("chunk", "fused_recurrent", "naive_recurrent")),
    scan.linear_scan, scan.linear_scan_ref, selective_scan.selective_scan, selective_scan.selective_scan_ref,
    log_scan.log_scan, log_scan.log_scan_ref, wkv4.wkv4, wkv4.wkv4_ref, matrix_scan.matrix_scan, matrix_scan.matrix_scan_ref,
    plstm.plstm, plstm.plstm_ref,
    ssm_kernels.diag_conv, ssm_kernels.fft_causal_conv, ssm_kernels.fft_causal_conv_ref, conv.causal_conv1d, conv.causal_conv1d_ref,
    ssm_kernels.dense_ssm_conv, ssm_kernels.dense_ssm_ref, hippo.project_ref, ltc.ltc, ltc.ltc_ref, cfc.cfc, cfc.cfc_ref,
    hippo_rnn.hippo_rnn, hippo_rnn.hippo_rnn_ref, reservoir.residual_reservoir, reservoir.residual_reservoir_ref,
    reservoir.cyclic_memory, reservoir.cyclic_memory_ref,
    *(getattr(rnn, n) for n in ("rnn", "elman", "lstm", "gru", "slstm", "rnn_ref", "elman_ref", "lstm_ref", "gru_ref", "slstm_ref")),
]
FLA_OPS = [op for op in PUBLIC_OPS if "head_first" in inspect.signature(op).parameters]


def _dummy_args(op):
    """Positional placeholders for op's required arguments: the keyword check runs before they are read."""
    return [None] * sum(p.default is inspect.Parameter.empty and p.kind == p.POSITIONAL_OR_KEYWORD
                        for p in inspect.signature(op).parameters.values())


@pytest.mark.parametrize("op", PUBLIC_OPS, ids=lambda op: f"{op.__module__.split('.')[-1]}.{op.__name__}")
def test_every_op_takes_cu_seqlens_and_rejects_unknown_keywords(op):
    assert "cu_seqlens" in inspect.signature(op).parameters
    assert not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(op.__wrapped__).parameters.values())
    with pytest.raises(TypeError, match="unexpected keyword argument 'not_an_argument'"):
        op(*_dummy_args(op), not_an_argument=1)


def test_fla_ops_are_the_expected_ones():
    names = {op.__name__ for op in FLA_OPS}
    assert names == {f"{form}_{kind}" for form in ("chunk", "fused_recurrent", "naive_recurrent")
                     for kind in ("gla", "simple_gla", "linear_attn", "mlstm", "rwkv6", "delta_rule", "gated_delta_rule", "delta_product", "rwkv7")}


@pytest.mark.parametrize("op", FLA_OPS, ids=lambda op: op.__name__)
def test_head_first_true_is_not_implemented(op):
    with pytest.raises(NotImplementedError, match="head_first=True"):
        op(*_dummy_args(op), head_first=True)


def test_fla_defaults_are_accepted_and_other_values_refused():
    q, k, v, g = _small()
    o, _ = gla.chunk_simple_gla(q, k, v, g, head_first=False, state_v_first=False, chunk_indices=None, g_gamma=None)
    assert_close(o, gla.chunk_simple_gla(q, k, v, g)[0])
    o, _ = gla.fused_recurrent_simple_gla(q, k, v, g, reverse=False)
    with pytest.raises(NotImplementedError, match="reverse=True"):
        gla.fused_recurrent_simple_gla(q, k, v, g, reverse=True)
    with pytest.raises(NotImplementedError, match="g_gamma"):
        gla.chunk_simple_gla(q, k, v, g, g_gamma=torch.zeros(H))
    with pytest.raises(NotImplementedError, match="chunk_indices"):
        gla.chunk_simple_gla(q, k, v, g, chunk_indices=torch.zeros(3, 2, dtype=torch.long), cu_seqlens=CU)
    beta = torch.rand(1, T_ALL, H)
    with pytest.raises(NotImplementedError, match="use_beta_sigmoid_in_kernel"):
        delta.chunk_gated_delta_rule(q, k, v, g, beta, use_beta_sigmoid_in_kernel=True)
    with pytest.raises(NotImplementedError, match="allow_neg_eigval"):
        delta.fused_recurrent_gated_delta_rule(q, k, v, g, beta, allow_neg_eigval=True)
    w = -torch.rand(1, T_ALL, H, K)
    o, _ = rwkv7.chunk_rwkv7(q, k, v, w, -k, k, safe_gate=True, disable_recompute=True)  # speed hints: any value
    with pytest.raises(TypeError, match="unexpected keyword argument 'gk'"):  # not an fla argument of this op
        gla.chunk_simple_gla(q, k, v, g, gk=None)


def test_cu_seqlens_cpu():
    q, k, v, g = _small()
    o, _ = gla.chunk_simple_gla(q, k, v, g, cu_seqlens=CU, cu_seqlens_cpu=CU.clone())
    assert_close(o, gla.chunk_simple_gla(q, k, v, g, cu_seqlens=CU)[0])
    with pytest.raises(ValueError, match="must equal cu_seqlens"):
        gla.chunk_simple_gla(q, k, v, g, cu_seqlens=CU, cu_seqlens_cpu=CU + 1)
    with pytest.raises(ValueError, match="without cu_seqlens"):
        gla.chunk_simple_gla(q, k, v, g, cu_seqlens_cpu=CU)
