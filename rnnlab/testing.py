"""Error measures and tolerances shared by every test (one table, measured, not guessed)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rel_err", "assert_close", "TOLERANCE"]

# Relative error (see rel_err) allowed between two forms of the same computation.
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def rel_err(actual: Tensor, expected: Tensor) -> float:
    """||actual - expected|| / max(||expected||, tiny): fla's error ratio, in float64."""
    a, e = actual.detach().to(torch.complex128 if actual.is_complex() else torch.float64), expected.detach().to(
        torch.complex128 if expected.is_complex() else torch.float64
    )
    if a.shape != e.shape:
        raise AssertionError(f"shape mismatch: {tuple(a.shape)} vs {tuple(e.shape)}")
    return float((a - e).norm() / e.norm().clamp_min(1e-30))


def assert_close(actual: Tensor, expected: Tensor, tol: float | None = None, name: str = "tensor") -> None:
    """Assert rel_err(actual, expected) <= tol (default: TOLERANCE for expected's dtype) and both finite."""
    tol = TOLERANCE[expected.dtype if not expected.is_complex() else torch.float32] if tol is None else tol
    if not torch.isfinite(torch.view_as_real(actual) if actual.is_complex() else actual).all():
        raise AssertionError(f"{name}: non-finite values")
    err = rel_err(actual, expected)
    if not err <= tol:
        raise AssertionError(f"{name}: relative error {err:.3e} > {tol:.1e}")
