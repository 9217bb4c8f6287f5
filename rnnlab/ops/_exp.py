"""exp of log-decay exponents, kept where torch's CPU exp and the matmuls after it run at full speed.

Cumulative log-decays over a chunk reach large negative exponents as soon as a model's gates are strong
(Gated DeltaNet's and Mamba-2's per-token log-decay -exp(A)·softplus(·) is down to -1.6 at initialization
and lower after training: -100 and below over a 64-token chunk). Two slow paths follow on x86 CPUs:
- torch's vectorized exp leaves its fast path for results that underflow or overflow float32 (inputs
  below about -87 or above 88): measured on (512, 64, 64) here, 0.8 ms in [-80, 0], 100 ms in [-100, -87];
- products of tiny factors become denormal numbers, on which every matmul slows down several-fold: with
  exponents floored at -80 the gated delta rule's fwd+bwd at g down to -3 per step still took 2.2x its
  time at mild decays, 9 ms instead of 1.8 per batched (512, 64, 64) product.
So the exponent is floored at EXP_FLOOR = -30: e^-30 ≈ 9.4e-14, below float32's resolution (6e-8) of the
ratio 1 that every row of a decay matrix holds on its diagonal, and products of two floored factors with
data (e^-60 ≈ 9e-27 times values down to 1e-11) stay normal. The value there is e^-30 instead of a smaller
one, and its gradient 0 instead of one below 1e-13. With the floor, those inputs run as fast as mild decays.
"""
from __future__ import annotations

from torch import Tensor

__all__ = ["EXP_FLOOR", "decay_exp"]

EXP_FLOOR = -30.0


def decay_exp(x: Tensor, max: float | None = None) -> Tensor:  # noqa: A002 - torch.clamp's name
    """exp(clamp(x, EXP_FLOOR, max)): x a log-decay (difference); ``max=0.0`` for ratios that are <= 1 where
    the caller keeps them and are masked elsewhere (the clamp keeps the masked entries finite)."""
    return x.clamp(min=EXP_FLOOR, max=max).exp_()  # in place on clamp's fresh output: one allocation
