"""rnnlab.ops.hippo against the HiPPO paper's closed forms (Gu et al. 2020): the matrices' entries, the
discretizations, the online projection equal to the projection integrals it stands for, LegS's timescale
invariance, reconstruction improving with N, and the fft form of the time-invariant measures against the
recurrence (values and gradients, awkward lengths, initial states, packed sequences)."""
import numpy as np
import pytest
import torch
from numpy.polynomial import laguerre as nplag
from numpy.polynomial import legendre as npleg

from rnnlab.ops import hippo
from rnnlab.ops.varlen import cu_seqlens_from_lengths
from rnnlab.testing import assert_close, rel_err


def _g(x):
    """A smooth test signal (two frequencies and a trend) and its antiderivative, for exact cell averages."""
    return np.sin(7 * x) + 0.5 * np.cos(19 * x) + x ** 2


def _G(x):
    return -np.cos(7 * x) / 7 + 0.5 * np.sin(19 * x) / 19 + x ** 3 / 3


def _cells(a, b, T):
    """(1, T, 1) float64: the averages of _g over T equal cells of [a, b]."""
    e = np.linspace(a, b, T + 1)
    return torch.tensor((_G(e[1:]) - _G(e[:-1])) / (e[1:] - e[:-1]))[None, :, None]


def test_matrices_are_the_papers():
    A, B = hippo.legs(5)  # Thm. 2: A_nk = √(2n+1)√(2k+1) (n > k), n + 1 (n = k), 0 (n < k), negated here
    assert A[3, 1] == -(7 ** 0.5) * (3 ** 0.5) and A[2, 2] == -3 and A[1, 3] == 0 and B[4] == 3
    assert torch.equal(torch.linalg.eigvals(A).real.sort().values, -torch.arange(5, 0, -1, dtype=torch.float64))
    A, B = hippo.legt(5, theta=2.0)  # App. D.1: √(2n+1)√(2k+1) {1 (k ≤ n); (−1)^{n−k} (k > n)} / θ, negated
    assert A[3, 1] == pytest.approx(-(21 ** 0.5) / 2) and A[1, 3] == pytest.approx(-(21 ** 0.5) / 2)
    assert A[1, 2] == pytest.approx(15 ** 0.5 / 2) and B[2] == pytest.approx(5 ** 0.5 / 2)
    A, B = hippo.lagt(4)  # App. D.2: A = −tril(1), B = 1
    assert torch.equal(A, -torch.tril(torch.ones(4, 4, dtype=torch.float64))) and torch.equal(B, torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="measure"):
        hippo.transition("fourier", 4)
    with pytest.raises(ValueError, match="method"):
        hippo.discretize(A, B, 0.1, "rk4")


def test_discretizations_closed_forms_and_orders():
    A, B = hippo.legt(6)
    dt, I = 0.05, torch.eye(6, dtype=torch.float64)
    Ab, Bb = hippo.discretize(A, B, dt, "forward")
    assert_close(Ab, I + dt * A) and assert_close(Bb, dt * B)
    Ab, Bb = hippo.discretize(A, B, dt, "backward")
    assert_close(Ab, torch.linalg.inv(I - dt * A)) and assert_close(Bb, torch.linalg.inv(I - dt * A) @ (dt * B))
    Ab, Bb = hippo.discretize(A, B, dt, "bilinear")
    M = torch.linalg.inv(I - dt / 2 * A)
    assert_close(Ab, M @ (I + dt / 2 * A)) and assert_close(Bb, M @ (dt * B))
    Ab, Bb = hippo.discretize(A, B, dt, "zoh")
    assert_close(Ab, torch.linalg.matrix_exp(dt * A)) and assert_close(Bb, torch.linalg.solve(A, (Ab - I) @ B))
    # batched Δ (one per channel) broadcasts against one A
    Ab, Bb = hippo.discretize(A, B, torch.tensor([0.05, 0.1], dtype=torch.float64), "bilinear")
    assert Ab.shape == (2, 6, 6) and Bb.shape == (2, 6)
    # convergence to the continuous solution of dc/dt = A c + B g(t) on [0, 1] (reference: ZOH of 2^14 cell averages,
    # exact for the piecewise-constant signal), the signal sampled at the steps' midpoints: halving Δ divides the error
    # by ~2 (Euler; measured 2.04, 1.96) and ~4 (bilinear, the trapezoidal rule in A; measured 4.00)
    ref, _ = hippo.project(_cells(0, 1, 2 ** 14), "legt", 6, dt=2.0 ** -14, method="zoh", backend="reference")

    def err(method, T):
        x = torch.tensor(_g((np.arange(T) + 0.5) / T))[None, :, None]
        c, _ = hippo.project(x, "legt", 6, dt=1.0 / T, method=method, backend="reference")
        return rel_err(c[0, -1], ref[0, -1])

    for method, order in (("forward", 2), ("backward", 2), ("bilinear", 4)):
        ratio = err(method, 256) / err(method, 512)
        assert abs(ratio - order) < 0.25 * order, f"{method}: error ratio {ratio:.2f} when halving Δ, expected ~{order}"


