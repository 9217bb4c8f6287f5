"""The mixer contract every token mixer implements.

A mixer maps x (B, T, D) to y (B, T, D) and carries a state between calls:

    y, state = mixer(x, state=None)
    state = mixer.init_state(batch_size, device=None, dtype=None)  # dict[str, Tensor], batch in dim 0
    n = mixer.state_size(seq_len)                                   # floats held per sequence

Subclasses implement ``parallel(x, state)`` (T > 1, the training form) and
``step(x, state)`` (T == 1, the recurrent form); both take and return a state
dict. ``forward`` validates the input, fills a missing state from
``init_state`` and dispatches on T; that policy lives here and nowhere else.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

State = dict[str, Tensor]


class Mixer(nn.Module):
    """Base class of all token mixers; see the module docstring for the contract."""

    def __init__(self, d_model: int):
        super().__init__()
        if not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        self.d_model = d_model

    # --- to implement -------------------------------------------------------
    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, T, D) with T > 1 -> (y (B, T, D), new state). Continues from ``state``."""
        raise NotImplementedError

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (B, 1, D) -> (y (B, 1, D), new state): the O(1)-per-token recurrent form."""
        raise NotImplementedError

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        """The state before any token: dict of tensors with batch in dim 0 (float32 unless dtype given)."""
        raise NotImplementedError

    def state_size(self, seq_len: int) -> int:
        """Floats held per sequence after ``seq_len`` tokens (constant for recurrent mixers)."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------
    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """x (B, T, D) -> (y (B, T, D), state). T == 1 runs ``step``, T > 1 ``parallel``."""
        self.check_input(x)
        if state is None:
            state = self.init_state(x.shape[0], device=x.device)
        else:
            self.check_state(state, x.shape[0])
        if x.shape[1] == 1:
            return self.step(x, state)
        return self.parallel(x, state)

    def check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__} expects a torch.Tensor of shape (B, T, {self.d_model}), got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.d_model or x.shape[1] == 0:
            raise ValueError(
                f"{type(self).__name__} expects x of shape (B, T, D) = (batch, seq_len >= 1, {self.d_model}), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects a floating-point x, got dtype {x.dtype}")

    def check_state(self, state: State, batch_size: int) -> None:
        expected = set(self.init_state(1, device="meta"))
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{type(self).__name__} expects a state dict with keys {sorted(expected)}, got {got}")
        for key, t in state.items():
            if t.shape[0] != batch_size:
                raise ValueError(f"state[{key!r}] has batch size {t.shape[0]}, expected {batch_size} (dim 0 of x)")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}"


def state_numel(state: State) -> int:
    """Floats per sequence actually held by a state dict (complex counts as 2 floats)."""
    total = 0
    for t in state.values():
        per_seq = math.prod(t.shape[1:])
        total += per_seq * (2 if t.is_complex() else 1)
    return total


def no_weight_decay(*params: nn.Parameter) -> None:
    """Tag parameters the optimizer must not decay (decay rates, dt biases, ...), as mamba does."""
    for p in params:
        p._no_weight_decay = True
