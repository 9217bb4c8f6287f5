"""Short-term memory capacity (Jaeger 2001, "Short term memory in echo state networks", GMD Report 152): the input is
i.i.d. noise u_t ~ U(−a, a) (a = 0.8), and output k (k = 1, …, K) must recall u_{t−k} from the state at t. The memory
capacity is

    MC = Σ_{k=1}^{K} r²(u_{t−k}, y_k(t))        (r: Pearson's correlation over the scored test positions)

so a reservoir of N units has MC <= N (equality for a linear reservoir whose controllability matrix has full rank;
Jaeger 2001, Prop. 2). Positions t < ``washout`` are not scored (the state forgets its start there; washout >= K
makes every delay defined), so each sequence scores T − washout positions with all K targets. Inputs (B, T, 1);
targets (B, T, K), NaN where unscored. Metrics: ``mc`` (primary, higher is better), ``mc@k`` for k in ``report_delays``
(the r² of one delay), and the normalized RMSE over all delays. Diagnoses: how much of its input history a state
keeps linearly decodable (the classic reservoir benchmark; with a closed-form readout, ModelConfig readout="ridge").
"""
from __future__ import annotations

import numpy as np
import torch

from rnnlab.tasks.base import Task, as_tensor_batch, register_task


@register_task("memory_capacity")
class MemoryCapacity(Task):
    """Jaeger's memory capacity: recall the input delayed by 1..max_delay steps; MC = Σ_k r²."""

    output = "regress"
    primary_metric = "mc"
    higher_is_better = True

    def __init__(self, seq_len: int = 5200, test_lengths: list[int] | None = None, max_delay: int = 200,
                 washout: int | None = None, amplitude: float = 0.8, report_delays: list[int] | None = None):
        if not isinstance(max_delay, int) or max_delay < 1:
            raise ValueError(f"memory_capacity: max_delay must be a positive int, got {max_delay!r}")
        self.max_delay, self.amplitude = max_delay, float(amplitude)
        self.washout = max_delay if washout is None else int(washout)
        if self.washout < max_delay:
            raise ValueError(f"memory_capacity: washout ({self.washout}) must be >= max_delay ({max_delay}), so that "
                             "every scored position has all its delayed targets")
        self.report_delays = [int(k) for k in (report_delays or [1, max(1, max_delay // 4), max(1, max_delay // 2)])]
        if any(not 1 <= k <= max_delay for k in self.report_delays):
            raise ValueError(f"memory_capacity: report_delays must lie in [1, max_delay = {max_delay}], got {self.report_delays}")
        self.report_metrics = ("mc",) + tuple(f"mc@{k}" for k in self.report_delays) + ("nrmse",)
        super().__init__(seq_len, test_lengths)

    def check_length(self, seq_len: int) -> None:
        if seq_len <= self.washout:
            raise ValueError(f"memory_capacity: length {seq_len} impossible; it must exceed the washout ({self.washout})")

    def model_io(self):
        return {"input_dim": 1, "head": "regress", "out_dim": self.max_delay}

    def sample(self, batch_size, seq_len, rng, split):
        T, K = seq_len or self.seq_len, self.max_delay
        u = rng.uniform(-self.amplitude, self.amplitude, size=(batch_size, T))
        y = np.full((batch_size, T, K), np.nan)
        for k in range(1, K + 1):
            y[:, self.washout:, k - 1] = u[:, self.washout - k:T - k]
        return as_tensor_batch(u[..., None].astype(np.float32), y.astype(np.float32))

    def metric_sums(self, outputs, targets):
        """Per delay k: the sums of y, ŷ, y², ŷ², yŷ over the scored positions (float64), so r² is exact over batches."""
        with torch.no_grad():
            keep = ~torch.isnan(targets).any(-1)  # (B, T): positions with every delay scored
            y, p = targets[keep].double(), outputs.float()[keep].double()  # (n, K)
            sums = {"n": float(y.shape[0])}
            for name, v in (("y", y), ("p", p), ("yy", y * y), ("pp", p * p), ("yp", y * p)):
                for k, s in enumerate(v.sum(0).tolist()):
                    sums[f"{name}{k}"] = s
        return sums

    def finalize(self, sums):
        n, K = sums["n"], self.max_delay
        r2, se, var = [], 0.0, 0.0
        for k in range(K):
            sy, sp, syy, spp, syp = (sums[f"{v}{k}"] for v in ("y", "p", "yy", "pp", "yp"))
            cov, vy, vp = syp - sy * sp / n, syy - sy * sy / n, spp - sp * sp / n
            r2.append(cov * cov / (vy * vp) if vy > 0 and vp > 0 else 0.0)
            se += syy - 2 * syp + spp
            var += vy
        out = {"mc": float(sum(r2)), "nrmse": float(np.sqrt(se / var)) if var > 0 else float("nan")}
        out.update({f"mc@{k}": float(r2[k - 1]) for k in self.report_delays})
        return out
