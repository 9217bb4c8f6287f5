"""2-D grid modules in the sequence model: a grid of n x n cells read in raster order (the arrow_pointing task's
layout) is a sequence of n² tokens; ``GridMixer`` reshapes it to (B, n, n, D), runs a 2-D module (x (B, X, Y, D)
-> (B, X, Y, D), e.g. rnnlab.layers.plstm2d.PLSTM2D) and flattens back, so a ModelConfig names the module like a
mixer (``mixer="plstm2d"``) and every block, norm, MLP and head stays as it is.

These are not token mixers (they are not registered, so the conformance suite does not run them): they read the
whole grid in every direction, so there is no causality, no state and no token-by-token form. Each call is one
whole grid per row (packed sequences: each its own grid); nothing carries over between calls.
"""
from __future__ import annotations

import math

from einops import rearrange
from torch import Tensor

from rnnlab.layers.base import Mixer, State
from rnnlab.layers.plstm2d import PLSTM2D
from rnnlab.layers.registry import check_options

__all__ = ["GRID_MODULES", "GridMixer", "create_grid_mixer", "check_grid_options"]

GRID_MODULES: dict[str, type] = {"plstm2d": PLSTM2D}


class GridMixer(Mixer):
    """x (B, n², D), an n x n grid in raster order -> y (B, n², D) through a 2-D module. State: none."""

    def __init__(self, module):
        super().__init__(module.d_model)
        self.module = module

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return {}

    def state_size(self, seq_len: int) -> int:
        return 0

    def parallel(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        n = math.isqrt(x.shape[1])
        if n * n != x.shape[1]:
            raise ValueError(f"{type(self.module).__name__} reads an n x n grid in raster order: the length must be a square, "
                             f"got {x.shape[1]}")
        y = self.module(rearrange(x, "b (x y) d -> b x y d", x=n))
        return rearrange(y, "b x y d -> b (x y) d"), {}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self.parallel(x, state)  # a 1 x 1 grid: one whole grid like any other call


def check_grid_options(name: str, d_model: int, kwargs: dict) -> None:
    if name not in GRID_MODULES:
        raise ValueError(f"unknown grid module {name!r}; valid choices: {', '.join(GRID_MODULES)}")
    check_options(GRID_MODULES[name], f"grid module {name!r}", d_model, kwargs)


def create_grid_mixer(name: str, d_model: int, **kwargs) -> GridMixer:
    """``create_grid_mixer("plstm2d", 64, mode="D")``: the named 2-D module inside a GridMixer."""
    check_grid_options(name, d_model, kwargs)
    return GridMixer(GRID_MODULES[name](d_model, **kwargs))
