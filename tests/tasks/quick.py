"""The quick path of a task: a tiny `rnnlab train` run (a few steps of a small attention model, then the evaluation at
every test length), as a task test runs it."""
import json
import math

from rnnlab.cli import main


def train_briefly(tmp_path, task: str, *overrides: str, steps: int = 2) -> dict:
    """Train `task` for `steps` steps and evaluate it; returns result.json (finite losses at every test length)."""
    run = tmp_path / "run"
    args = ["train", "--task", task, "--mixer", "attention", "--d-model", "16", "--layers", "1", "--batch-size", "8",
            "--steps", str(steps), "--no-progress", "model.mixer_kwargs.num_heads=2", f"train.eval_every={steps}",
            "train.eval_examples=8", "--run-dir", str(run), *overrides]
    assert main(args) == 0
    result = json.loads((run / "result.json").read_text())
    assert result["steps"] == steps and result["task"] == task
    assert result["metrics"] and all(math.isfinite(m["loss"]) and 0 <= m["acc"] <= 1 for m in result["metrics"].values())
    return result
