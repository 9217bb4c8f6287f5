"""implicit_mamba2: the converged fixed point satisfies z = f(z) to the stated tolerance (both modes), the implicit
gradient equals central finite differences (float64, a small case), the phantom gradient approximates it, the
solver's budget and tolerance, bad options."""
import pytest
import torch
import torch.nn.functional as F

from rnnlab import create_mixer
from rnnlab.testing import assert_close

SMALL = dict(headdim=8, d_state=8, ngroups=2, chunk_size=8, init_gain=0.1)


def _mixer(**kw):
    torch.manual_seed(0)
    return create_mixer("implicit_mamba2", 16, **{**SMALL, **kw})


@pytest.mark.parametrize("tol", [1e-2, 1e-5])
def test_fixed_point_satisfies_its_equation(tol):
    m = _mixer(tol=tol, max_iter=500).eval()
    x = torch.randn(3, 23, 16)
    with torch.no_grad():
        u, state = m.injection(m.norm_in(x)), m.init_state(3)
        for form, xs in (("chunk", x), ("recurrent", x[:, :1])):
            z, fz = m.solve(u[:, : xs.shape[1]], state, form)
            assert m.last_iterations < 500
            residual = (m.f(z, u[:, : xs.shape[1]], state, form)[0] - z).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1)
            assert (residual <= tol).all(), f"{form}: residual {residual.tolist()} > {tol}"
            assert residual.max() > 0  # a real iteration, not a fixed point by construction


def test_budget_and_tolerance():
    m = _mixer(tol=1e-7, max_iter=3).eval()
    with torch.no_grad():
        m(torch.randn(2, 9, 16))
    assert m.last_iterations == 3
    m.tol = 0.5
    with torch.no_grad():
        m(torch.randn(2, 9, 16))
    assert m.last_iterations == 2  # the first step from z = 0 is always 100%; the second is within 50%


def test_evaluation_budget_replaces_the_training_one_when_not_training():
    """eval_tol / eval_max_iter bind in eval mode, in both forms (the step form's fused decode kernel included);
    training keeps tol / max_iter; None follows the training budget."""
    m = _mixer(tol=1e-7, max_iter=3, eval_tol=1e-7, eval_max_iter=40)
    x = torch.randn(2, 9, 16)
    m(x)
    assert m.last_iterations == 3
    m.eval()
    with torch.no_grad():
        m(x)
        assert 3 < m.last_iterations <= 40
        m(x[:, :1])
        assert 3 < m.last_iterations <= 40
        m.eval_tol = 0.5  # the first step from z = 0 is always 100%; the second is within 50%
        m(x)
        assert m.last_iterations == 2
        m.eval_tol = m.eval_max_iter = None
        m(x)
        assert m.last_iterations == 3
    converged = _mixer(tol=1e-7, max_iter=300).eval()
    budgeted = _mixer(tol=0.5, max_iter=2, eval_tol=1e-7, eval_max_iter=300).eval()
    with torch.no_grad():
        assert_close(budgeted(x)[0], converged(x)[0])


def test_implicit_gradient_matches_finite_differences():
    """float64, T = 6: d loss / d (a parameter, the input) from the implicit function theorem == central differences
    of the converged forward (tol 1e-13)."""
    m = _mixer(tol=1e-13, max_iter=400, grad_mode="implicit").double()
    x = torch.randn(2, 6, 16, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 6, 16, dtype=torch.float64)
    params = {"core.in_proj.weight": m.core.in_proj.weight, "core.A_log": m.core.A_log, "injection.weight": m.injection.weight}

    def loss():
        y, s = m(x)
        return (y * c).sum() + 0.1 * s["h"].pow(2).sum()

    loss().backward()
    g = torch.Generator().manual_seed(1)
    for name, p in [*params.items(), ("x", x)]:
        idx = [tuple(torch.randint(0, n, (1,), generator=g).item() for n in p.shape) for _ in range(3)]
        for i in idx:
            with torch.no_grad():
                old = p[i].item()
                p[i] = old + 1e-6
                up = loss().item()
                p[i] = old - 1e-6
                down = loss().item()
                p[i] = old
            fd = (up - down) / 2e-6
            assert abs(p.grad[i].item() - fd) <= 1e-6 * max(1.0, abs(fd)), f"{name}{list(i)}: implicit {p.grad[i].item()} vs fd {fd}"


def test_phantom_gradient_approximates_the_implicit_one():
    """The paper's training gradient (4 damped steps, τ = 0.8) is an approximation of the exact one: its direction
    over all parameters agrees (measured cosine 0.996 here) while its size is off by the truncated Neumann series
    (measured 22% relative error). Bound: cosine > 0.95."""
    x = torch.randn(2, 11, 16)
    grads = {}
    for mode in ("implicit", "phantom"):
        m = _mixer(tol=1e-7, max_iter=300, grad_mode=mode)
        y, _ = m(x)
        (y * torch.linspace(-1, 1, 16)).sum().backward()
        grads[mode] = torch.cat([p.grad.flatten() for p in m.parameters()])
    assert torch.isfinite(grads["phantom"]).all()
    assert F.cosine_similarity(grads["phantom"], grads["implicit"], dim=0) > 0.95


def test_implicit_gradient_equals_the_unrolled_iteration():
    """The implicit function theorem's gradient == autograd through 150 plain iterations from z = 0 (converged
    to float64 precision), every parameter."""
    m = _mixer(tol=1e-14, max_iter=400, grad_mode="implicit").double()
    x, c = torch.randn(2, 7, 16, dtype=torch.float64), torch.randn(2, 7, 16, dtype=torch.float64)
    y, _ = m(x)
    (y * c).sum().backward()
    implicit = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    u, state = m.injection(m.norm_in(x)), m.init_state(2, dtype=torch.float64)
    z = torch.zeros_like(x)
    for _ in range(150):
        z = m.f(z, u, state, "chunk")[0]
    (m.f(z, u, state, "chunk")[0] * c).sum().backward()
    for n, p in m.named_parameters():
        assert_close(implicit[n], p.grad, name=n)


def test_modes_agree_at_the_fixed_point():
    """Simultaneous (parallel) and sequential (step) modes give the same outputs and state once converged."""
    m = _mixer(tol=1e-7, max_iter=300).eval()
    x = torch.randn(2, 13, 16)
    with torch.no_grad():
        y, s = m(x)
        st, ys = None, []
        for t in range(13):
            yt, st = m(x[:, t : t + 1], st)
            ys.append(yt)
    assert_close(torch.cat(ys, 1), y)
    assert_close(st["h"], s["h"])


def test_bad_options():
    with pytest.raises(ValueError, match="grad_mode must be one of"):
        create_mixer("implicit_mamba2", 16, grad_mode="ift")
    with pytest.raises(ValueError, match="tau must be in"):
        create_mixer("implicit_mamba2", 16, tau=1.5)
    with pytest.raises(ValueError, match="tol must be > 0"):
        create_mixer("implicit_mamba2", 16, tol=0.0)
    with pytest.raises(ValueError, match="eval_tol must be > 0"):
        create_mixer("implicit_mamba2", 16, eval_tol=-1e-3)
    with pytest.raises(ValueError, match="eval_max_iter must be an int >= 1"):
        create_mixer("implicit_mamba2", 16, eval_max_iter=0)
