"""A NaN or infinite loss or gradient stops a run with a clear error (or skips the step when asked)."""
import json

import pytest

from rnnlab.train.sweep import run_sweep
from rnnlab.train.trainer import NonFiniteError, train
from tests.train.conftest import tiny_config


def test_nonfinite_loss_stops_the_run_naming_the_step(tmp_path):
    with pytest.raises(NonFiniteError, match=r"non-finite .* at step \d+"):
        train(tiny_config(tmp_path / "r", steps=12, lr=1e30, warmup=1))


def test_skip_mode_skips_the_updates_and_logs_them(tmp_path):
    result = train(tiny_config(tmp_path / "r", steps=12, lr=1e30, warmup=1, on_nonfinite="skip"))
    assert result["steps"] == 12
    records = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert any("skipped" in r and "non-finite" in r["skipped"] for r in records)


def test_bad_values_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="train.lr must be a finite number"):
        train(tiny_config(tmp_path / "a", lr=float("inf")))
    with pytest.raises(ValueError, match="train.lr must be a finite number > 0"):
        train(tiny_config(tmp_path / "a", lr=0.0))
    with pytest.raises(ValueError, match="on_nonfinite must be one of stop, skip"):
        train(tiny_config(tmp_path / "b", on_nonfinite="ignore"))


def test_a_sweep_records_a_nonfinite_run_as_failed(tmp_path):
    spec = {"name": "t", "out_dir": str(tmp_path / "runs"), "workers": 1,
            "grid": {"mixer": ["attention"], "task": ["parity"], "d_model": [16], "n_layers": [1], "lr": [1e30]},
            "base": {"train": {"steps": 8, "batch_size": 8, "eval_every": 8, "eval_examples": 16, "warmup": 1}},
            "tasks": {"parity": {"task": {"max_len": 12, "test_lengths": [12]}}},
            "mixers": {"attention": {"model": {"mixer_kwargs": {"num_heads": 2}}}}}
    counts = run_sweep(spec, log=lambda *_: None)
    assert counts["failed"] == 1 and counts["done"] == 0
    from rnnlab.train.store import Store

    (row,) = Store(spec["out_dir"] + "/runs.db").rows()
    assert row["status"] == "failed" and "non-finite" in row["error"] and "at step" in row["error"]


def test_float_settings_given_as_ints_are_numbers_not_counts():
    """train.grad_clip=0 (no clipping) and weight_decay=0 are valid; counts such as steps still must be >= 1."""
    from rnnlab.train.config import TrainConfig

    assert TrainConfig(grad_clip=0, weight_decay=0).grad_clip == 0
    with pytest.raises(ValueError, match="train.steps must be an int >= 1, got 0"):
        TrainConfig(steps=0)
