"""Task contract and registry: seeded generators of (inputs, targets) batches.

A task produces ``Batch(inputs, targets)``:

    inputs  (B, T) int64 tokens, or (B, T, F) float features
    targets output "lm":       (B, T) int64, IGNORE_INDEX (-100) where not scored
            output "classify": (B,) int64 class labels
            output "regress":  (B, T, O) float, NaN where not scored

Training batches are drawn from ``rng_for(seed, "train", step)`` and test sets from
``rng_for(seed, "test", length)``: two independent numpy streams, so a batch depends only on
(seed, step) — which makes resume and data-parallel training exact without saving any
data-loader state. Metrics are defined once, in ``rnnlab.tasks.metrics``, on scored positions.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from rnnlab.tasks import metrics as M

__all__ = ["Batch", "Task", "register_task", "create_task", "available_tasks", "task_info", "task_options", "rng_for",
           "IGNORE_INDEX", "right_padded"]

IGNORE_INDEX = M.IGNORE_INDEX
_SPLITS = {"train": 0, "test": 1}


def rng_for(seed: int, split: str, index: int) -> np.random.Generator:
    """The numpy generator of one training step (split="train", index=step) or one test length."""
    return np.random.default_rng([int(seed), _SPLITS[split], int(index)])


@dataclass
class Batch:
    """inputs (B, T) int64 | (B, T, F) float; targets per the task's output kind (module docstring).
    lengths (B,) int64 or None: the real length of each right-padded row (tasks with variable-length
    examples set it; the trainer's ``pack`` option drops the padding with it)."""

    inputs: Tensor
    targets: Tensor
    lengths: Tensor | None = None

    def to(self, device) -> "Batch":
        return Batch(self.inputs.to(device), self.targets.to(device), None if self.lengths is None else self.lengths.to(device))

    def rows(self, index: slice) -> "Batch":
        return Batch(self.inputs[index], self.targets[index], None if self.lengths is None else self.lengths[index])

    def row_lengths(self) -> list[int]:
        """Real length of every row (the full T where the task pads nothing)."""
        T = self.inputs.shape[1]
        return [T] * self.inputs.shape[0] if self.lengths is None else [int(n) for n in self.lengths.tolist()]


class Task:
    """Base class. Subclasses set ``output`` and implement ``model_io`` and ``sample``.

    output: "lm" | "classify" | "regress" (the model head the task needs).
    primary_metric / higher_is_better: what sweeps and early stopping compare.
    report_metrics: metric names shown in tables.
    """

    name: str = "?"
    output: str = "lm"
    primary_metric: str = "acc"
    higher_is_better: bool = True
    report_metrics: tuple[str, ...] = ("acc",)

    def __init__(self, seq_len: int, test_lengths: list[int] | None = None):
        if not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"{self.name}: seq_len must be a positive int, got {seq_len!r}")
        self.seq_len = seq_len
        self.test_lengths = [int(t) for t in (test_lengths if test_lengths is not None else [seq_len])]
        if not self.test_lengths:
            raise ValueError(f"{self.name}: test_lengths must name at least one length")
        for t in self.test_lengths:
            if t < 1:
                raise ValueError(f"{self.name}: test length {t} impossible; lengths must be positive")
            self.check_length(t)

    # --- to implement ---------------------------------------------------------
    def model_io(self) -> dict[str, Any]:
        """ModelConfig fields the task fixes: vocab_size or input_dim, head, num_classes / out_dim."""
        raise NotImplementedError

    def sample(self, batch_size: int, seq_len: int | None, rng: np.random.Generator, split: str) -> Batch:
        """One batch. seq_len None = the training length distribution; else exactly that test length."""
        raise NotImplementedError

    def check_length(self, seq_len: int) -> None:
        """ValueError if the task cannot generate sequences of this length."""

    def context_len(self, seq_len: int) -> int | None:
        """The leading tokens of a sequence of this length that form its context (the documents / key-value pairs the
        questions are about: what JRT-Prompt repeats); None for a task without one (the default)."""
        return None

    # --- shared ----------------------------------------------------------------
    def train_batch(self, batch_size: int, seed: int, step: int, rows: slice | None = None) -> Batch:
        """The training batch of ``step``, or only its ``rows`` (a data-parallel process's share). A synthetic task
        draws the whole batch and keeps the rows (its examples come from one generator per step); a task that reads
        data overrides this to read only the rows it returns."""
        batch = self.sample(batch_size, None, rng_for(seed, "train", step), "train")
        return batch if rows is None else batch.rows(rows)

    def test_batches(self, seq_len: int, num_examples: int, batch_size: int, seed: int) -> Iterator[Batch]:
        """The fixed test set at one length: num_examples sequences in batches (independent of training data)."""
        rng = rng_for(seed, "test", seq_len)
        done = 0
        while done < num_examples:
            n = min(batch_size, num_examples - done)
            yield self.sample(n, seq_len, rng, "test")
            done += n

    def jrt_prompt(self, batch: Batch) -> Batch:
        """JRT-Prompt (Arora et al. 2024, "Just read twice", §3.2): the context given twice before the questions —
        inputs [context, context, rest], the first copy unscored, every target shifted with its token (the
        ``eval_prompt="jrt_prompt"`` evaluation mode of the trainer). ValueError for a task without a context."""
        c = self.context_len(batch.inputs.shape[1])
        if c is None or self.output != "lm":
            raise ValueError(f"{self.name}: no jrt_prompt evaluation (it needs an lm task that declares its context: "
                             f"context_len); tasks with one: mqar, set_disjointness")
        inputs = torch.cat([batch.inputs[:, :c], batch.inputs], 1)
        targets = torch.cat([torch.full_like(batch.targets[:, :c], IGNORE_INDEX), batch.targets], 1)
        return Batch(inputs, targets, None if batch.lengths is None else batch.lengths + c)

    def loss_terms(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(sum of per-item losses over scored items, number of scored items)."""
        return M.loss_terms(self.output, outputs, targets)

    def count_scored(self, targets: Tensor) -> Tensor:
        return M.count_scored(self.output, targets)

    def metric_sums(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        """Additive statistics of one batch; ``finalize`` turns their totals into metrics."""
        return M.metric_sums(self.output, outputs, targets)

    def finalize(self, sums: dict[str, float]) -> dict[str, float]:
        return M.finalize(sums)

    def describe(self) -> dict[str, Any]:
        """Extra facts recorded in the run's resolved config (e.g. a corpus hash)."""
        return {}


# --- registry ---------------------------------------------------------------------
@dataclass(frozen=True)
class TaskInfo:
    name: str
    cls: type
    defaults: dict = field(default_factory=dict)
    doc: str = ""


_TASKS: dict[str, TaskInfo] = {}


def register_task(name: str, defaults: dict | None = None, doc: str = ""):
    """Class decorator; stack it to register one class under several names with different defaults."""

    def deco(cls):
        _TASKS[name] = TaskInfo(name, cls, dict(defaults or {}), doc or (cls.__doc__ or "").strip().splitlines()[0])
        return cls

    return deco


def _ensure_loaded() -> None:
    import rnnlab.tasks  # noqa: F401  (importing the package registers every task file)


def available_tasks() -> list[str]:
    _ensure_loaded()
    return sorted(_TASKS)


def task_info(name: str) -> TaskInfo:
    _ensure_loaded()
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; valid choices: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def task_options(name: str) -> dict[str, Any]:
    """Option name -> default value for a registered task (defaults of the name applied)."""
    info = task_info(name)
    opts: dict[str, Any] = {}
    for p in inspect.signature(info.cls.__init__).parameters.values():
        if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            opts[p.name] = None if p.default is inspect.Parameter.empty else p.default
    opts.update(info.defaults)
    return opts


def create_task(name: str, **kwargs: Any) -> Task:
    """Build a registered task; ValueError naming the valid choices for a bad name or option."""
    info = task_info(name)
    valid = task_options(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for task {name!r}; valid options: {', '.join(sorted(valid))}")
    task = info.cls.__new__(info.cls)
    task.name = name  # set first so constructor errors name the task
    task.__init__(**{**info.defaults, **kwargs})
    return task


def as_tensor_batch(inputs: np.ndarray, targets: np.ndarray, lengths: np.ndarray | None = None) -> Batch:
    """numpy -> Batch with int64 / float32 tensors (``lengths``: real lengths of right-padded rows)."""
    x = torch.from_numpy(np.ascontiguousarray(inputs))
    y = torch.from_numpy(np.ascontiguousarray(targets))
    x = x.long() if not np.issubdtype(inputs.dtype, np.floating) else x.float()
    y = y.long() if not np.issubdtype(targets.dtype, np.floating) else y.float()
    return Batch(x, y, None if lengths is None else torch.as_tensor(np.asarray(lengths), dtype=torch.int64))


def right_padded(tokens: np.ndarray, targets: np.ndarray, lengths: np.ndarray) -> Batch:
    """(B, T) tokens and targets of full-length rows -> a Batch whose row b keeps its first lengths[b] positions:
    tokens 0 and targets IGNORE_INDEX (not scored) after them, ``lengths`` recorded (the trainer's packing)."""
    pad = np.arange(tokens.shape[1])[None] >= np.asarray(lengths)[:, None]
    return as_tensor_batch(np.where(pad, 0, tokens), np.where(pad, IGNORE_INDEX, targets), lengths)
