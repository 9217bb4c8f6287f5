"""Metrics, defined once, on scored positions only.

Scored means: lm targets != IGNORE_INDEX (-100); regress targets not NaN; every
classify target. Each function returns additive sums so batches (and test sets
split across processes) combine exactly; ``finalize`` divides at the end.

    loss      mean cross-entropy (nats) or mean squared error over scored items
    acc       token (or label) accuracy over scored positions
    seq_acc   fraction of sequences whose scored positions are ALL correct (exact copy)
    last_acc  accuracy at the last scored position of each sequence
    bpb       bits per byte = loss / ln 2 (byte-level models: one token = one byte)
    rmse      root mean squared error over scored elements (nrmse for normalized targets)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100

__all__ = ["IGNORE_INDEX", "loss_terms", "count_scored", "metric_sums", "finalize"]


def _check(output: str) -> None:
    if output not in ("lm", "classify", "regress"):
        raise ValueError(f'output must be "lm", "classify" or "regress", got {output!r}')


def count_scored(output: str, targets: Tensor) -> Tensor:
    """Number of scored items in targets (a 0-d int64 tensor)."""
    _check(output)
    if output == "lm":
        return (targets != IGNORE_INDEX).sum()
    if output == "classify":
        return torch.tensor(targets.shape[0])
    return (~torch.isnan(targets)).sum()


def loss_terms(output: str, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """outputs: lm (B, T, V) logits | classify (B, C) logits | regress (B, T, O).
    -> (sum of losses over scored items, count of scored items)."""
    _check(output)
    if output == "lm":
        loss = F.cross_entropy(outputs.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    elif output == "classify":
        loss = F.cross_entropy(outputs.float(), targets, reduction="sum")
    else:
        mask = ~torch.isnan(targets)
        loss = ((outputs.float() - torch.nan_to_num(targets)) ** 2 * mask).sum()
    return loss, count_scored(output, targets)


@torch.no_grad()
def metric_sums(output: str, outputs: Tensor, targets: Tensor) -> dict[str, float]:
    """Additive statistics of one batch (see module docstring)."""
    loss, count = loss_terms(output, outputs, targets)
    sums = {"loss_sum": float(loss), "count": float(count)}
    if output == "classify":
        sums["correct"] = float((outputs.argmax(-1) == targets).sum())
        return sums
    if output == "regress":
        return sums
    scored = targets != IGNORE_INDEX  # (B, T)
    hit = (outputs.argmax(-1) == targets) & scored
    sums["correct"] = float(hit.sum())
    has = scored.any(1)
    sums["seqs"] = float(has.sum())
    sums["seq_correct"] = float(((hit | ~scored).all(1) & has).sum())
    T = targets.shape[1]
    last = torch.where(scored, torch.arange(T, device=targets.device), -1).max(1).values  # (B,) last scored index
    rows = has.nonzero()[:, 0]
    sums["last_correct"] = float(hit[rows, last[rows]].sum())
    return sums


def finalize(sums: dict[str, float]) -> dict[str, float]:
    """Totals from metric_sums -> metrics (loss, acc, seq_acc, last_acc, bpb, rmse as applicable)."""
    n = max(sums.get("count", 0.0), 1.0)
    out = {"loss": sums["loss_sum"] / n}
    if "correct" in sums:
        out["acc"] = sums["correct"] / n
    if "seqs" in sums:
        s = max(sums["seqs"], 1.0)
        out["seq_acc"] = sums["seq_correct"] / s
        out["last_acc"] = sums["last_correct"] / s
        out["bpb"] = out["loss"] / math.log(2)
    if "correct" not in sums:
        out["rmse"] = math.sqrt(out["loss"])
    return out


def add_sums(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in set(a) | set(b)}
