"""The curated comparison: ``rnnlab suite --quick`` / ``--full``.

Mixers: attention, sliding_attention, lstm, and one mixer of every other registered family,
chosen at run time from what is registered (a preferred list per family, else the first
registered name of the family). Tasks: MQAR, parity and selective copying at small sizes
(``--quick``: one size, one learning rate per task (two on parity), under 10 minutes on 2 CPU
cores), or a larger grid (``--full``: two sizes, best of three learning rates, more tasks). Runs
through the sweep machinery, so results land in SQLite, finished runs are skipped on a re-run,
and the report follows. Settings and why: docs/tasks.md, "The quick suite".
"""
from __future__ import annotations

import copy

from rnnlab.layers.registry import available_mixers, mixer_info

__all__ = ["pick_mixers", "suite_spec", "PREFERRED"]

PREFERRED = {
    "diagonal": ["mamba", "hawk", "lru", "hgrn", "s4d", "mingru"],
    "matrix": ["gla", "mamba2", "retnet", "hgrn2", "rwkv6", "mlstm", "linear_attention"],
    "delta": ["gated_deltanet", "deltanet", "deltaproduct", "rwkv7"],
    "ttt": ["ttt_linear", "titans", "ttt_mlp"],
    "expressive": ["block_diag_lrnn", "bilinear"],
    "nonlinear": ["lstm", "gru", "slstm"],
}
BASE_MIXERS = ["attention", "sliding_attention", "lstm"]
SKIP_FAMILIES = ("attention", "nonlinear", "other")  # "other" holds channel mixes and helpers, not sequence mixers


def pick_mixers(registered: list[str] | None = None) -> list[str]:
    """attention, sliding_attention, lstm (those registered) + one mixer per other registered family."""
    names = available_mixers() if registered is None else registered
    fam = {n: mixer_info(n).family for n in names}
    chosen = [m for m in BASE_MIXERS if m in names]
    for family in sorted(set(fam.values())):
        if family in SKIP_FAMILIES:
            continue
        members = sorted(n for n, f in fam.items() if f == family)
        pref = [m for m in PREFERRED.get(family, []) if m in members]
        chosen.append((pref or members)[0])
    return chosen


# Small-model settings per mixer for the suite (d_model 64 keeps head sizes >= 16).
MIXER_OPTIONS = {"attention": {"model": {"mixer_kwargs": {"num_heads": 2}}},
                 "sliding_attention": {"model": {"mixer_kwargs": {"num_heads": 2, "window": 16}}}}

# The quick suite: one setting per task, the same for every mixer, sized so that the slowest
# mixers' runs (which never reach the target) still fit in 10 minutes on 2 cores. Learning rate
# 3e-3 everywhere, and best of {3e-3, 2e-2} on parity: at 3e-3 the LSTM finds the parity
# automaton only on some seeds within 600 steps, at 2e-2 on 8 of 8 seeds within 220 steps,
# while attention and GLA learn nothing at 2e-2 (docs/tasks.md, "The quick suite").
QUICK_TASKS = {
    "mqar": {"task": {"seq_len": 32, "num_kv_pairs": 8, "vocab_size": 32, "test_lengths": [32]},
             "train": {"steps": 800, "target": 0.98}},
    "parity": {"task": {"test_lengths": [40, 128, 256]},
               "train": {"steps": 300, "target": 0.995, "eval_examples": 128},
               "grid": {"lr": [3e-3, 2e-2]}},
    "selective_copy": {"task": {"seq_len": 48, "num_tokens": 6, "vocab_size": 12, "test_lengths": [48, 96]},
                       "train": {"steps": 500, "target": 0.98}},
}


def suite_spec(quick: bool = True, mixers: list[str] | None = None, out_dir: str | None = None,
               workers: int = 2) -> dict:
    """The sweep spec of the quick or full suite."""
    mixers = mixers or pick_mixers()
    tasks = copy.deepcopy(QUICK_TASKS)
    name = "suite_quick" if quick else "suite_full"
    base = {"model": {"n_layers": 2, "mixer_kwargs": {}},
            "train": {"batch_size": 32, "warmup": 50, "weight_decay": 0.1, "eval_every": 100, "eval_examples": 256,
                      "ckpt_every": 100}}
    grid = {"mixer": mixers, "task": list(tasks), "d_model": [64], "n_layers": [2], "lr": [3e-3], "seed": [0]}
    if not quick:
        tasks["mqar"]["task"].update(num_kv_pairs=16, seq_len=64, vocab_size=128, test_lengths=[64, 128])
        tasks["parity"]["grid"]["lr"] = [3e-3, 1e-2, 2e-2]
        tasks["induction_head"] = {"task": {"seq_len": 64}, "train": {"target": 0.99}}
        tasks["word_problem"] = {"task": {"group": "S5", "min_len": 16, "max_len": 16, "test_lengths": [16, 64]}}
        tasks["copy"] = {"task": {"min_len": 4, "max_len": 24, "test_lengths": [49, 99]}, "train": {"target": 0.99}}
        for t in tasks.values():
            t.setdefault("train", {}).update(steps=2000, batch_size=64)
        grid.update(task=list(tasks), d_model=[64, 128], lr=[1e-3, 3e-3, 1e-2])  # best of three learning rates
    return {"name": name, "out_dir": out_dir or f"runs/{name}", "workers": workers, "threads_per_worker": 1,
            "grid": grid, "base": base, "tasks": tasks, "mixers": MIXER_OPTIONS}
