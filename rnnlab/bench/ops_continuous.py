"""Op benchmarks of the continuous-time and reservoir lineage: every fast form against its reference loop.

- ``dense_ssm``: LSSL's Krylov kernel + FFT convolution (``dense_ssm_conv``) vs the dense recurrence, H = 256, N = 32,
  bilinear HiPPO-LegS at per-channel Δ. FLOPs: the kernel's doubling, 2·H·N²·T (the FFTs not counted).
- ``hippo_legt``: the LegT projection's Krylov + FFT form vs its recurrence, H = 64 signals, N = 32 coefficients.
- ``ltc``, ``cfc``, ``hippo_rnn``: the cells' hoisted recurrent forms vs the cells as written, H = 256 (LTC 64:
  its synapses are H² per unfold, 6 unfolds per token).
- ``residual_reservoir`` (N = 256) and ``cyclic_memory`` (M = 256, the loop-free rotation + cumsum) vs their loops.
"""
from __future__ import annotations

import torch

from rnnlab.bench.registry import OpBench, register_op_bench
from rnnlab.ops import cfc, hippo, hippo_rnn, ltc, reservoir
from rnnlab.ops.ssm_kernels import dense_ssm_conv, dense_ssm_ref


def _leaf(t, device, dtype):
    return t.to(device=device, dtype=dtype).requires_grad_()


def _dense_inputs(B, T, dtype, device, H=256, N=32):
    A, Bv = hippo.legs(N)
    Ab, Bb = hippo.discretize(A, Bv, torch.exp(torch.linspace(-7, -2, H, dtype=torch.float64)), "bilinear")
    g = torch.Generator().manual_seed(0)
    return dict(u=_leaf(torch.randn(B, T, H, generator=g), device, dtype), Abar=_leaf(Ab, device, dtype), Bbar=_leaf(Bb, device, dtype),
                C=_leaf(torch.randn(H, N, generator=g), device, dtype))


register_op_bench(OpBench(name="dense_ssm", family="diagonal", make_inputs=_dense_inputs,
                          forms={"reference": dense_ssm_ref, "fft": dense_ssm_conv},
                          flops=lambda B, T: 2.0 * 256 * 32 * 32 * T + 2.0 * B * T * 256 * 32, max_baseline_len=2048))


def _legt_inputs(B, T, dtype, device):
    return dict(f=_leaf(torch.randn(B, T, 64, generator=torch.Generator().manual_seed(0)), device, dtype))


register_op_bench(OpBench(
    name="hippo_legt", family="diagonal", make_inputs=_legt_inputs,
    forms={form: (lambda f, form=form: hippo.project(f, "legt", 32, dt=1.0 / max(1, f.shape[1]), backend=form)[0])
           for form in ("reference", "fft")},
    flops=lambda B, T: 2.0 * B * T * 64 * 32 * 32, max_baseline_len=2048))


def _ltc_inputs(B, T, dtype, device, H=64):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    return {n: _leaf(t, device, dtype) for n, t in dict(
        x=torch.randn(B, T, H, generator=g), sensory_mu=r(H, H), sensory_sigma=3 + 5 * r(H, H), sensory_w=r(H, H),
        sensory_erev=torch.randn(H, H, generator=g), mu=r(H, H), sigma=3 + 5 * r(H, H), w=r(H, H), erev=torch.randn(H, H, generator=g),
        gleak=r(H), vleak=r(H) - 0.5, cm=0.4 + 0.2 * r(H)).items()}


register_op_bench(OpBench(name="ltc", family="nonlinear", make_inputs=_ltc_inputs,
                          forms={"reference": lambda **kw: ltc.ltc_ref(dt=None, **kw), "recurrent": lambda **kw: ltc.ltc(dt=None, **kw)},
                          flops=lambda B, T: 6 * 8.0 * B * T * 64 * 64, max_baseline_len=512))


def _cfc_inputs(B, T, dtype, device, D=256, U=128):
    g = torch.Generator().manual_seed(0)
    return dict(x=_leaf(torch.randn(B, T, D, generator=g), device, dtype),
                weight=_leaf(torch.randn(U, 2 * D, generator=g) / (2 * D) ** 0.5, device, dtype),
                bias=_leaf(torch.zeros(U), device, dtype), head_weight=_leaf(torch.randn(3 * D, U, generator=g) / U ** 0.5, device, dtype),
                head_bias=_leaf(torch.zeros(3 * D), device, dtype))


register_op_bench(OpBench(name="cfc", family="nonlinear", make_inputs=_cfc_inputs,
                          forms={"reference": lambda **kw: cfc.cfc_ref(dt=None, **kw), "recurrent": lambda **kw: cfc.cfc(dt=None, **kw)},
                          flops=lambda B, T: 2.0 * B * T * (128 * 512 + 768 * 128), max_baseline_len=2048))


def _hippo_rnn_inputs(B, T, dtype, device, H=256, N=64):
    g = torch.Generator().manual_seed(0)
    return dict(x=_leaf(torch.randn(B, T, H, generator=g), device, dtype),
                weight=_leaf(torch.randn(2 * H, 2 * H + N, generator=g) / (2 * H) ** 0.5, device, dtype),
                bias=_leaf(torch.zeros(2 * H), device, dtype), weight_f=_leaf(torch.randn(1, H, generator=g) / H ** 0.5, device, dtype),
                bias_f=_leaf(torch.zeros(1), device, dtype))


register_op_bench(OpBench(
    name="hippo_rnn", family="nonlinear", make_inputs=_hippo_rnn_inputs,
    forms={"reference": lambda **kw: hippo_rnn.hippo_rnn_ref(dt=None, N=64, **kw), "recurrent": lambda **kw: hippo_rnn.hippo_rnn(dt=None, N=64, **kw)},
    flops=lambda B, T: 2.0 * B * T * (512 * 576 + 64 * 64), max_baseline_len=2048))


def _reservoir_inputs(B, T, dtype, device, N=256):
    g = torch.Generator().manual_seed(0)
    return dict(x=_leaf(torch.randn(B, T, N, generator=g), device, dtype), W_in=_leaf(reservoir.uniform((N, N), 0.1, g), device, dtype),
                W=_leaf(reservoir.spectral_rescale(reservoir.uniform((N, N), 1.0, g), 0.9), device, dtype),
                bias=_leaf(torch.zeros(N), device, dtype), O=_leaf(reservoir.cycle(N), device, dtype))


register_op_bench(OpBench(
    name="residual_reservoir", family="nonlinear", make_inputs=_reservoir_inputs,
    forms={"reference": lambda **kw: reservoir.residual_reservoir_ref(alpha=0.9, beta=0.1, **kw),
           "recurrent": lambda **kw: reservoir.residual_reservoir(alpha=0.9, beta=0.1, **kw)},
    flops=lambda B, T: 2.0 * B * T * 256 * (256 + 512), max_baseline_len=2048))


def _memory_inputs(B, T, dtype, device, M=256):
    g = torch.Generator().manual_seed(0)
    return dict(x=_leaf(torch.randn(B, T, M, generator=g), device, dtype), V_in=_leaf(reservoir.uniform((M, M), 0.1, g), device, dtype))


register_op_bench(OpBench(name="cyclic_memory", family="nonlinear", make_inputs=_memory_inputs,
                          forms={"reference": reservoir.cyclic_memory_ref, "recurrent": reservoir.cyclic_memory},
                          flops=lambda B, T: 2.0 * B * T * 256 * 256, max_baseline_len=2048))