def test_legs_zoh_is_the_exact_projection_of_the_held_signal():
    """LegS with ZOH = the projection c_n(t) = (1/t) ∫_0^t f̂(x) √(2n+1) P_n(2x/t − 1) dx of the piecewise-constant f̂
    holding f_k on (k − 1, k], from Legendre antiderivatives (numpy), to float64 roundoff (measured 1.2e-14)."""
    T, N = 50, 16
    f = torch.randn(1, T, 1, dtype=torch.float64)
    c, (cT, n) = hippo.project(f, "legs", N, method="zoh")
    for t in (1, 7, T):  # every prefix is a projection of its own window [0, t]
        z = 2 * np.arange(t + 1) / t - 1
        exact = [np.sqrt(2 * k + 1) / 2 * np.sum(f[0, :t, 0].numpy() * np.diff(npleg.Legendre.basis(k).integ()(z))) for k in range(N)]
        assert_close(c[0, t - 1, 0], torch.tensor(exact), name=f"c at t={t}")
    assert n.item() == T and torch.equal(cT, c[:, -1])


@pytest.mark.parametrize("method", ["forward", "zoh"])
def test_legs_first_coefficient_is_the_running_mean(method):
    """g_0 = 1, so c_0(t) = (1/t) ∫ f: the running mean of the samples (the paper's c_{k+1} = (1 − A/k)c_k + B f_k / k)."""
    f = torch.randn(2, 40, 3, dtype=torch.float64)
    c, _ = hippo.project(f, "legs", 8, method=method)
    assert_close(c[..., 0], f.cumsum(1) / torch.arange(1, 41, dtype=torch.float64)[:, None])


def test_lagt_zoh_is_the_exact_projection_and_c0_the_moving_average():
    """LagT with ZOH = ∫_{−∞}^t f̂(x) L_n(t − x) e^{−(t − x)} dx of the held signal (Gauss–Legendre per cell, numpy's
    Laguerre polynomials; measured 2e-15, held to the float64 tolerance); c_0 is the exponential moving average c_0 ← e^{−Δ} c_0 + (1 − e^{−Δ}) f."""
    T, N, dt = 40, 12, 0.3
    f = torch.randn(1, T, 1, dtype=torch.float64)
    c, _ = hippo.project(f, "lagt", N, dt=dt, method="zoh")
    xs, ws = npleg.leggauss(30)
    exact = np.zeros(N)
    for j in range(T):
        a, b = j * dt, (j + 1) * dt
        age = T * dt - ((b - a) / 2 * xs + (a + b) / 2)
        for k in range(N):
            exact[k] += f[0, j, 0].item() * np.sum(ws * (b - a) / 2 * nplag.Laguerre.basis(k)(age) * np.exp(-age))
    assert_close(c[0, -1, 0], torch.tensor(exact))
    ema, e = torch.zeros(1, 1, dtype=torch.float64), np.exp(-dt)
    for t in range(T):
        ema = e * ema + (1 - e) * f[:, t]
        assert_close(c[:, t, :, 0], ema)


