"""Implicit Mamba-2's test accuracy against its fixed-point solver's budget, on a trained run's own test set.

    python examples/implicit_solver_budget.py RUN_DIR [--budgets 0.05:32,0.005:256]

RUN_DIR: an ``rnnlab train ... --mixer implicit_mamba2`` run (or a sweep's run directory). For each ``tol:max_iter``
it sets the evaluation budget (``eval_tol``, ``eval_max_iter``) of every ``ImplicitMamba2`` layer of the trained model
and scores it with the trainer's evaluation (``rnnlab.train.trainer.evaluate``: the run's test lengths, examples and
seed). Longer sequences need more self-iterations to converge (docs/tasks.md, "The comparison on parity, S3 and ModArith");
to train with one budget and evaluate with another from the start, pass ``model.mixer_kwargs.eval_tol=...
model.mixer_kwargs.eval_max_iter=...`` to ``rnnlab train``."""
from __future__ import annotations

import argparse

import torch

from rnnlab.layers.implicit_mamba2 import ImplicitMamba2
from rnnlab.train.config import TrainConfig
from rnnlab.train.diagnose import load_run
from rnnlab.train.trainer import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--budgets", default="0.05:32,0.005:256", help="comma-separated tol:max_iter pairs")
    args = ap.parse_args()
    resolved, task, model = load_run(args.run_dir)
    layers = [m for m in model.modules() if isinstance(m, ImplicitMamba2)]
    if not layers:
        raise SystemExit(f"{args.run_dir}: no implicit_mamba2 layer in this run's model")
    train_cfg = TrainConfig.from_dict(resolved["train"])
    for budget in args.budgets.split(","):
        tol, max_iter = budget.split(":")
        for layer in layers:
            layer.eval_tol, layer.eval_max_iter = float(tol), int(max_iter)
        evals = evaluate(model, task, train_cfg, torch.device("cpu"))
        print(f"tol {float(tol)}, max_iter {int(max_iter)}: " + ", ".join(f"acc@{L} {m['acc']:.3f}" for L, m in evals.items()),
              flush=True)


if __name__ == "__main__":
    main()
