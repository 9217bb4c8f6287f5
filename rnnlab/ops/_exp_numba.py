"""A vectorizable float32 exp for numba kernels (the selective scan's transitions, attention's decode softmax).

numba has no vector libm on this platform (no SVML), and a scalar libm exp per element costs ~4x the rest of a
scan step. ``exp_row_f32`` is a range reduction (x = k ln2 + r), a degree-7 polynomial for e^r and 2^k built in the
exponent bits of an int32 scratch row: relative error < 1e-7, and loops LLVM vectorizes.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_FM = {"reassoc", "contract"}


@njit(cache=True, inline="always", fastmath=_FM)
def exp_row_f32(a, ib, n, lo):  # pragma: no cover - compiled
    """a[:n] = exp(min(max(a[:n], lo), 88)) in place, a float32 row; ib an int32 scratch row of at least n. ``lo``
    floors the argument (e^-87 ~ 1.6e-38: below it float32 is denormal, where every multiply is slow)."""
    for d in range(n):
        v = min(max(a[d], np.float32(lo)), np.float32(88.0))
        k = np.floor(v * np.float32(1.4426950408889634) + np.float32(0.5))  # float32: math.floor's int64 would not vectorize
        r = (v - k * np.float32(0.693145751953125)) - k * np.float32(1.4286068203094173e-06)
        a[d] = np.float32(1.0) + r * (np.float32(1.0) + r * (np.float32(0.5) + r * (np.float32(1 / 6) + r * (
            np.float32(1 / 24) + r * (np.float32(1 / 120) + r * (np.float32(1 / 720) + r * np.float32(1 / 5040)))))))
        ib[d] = (np.int32(k) + np.int32(127)) << 23
    f = ib.view(np.float32)
    for d in range(n):
        a[d] *= f[d]