def test_legs_reconstruction_improves_with_N():
    """Reconstructing the smooth signal on [0, 1] from LegS coefficients (ZOH on 2000 exact cell averages): the relative
    L2 error falls from 0.43 (N = 4) and 0.35 (N = 8) to 6.6e-4 (N = 16) and 7e-6 (N = 24), where the O(1/T²) error
    of the cell averages takes over (measured; the bounds below leave ~2x)."""
    s = torch.linspace(0, 1, 4001, dtype=torch.float64)
    errs = []
    for N in (4, 8, 16, 24):
        c, _ = hippo.project(_cells(0, 1, 2000), "legs", N, method="zoh")
        errs.append(rel_err(hippo.reconstruct(c[0, -1, 0], "legs", s), torch.tensor(_g(s.numpy()))))
    assert errs == sorted(errs, reverse=True), errs
    assert errs[0] > 0.3 and errs[2] < 1.5e-3 and errs[3] < 2e-5, errs


def test_legt_reconstructs_the_last_window():
    """LegT (θ = 1, Δ = 1e-3, ZOH) over [0, 3]: the reconstruction of [2, 3] improves with N (6.8e-2, 5.3e-2, 1.1e-4,
    1.7e-6 at N = 4, 8, 16, 24, measured; its ODE approximates f(t − θ) by the reconstruction, so it is not exact),
    and c_0 is the window's mean (to 1e-6 relative)."""
    s = torch.linspace(0, 1, 2001, dtype=torch.float64)
    errs = []
    for N in (4, 8, 16, 24):
        c, _ = hippo.project(_cells(0, 3, 3000), "legt", N, dt=1e-3, method="zoh")
        errs.append(rel_err(hippo.reconstruct(c[0, -1, 0], "legt", s), torch.tensor(_g(2 + s.numpy()))))
    assert errs == sorted(errs, reverse=True) and errs[2] < 3e-4 and errs[3] < 5e-6, errs
    assert c[0, -1, 0, 0].item() == pytest.approx(_G(3.0) - _G(2.0), rel=1e-6)


def test_legs_timescale_invariance():
    """HiPPO Prop. 3: h(t) = f(αt) has hippo(h)(t) = hippo(f)(αt). With α = 2: LegS on f over [0, 2] (2000 cells) and
    on h over [0, 1] (1000 cells, each the mean of two of f's) agree to 1.4e-5 (the cells' O(1/T²) error; measured),
    while LegT (a fixed window θ = 1 at Δ = 1e-3) sees different histories: 0.55 apart."""
    f = _cells(0, 2, 2000)
    h = f.view(1, 1000, 2, 1).mean(2)
    cf, _ = hippo.project(f, "legs", 16, method="zoh")
    ch, _ = hippo.project(h, "legs", 16, method="zoh")
    assert rel_err(ch[0, -1], cf[0, -1]) < 3e-5
    cf, _ = hippo.project(f, "legt", 16, dt=1e-3, method="zoh")
    ch, _ = hippo.project(h, "legt", 16, dt=1e-3, method="zoh")
    assert rel_err(ch[0, -1], cf[0, -1]) > 0.3


def _grads(out, leaves, seed=5):
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in out)
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("measure", ["legt", "lagt"])
@pytest.mark.parametrize("T", [1, 17, 64, 257])
@pytest.mark.parametrize("with_state", [False, True])
def test_fft_form_equals_recurrence(measure, T, with_state):
    """The time-invariant measures' fft form (Krylov kernel + FFT, the state term by doubling) == the recurrence,
    float32, values and gradients of f and the initial coefficients."""
    f = torch.randn(2, T, 3, requires_grad=True)
    c0 = torch.randn(2, 3, 8, requires_grad=True)
    state = (c0, torch.tensor([0, 5])) if with_state else None
    kw = dict(measure=measure, N=8, dt=0.05, method="bilinear", initial_state=state)
    c, (cT, n) = hippo.project(f, backend="fft", **kw)
    c_ref, (cT_ref, n_ref) = hippo.project(f, backend="reference", **kw)
    assert_close(c, c_ref, name="c") and assert_close(cT, cT_ref, name="c_T")
    assert torch.equal(n, n_ref)
    leaves = [f, c0] if with_state else [f]
    for a, b, name in zip(_grads([c, cT], leaves), _grads([c_ref, cT_ref], leaves), ["df", "dc0"]):
        assert_close(a, b, name=name)


