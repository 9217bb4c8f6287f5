"""Settings shared by the reproductions: the laptop-scale model and training budget, and the quick/full split."""
from __future__ import annotations

import copy

SMALL = {"model": {"d_model": 64, "n_layers": 2}}
TRAIN = {"batch_size": 64, "warmup": 50, "eval_every": 250, "ckpt_every": 250, "eval_examples": 256}
ATTENTION = {"attention": {"model": {"mixer_kwargs": {"num_heads": 2}}},
             "sliding_attention": {"model": {"mixer_kwargs": {"num_heads": 2, "window": 16}}}}
VARIANTS = {  # "<mixer>@<tag>": one mixer under another setting, a model of its own in the tables
    "mamba@neg": {"model": {"mixer_kwargs": {"negative_eigenvalues": True}}},
    "deltanet@neg": {"model": {"mixer_kwargs": {"negative_eigenvalues": True}}},
    "gated_deltanet@neg": {"model": {"mixer_kwargs": {"negative_eigenvalues": True}}},
}


def sweep(quick: bool, mixers: list[str], tasks: dict, steps: int, full_steps: int, seeds: int = 3,
          full_seeds: int = 5, lrs=(3e-3,), full_lrs=(1e-3, 3e-3, 1e-2), d_model=(64,), full_d_model=None,
          extra_mixers: dict | None = None, n_layers=(2,)) -> dict:
    """A sweep spec: quick (one learning rate, 3 seeds, the short budget) or full (best of three learning
    rates, 5 seeds, the long budget). ``tasks``: per-task config merged on top of the base."""
    return {
        "threads_per_worker": 1,
        "grid": {"mixer": list(mixers), "task": list(tasks), "d_model": list(d_model if quick else (full_d_model or d_model)),
                 "n_layers": list(n_layers), "lr": list(lrs if quick else full_lrs),
                 "seed": list(range(seeds if quick else full_seeds))},
        "base": {"train": {**TRAIN, "steps": steps if quick else full_steps}},
        "tasks": copy.deepcopy(tasks),
        "mixers": {**ATTENTION, **VARIANTS, **(extra_mixers or {})},
    }
