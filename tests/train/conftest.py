import os
import sys

import pytest


def tiny_config(run_dir, steps=12, **train):
    """A tiny attention model on short parity: ~ms per step."""
    return {
        "task": {"name": "parity", "max_len": 12, "test_lengths": [12, 24]},
        "model": {"mixer": "attention", "d_model": 16, "n_layers": 1, "mixer_kwargs": {"num_heads": 2}},
        "train": {"steps": steps, "batch_size": 8, "eval_every": 6, "eval_examples": 16, "ckpt_every": 6,
                  "progress": False, "warmup": 3, **train},
        "run_dir": str(run_dir),
    }


TINY_ARGS = ["--task", "parity", "--mixer", "attention", "--d-model", "16", "--layers", "1", "--batch-size", "8",
             "--no-progress", "model.mixer_kwargs.num_heads=2", "task.max_len=12", "task.test_lengths=[12]",
             "train.eval_examples=16"]


@pytest.fixture
def env1():
    """Environment for subprocesses: one thread each, rnnlab importable."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONPATH=os.getcwd())


PY = sys.executable
