"""Arrow pointing with grid-size extrapolation: does an arrow point at the marked cell of a 2-D grid?

*Pöppel, Freinschlag, Schmied, Lin & Hochreiter 2025, "pLSTM: parallelizable Linear Source Transition Mark
networks", the arrow-pointing extrapolation task (datasets: github.com/ml-jku/arrow_pointing_dataset).* There an
image shows an arrow (position, continuous angle) and a filled disc; the label is whether the arrow's ray hits
the disc (half the examples each; a hit passes within r / 1.2 of the centre, a miss at least 1.2 r from it);
models train on 192x192 images and are tested on 384x384 ones (the arrow and disc keep their pixel sizes, so
the distances grow). This is the same question on a grid of cells, read by a sequence model:

    an n x n grid, empty but for one arrow cell (one of 8 directions: E, NE, N, NW, W, SW, S, SE) and one
    marked cell; label 1 iff the marked cell lies on the arrow's ray {arrow + j·dir : j >= 1}.

Inputs (B, n², 10) float, the grid in raster order (row by row, top to bottom): features 0-7 one-hot the arrow's
direction (on the arrow cell), 8 marks the marked cell, 9 is 1 on the first cell of every row (a line break:
without it a grid is an unstructured string and the width of a larger grid could not be read off).
Targets (B,) the label; classification from the model's pooled readout.

``seq_len`` and ``test_lengths`` count tokens, n² (perfect squares: 64 = 8x8 training grids, tested on 16x16
and 32x32 = 4x and 16x the tokens, 2x and 4x the side; the paper's test is 2x the side). Half the examples are
hits (the paper's ``intersection_ratio`` 0.5): arrow cell uniform among cells with at least one cell ahead in
the drawn direction, marked cell uniform among the cells on the ray. A miss: arrow cell and direction uniform,
marked cell uniform among the other cells off the ray. **Adaptation** (said in docs/tasks.md): discrete cells and
8 directions in place of rendered pixels and continuous angles (the disc is one cell, the ray exact, so no
margin is needed), so a sequence model reads one token per cell and every mixer can be judged; what carries
over is the paper's point: a long-distance directional relation in 2-D, learned at one size and extrapolated.
**Diagnoses** whether a model tracks 2-D geometry in a raster scan (same column = a multiple of the width
apart) at sizes never seen.
"""
from __future__ import annotations

import math

import numpy as np

from rnnlab.tasks.base import Task, as_tensor_batch, register_task

__all__ = ["ArrowPointing", "DIRECTIONS", "NUM_FEATURES"]

# (d_row, d_col) of the 8 directions, row index growing downwards: E, NE, N, NW, W, SW, S, SE
DIRECTIONS = np.array([(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)], np.int64)
MARK, ROW_START = 8, 9
NUM_FEATURES = 10


def _side(seq_len: int) -> int | None:
    n = math.isqrt(seq_len)
    return n if n * n == seq_len else None


def _room(rows: np.ndarray, cols: np.ndarray, dirs: np.ndarray, n: int) -> np.ndarray:
    """How many cells lie ahead of (rows, cols) in direction dirs inside an n x n grid (0 at an edge facing out)."""
    def steps(pos, d):
        return np.where(d > 0, n - 1 - pos, np.where(d < 0, pos, n))
    dr, dc = DIRECTIONS[dirs, 0], DIRECTIONS[dirs, 1]
    return np.minimum(steps(rows, dr), steps(cols, dc))


def ray_steps(arrow: np.ndarray, dirs: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """(B,) j with cell = arrow + j·DIRECTIONS[dirs] for some j >= 0, else -1."""
    d, u = cell - arrow, DIRECTIONS[dirs]
    j = np.where(u[:, 0] != 0, d[:, 0] * u[:, 0], d[:, 1] * u[:, 1])  # |u| entries are 0 or 1
    return np.where((j >= 0) & (d[:, 0] == j * u[:, 0]) & (d[:, 1] == j * u[:, 1]), j, -1)


@register_task("arrow_pointing")
class ArrowPointing(Task):
    """pLSTM's arrow pointing on an n x n token grid: does the arrow's ray hit the marked cell (Pöppel et al. 2025)."""

    output = "classify"
    report_metrics = ("acc",)

    def __init__(self, seq_len: int = 64, test_lengths: list[int] | None = None):
        super().__init__(seq_len, test_lengths if test_lengths is not None else [64, 256, 1024])
        self.check_length(seq_len)

    def check_length(self, seq_len: int) -> None:
        n = _side(seq_len)
        if n is None or n < 2:
            raise ValueError(f"arrow_pointing: length {seq_len} impossible; lengths are n² tokens of an n x n grid, n >= 2 "
                             f"(64, 256, 1024, ...)")

    def model_io(self):
        return {"input_dim": NUM_FEATURES, "head": "classify", "num_classes": 2}

    def generate(self, batch_size: int, n: int, rng: np.random.Generator):
        """-> (arrow (B, 2), direction (B,), mark (B, 2), label (B,)): row/column coordinates of one batch."""
        label = rng.random(batch_size) < 0.5
        arrow, dirs = rng.integers(0, n, size=(batch_size, 2)), rng.integers(0, 8, size=batch_size)
        redo = label & (_room(arrow[:, 0], arrow[:, 1], dirs, n) == 0)  # a hit needs a cell ahead
        while redo.any():
            arrow[redo], dirs[redo] = rng.integers(0, n, size=(redo.sum(), 2)), rng.integers(0, 8, size=redo.sum())
            redo = label & (_room(arrow[:, 0], arrow[:, 1], dirs, n) == 0)
        ahead = np.maximum(_room(arrow[:, 0], arrow[:, 1], dirs, n), 1)
        mark = arrow + rng.integers(1, ahead + 1)[:, None] * DIRECTIONS[dirs]  # hits: a cell on the ray
        redo = ~label
        while redo.any():  # misses: uniform over the cells off the ray (the arrow's own cell included in "on")
            mark[redo] = rng.integers(0, n, size=(redo.sum(), 2))
            redo = ~label & (ray_steps(arrow, dirs, mark) >= 0)
        return arrow, dirs, mark, label.astype(np.int64)

    def sample(self, batch_size, seq_len, rng, split):
        n = _side(seq_len or self.seq_len)
        arrow, dirs, mark, label = self.generate(batch_size, n, rng)
        grid = np.zeros((batch_size, n, n, NUM_FEATURES), np.float32)
        rows = np.arange(batch_size)
        grid[:, :, 0, ROW_START] = 1.0
        grid[rows, arrow[:, 0], arrow[:, 1], dirs] = 1.0
        grid[rows, mark[:, 0], mark[:, 1], MARK] = 1.0
        return as_tensor_batch(grid.reshape(batch_size, n * n, NUM_FEATURES), label)
