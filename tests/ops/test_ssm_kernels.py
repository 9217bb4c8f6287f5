"""LTI SSM kernels vs their recurrent definitions: ZOH Vandermonde (S4D), NPLR Cauchy+Woodbury
kernel with bilinear discretization (S4), FFT causal convolution, state continuation."""
import pytest
import torch

from rnnlab.ops.scan import linear_scan_ref
from rnnlab.ops.hippo import hippo_n_diag, nplr_legs
from rnnlab.ops.hippo import legs as hippo_legs
from rnnlab.ops.ssm_kernels import (bilinear_dense, bilinear_dplr, dense_state_terms, diag_conv, fft_causal_conv, fft_causal_conv_ref,
                                    krylov, nplr_kernel, power_times, squarings, zoh_diag)
from rnnlab.testing import assert_close

torch.set_default_dtype(torch.float32)


def _diag(H=3, N=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.complex(-torch.rand(H, N, generator=g) - 0.1, torch.randn(H, N, generator=g) * 3)
    C = torch.complex(torch.randn(H, N, generator=g), torch.randn(H, N, generator=g))
    dt = torch.rand(H, generator=g) * 0.5 + 0.01
    return A, C, dt


def _grads(out, leaves, seed=3):
    """Gradients of a random real projection of the outputs (complex outputs through Re/Im)."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((torch.view_as_real(o) if o.is_complex() else o).mul(torch.randn(
        (torch.view_as_real(o) if o.is_complex() else o).shape, generator=g).to(o.real.dtype)).sum() for o in out)
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("T", [1, 17, 64, 1000])
def test_fft_causal_conv_matches_loop(T):
    u, K = torch.randn(2, T, 3, requires_grad=True), torch.randn(3, T, requires_grad=True)
    y, y_ref = fft_causal_conv(u, K), fft_causal_conv_ref(u, K)
    assert_close(y, y_ref)
    for a, b in zip(_grads([y], [u, K]), _grads([y_ref], [u, K])):
        assert_close(a, b)


@pytest.mark.parametrize("T", [1, 17, 64, 1000])
@pytest.mark.parametrize("h0_kind", ["none", "zero", "random"])
def test_s4d_conv_equals_diagonal_recurrence(T, h0_kind):
    """diag_conv (factored Vandermonde kernel + FFT, state terms) == 2 Re(C h_t) with the ZOH recurrence
    h_t = exp(ΔA) h_{t-1} + (exp(ΔA)-1)/A u_t run by linear_scan_ref: outputs, final state, gradients.
    "none": no initial state passed (the kernel-only path); "zero"/"random": an h0 leaf."""
    A, C, dt = _diag(N=5)  # N odd, so the (n, l) blocks are not square
    dtA, Bbar = zoh_diag(dt, A)
    assert_close(torch.exp(dtA), torch.exp(dt[:, None] * A))
    u = torch.randn(2, T, 3, requires_grad=True)
    h0 = torch.complex(torch.randn(2, 3, 5), torch.randn(2, 3, 5)) if h0_kind == "random" else torch.zeros(2, 3, 5, dtype=torch.cfloat)
    leaves = [u, A.requires_grad_(), C.requires_grad_(), dt.requires_grad_()] + ([h0.requires_grad_()] if h0_kind != "none" else [])
    # the recurrence in double precision: the float32 form's own error is what is measured
    ref = [x.detach().to(torch.complex128 if x.is_complex() else torch.float64).requires_grad_() for x in leaves]
    u64, A64, C64, dt64 = ref[:4]
    dtA, Bbar = zoh_diag(dt64, A64)
    h, h_last = linear_scan_ref(torch.exp(dtA).expand(2, T, 3, 5), Bbar * u64.unsqueeze(-1).to(Bbar.dtype),
                                ref[4] if h0_kind != "none" else h0.to(torch.complex128))
    y_rec = 2 * (h * C64).sum(-1).real
    y, h_T = diag_conv(u, C, *zoh_diag(dt, A), None if h0_kind == "none" else h0)
    assert_close(y, y_rec.float(), name="y")
    assert_close(h_T, h_last.to(h_T.dtype), name="h_T")
    for name, a, b in zip(["du", "dA", "dC", "ddt", "dh0"], _grads([y, h_T], leaves), _grads([y_rec, h_last], ref)):
        assert_close(a, b.to(a.dtype), name=name)


def test_hippo_legs_nplr_reconstructs_A():
    A, B = hippo_legs(6)
    assert A[2, 1] == -(5 ** 0.5) * (3 ** 0.5) and A[1, 1] == -2 and A[1, 2] == 0 and B[3] == 7 ** 0.5
    lam, P, Bv, V = nplr_legs(6)
    A_rec = V @ (torch.diag(lam) - P[:, None] * P.conj()[None]) @ V.conj().T
    assert_close(A_rec.real, A, tol=1e-10)
    assert_close(V @ Bv, B.to(V.dtype), tol=1e-10)
    assert torch.allclose(lam.real, torch.full((6,), -0.5, dtype=torch.float64))
    lam_n, _ = hippo_n_diag(6)
    assert torch.equal(lam_n, lam)


@pytest.mark.parametrize("L", [1, 16, 17, 64, 1000])
def test_nplr_kernel_equals_krylov_of_bilinear(L):
    """Cauchy + Woodbury kernel (odd and even L, incl. the ω = −1 root) == C Ā^l B̄ from the dense bilinear Ā."""
    H, N = 2, 8
    lam, P, B, _ = nplr_legs(N)
    lam, P, B = (t.to(torch.complex128).repeat(H, 1) for t in (lam, P, B))
    g = torch.Generator().manual_seed(0)
    C = torch.complex(torch.randn(H, N, generator=g), torch.randn(H, N, generator=g)).to(torch.complex128)
    dt = torch.tensor([0.01, 0.3], dtype=torch.float64)
    Abar, Bbar = bilinear_dense(lam, P, B, dt)
    A = torch.diag_embed(lam) - P.unsqueeze(-1) * P.conj().unsqueeze(-2)
    I = torch.eye(N, dtype=A.dtype)
    assert_close(Abar, torch.linalg.inv(I - dt[:, None, None] / 2 * A) @ (I + dt[:, None, None] / 2 * A), tol=1e-10)
    g_, u_, w_, Bbar_ = bilinear_dplr(lam, P, B, dt)  # the stepping form: Ā h = g ⊙ h − u (w · h)
    h = torch.complex(torch.randn(3, H, N, generator=g), torch.randn(3, H, N, generator=g)).to(torch.complex128)
    assert_close(g_ * h - u_ * (w_ * h).sum(-1, keepdim=True), torch.einsum("hnm,bhm->bhn", Abar, h), tol=1e-12)
    assert_close(Bbar_, Bbar, tol=1e-12)
    KB, CK = krylov(squarings(Abar, L), Bbar, C, L)
    assert_close(CK[:, -1], (C.unsqueeze(-2) @ torch.linalg.matrix_power(Abar, L)).squeeze(-2), tol=1e-10)
    K_ref = torch.einsum("hn,hnl->hl", C, KB).real
    Ct = C - (C.unsqueeze(-2) @ torch.linalg.matrix_power(Abar, L)).squeeze(-2)
    assert_close(nplr_kernel(lam, P, B, Ct, dt, L, chunk=7), K_ref, tol=1e-9)


@pytest.mark.parametrize("L", [17, 64])
def test_nplr_kernel_gradients_equal_krylov(L):
    """Gradients through the Cauchy + Woodbury kernel (w.r.t. Λ, P, B, C̃, Δ) == through C Ā^l B̄ (float64)."""
    H, N = 2, 6
    lam, P, B, _ = (t.repeat(H, 1) if t.dim() == 1 else t for t in nplr_legs(N))
    g = torch.Generator().manual_seed(2)
    Ct = torch.complex(torch.randn(H, N, generator=g), torch.randn(H, N, generator=g)).to(torch.complex128)
    dt = torch.tensor([0.05, 0.4], dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (lam, P, B, Ct, dt)]
    K = nplr_kernel(*leaves, L, chunk=5)
    Abar, Bbar = bilinear_dense(leaves[0], leaves[1], leaves[2], leaves[4])
    I = torch.eye(N, dtype=Abar.dtype)
    C = (leaves[3].unsqueeze(-2) @ torch.linalg.inv(I - torch.linalg.matrix_power(Abar, L))).squeeze(-2)  # C̃ = C (I − Ā^L)
    KB, _ = krylov(squarings(Abar, L), Bbar, C, L)
    K_ref = torch.einsum("hn,hnl->hl", C, KB).real
    assert_close(K, K_ref, tol=1e-9)
    for a, b in zip(_grads([K], leaves), _grads([K_ref], leaves)):
        assert_close(a, b, tol=1e-8)


@pytest.mark.parametrize("with_h0", [False, True])
def test_dense_state_terms_equal_recurrence(with_h0):
    """Chunked state continuation (squarings + Krylov blocks, T = 37 not a multiple of the chunk 8)
    == the dense recurrence; no h0: no initial-state outputs, final state from zero."""
    H, N, T = 2, 4, 37
    g = torch.Generator().manual_seed(1)
    Abar = torch.complex(torch.randn(H, N, N, generator=g), torch.randn(H, N, N, generator=g)) * 0.3
    Bbar, C = (torch.complex(torch.randn(H, N, generator=g), torch.randn(H, N, generator=g)) for _ in range(2))
    u = torch.randn(2, T, H, generator=g)
    h0 = torch.complex(torch.randn(2, H, N, generator=g), torch.randn(2, H, N, generator=g))
    h0 = h0 if with_h0 else torch.zeros_like(h0)
    h, y0 = h0, []
    hz = h0
    for t in range(T):
        h = torch.einsum("hnm,bhm->bhn", Abar, h) + Bbar * u[:, t].unsqueeze(-1)
        hz = torch.einsum("hnm,bhm->bhn", Abar, hz)
        y0.append((hz * C).sum(-1))
    sq = squarings(Abar, T)
    assert_close(power_times(sq, T, C.unsqueeze(-2), right=True).squeeze(-2), (C.unsqueeze(-2) @ torch.linalg.matrix_power(Abar, T)).squeeze(-2))
    y0_fast, h_fast = dense_state_terms(u, sq, Bbar, C, h0 if with_h0 else None, chunk=8)
    assert_close(h_fast, h)
    if with_h0:
        assert_close(y0_fast, torch.stack(y0, 1))
    else:
        assert y0_fast is None


@pytest.mark.parametrize("T", [1, 17, 64, 1000])
@pytest.mark.parametrize("h0_kind", ["none", "random"])
def test_dense_ssm_conv_equals_recurrence(T, h0_kind):
    """LSSL's convolutional view (Krylov kernel by doubling + FFT, state terms) == its recurrent view, for the bilinear
    HiPPO-LegS (Ā, B̄) at per-channel Δ: outputs, final state, gradients of u, Ā, B̄, C and h0 (float32)."""
    from rnnlab.ops.hippo import discretize, legs
    from rnnlab.ops.ssm_kernels import dense_ssm_conv, dense_ssm_ref

    A, B = legs(6)
    Ab, Bb = (t.float().requires_grad_() for t in discretize(A, B, torch.tensor([1e-3, 3e-2, 1e-1], dtype=torch.float64)))
    C = torch.randn(3, 6, requires_grad=True)
    u = torch.randn(2, T, 3, requires_grad=True)
    h0 = torch.randn(2, 3, 6, requires_grad=True) if h0_kind == "random" else None
    named = {"du": u, "dAbar": Ab, "dBbar": Bb, "dC": C, "dh0": h0}
    if T == 1 and h0 is None:  # one token from a zero state never meets Ā
        del named["dAbar"]
    named = {k: v for k, v in named.items() if v is not None}
    y, h = dense_ssm_conv(u, Ab, Bb, C, h0)
    y_r, h_r = dense_ssm_ref(u, Ab, Bb, C, h0)
    assert_close(y, y_r, name="y")
    assert_close(h, h_r, name="h_T")
    leaves = list(named.values())
    for name, a, b in zip(named, _grads([y, h], leaves), _grads([y_r, h_r], leaves)):
        assert_close(a, b, name=name)