@pytest.mark.parametrize("measure, backend", [("legs", "reference"), ("legt", "fft"), ("lagt", "reference")])
def test_packed_equals_separate(measure, backend):
    """cu_seqlens: each sequence from its own state (LegS: its own clock n), as if run alone."""
    lengths, H, N = (5, 1, 12), 2, 6
    fs = [torch.randn(1, L, H) for L in lengths]
    states = [(torch.randn(1, H, N), torch.tensor([k])) for k in (0, 3, 9)]
    outs = [hippo.project(f, measure, N, dt=0.1, initial_state=s, backend=backend) for f, s in zip(fs, states)]
    c, (cT, n) = hippo.project(torch.cat(fs, 1), measure, N, dt=0.1, backend=backend, cu_seqlens=cu_seqlens_from_lengths(lengths),
                               initial_state=(torch.cat([s[0] for s in states]), torch.cat([s[1] for s in states])))
    assert_close(c, torch.cat([o[0] for o in outs], 1))
    assert_close(cT, torch.cat([o[1][0] for o in outs]))
    assert n.tolist() == [k + L for k, L in zip((0, 3, 9), lengths)]


def test_bad_backend():
    with pytest.raises(ValueError, match="time-invariant"):
        hippo.project(torch.randn(1, 4, 1), "legs", 4, backend="fft")
    with pytest.raises(ValueError, match="backend"):
        hippo.project(torch.randn(1, 4, 1), "legt", 4, backend="chunk")


def test_legs_irregular_steps_zoh_is_the_exact_projection():
    """Irregular sampling: ZOH steps of lengths Δ_k ending at t_k = Σ Δ project the signal holding f_k on (t_{k−1}, t_k]
    exactly (numpy Legendre antiderivatives over the uneven cells; float64 tolerance)."""
    T, N = 30, 10
    g = torch.Generator().manual_seed(3)
    f = torch.randn(2, T, dtype=torch.float64, generator=g)
    dts = torch.rand(2, T, dtype=torch.float64, generator=g) * 2 + 0.05
    A, B = hippo.legs(N)
    c, t = torch.zeros(2, 1, N, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for k in range(T):
        t = t + dts[:, k]
        c = hippo.step(c, f[:, k, None], A, B, "legs", "zoh", t, dts[:, k])
    for r in range(2):
        e = torch.cat([torch.zeros(1, dtype=torch.float64), dts[r].cumsum(0)]).numpy()
        z = 2 * e / e[-1] - 1
        exact = [np.sqrt(2 * n + 1) / 2 * np.sum(f[r].numpy() * np.diff(npleg.Legendre.basis(n).integ()(z))) for n in range(N)]
        assert_close(c[r, 0], torch.tensor(exact))


@pytest.mark.parametrize("measure", hippo.MEASURES)
@pytest.mark.parametrize("method", hippo.METHODS)
def test_step_equals_dense_transition(measure, method):
    """``step`` (per-row triangular solves) == c' = Ā c + B̄ f with (Ā, B̄) from ``discretize`` / ``legs_discrete``."""
    A, B = hippo.transition(measure, 7)
    g = torch.Generator().manual_seed(4)
    c, f = torch.randn(3, 2, 7, dtype=torch.float64, generator=g), torch.randn(3, 2, dtype=torch.float64, generator=g)
    t, dt = torch.tensor([1.0, 2.5, 9.0], dtype=torch.float64), torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    if measure == "legs":
        Ab, Bb = hippo.legs_discrete(A, B, t, dt, method)
    else:
        Ab, Bb = hippo.discretize(A, B, dt, method)
    ref = torch.einsum("rnm,rcm->rcn", Ab, c) + f[..., None] * Bb[:, None]
    assert_close(hippo.step(c, f, A, B, measure, method, t, dt), ref)
