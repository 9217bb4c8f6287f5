"""``rnnlab diagnose RUN_DIR``: the state diagnostics and causal probes (rnnlab.diagnostics) on a trained run, written
to ``RUN_DIR/diagnostics.json``, where ``rnnlab report`` finds them (state_stats.png, the located-layer table).

On the run's fixed test set at one length (default: its longest test length, so a run trained at L and tested up to
16 L shows its state past the training length — Stuffed Mamba's state collapse): per-layer state statistics against
position; for lm tasks the located-layer sweep (each layer's state knocked out or patched at a grid of positions) and,
for mixers with heads, each head knocked out at every position.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from rnnlab.diagnostics import locate, locate_heads, state_stats
from rnnlab.diagnostics.probes import MODES

__all__ = ["DIAGNOSTICS", "diagnose_run", "load_run", "summarize"]

DIAGNOSTICS = "diagnostics.json"


def load_run(run_dir: str | Path):
    """A run directory -> (resolved config, task, SequenceModel with its newest good checkpoint, in eval mode)."""
    from rnnlab.models import SequenceModel
    from rnnlab.train.checkpoint import load_latest
    from rnnlab.train.config import resolve
    from rnnlab.train.trainer import CKPT, CONFIG

    run_dir = Path(run_dir)
    try:
        config = json.loads((run_dir / CONFIG).read_text())
    except (OSError, json.JSONDecodeError):
        raise ValueError(f"{run_dir} is not an rnnlab run directory (no readable {CONFIG})") from None
    resolved, task, model_cfg, _ = resolve(config)
    model = SequenceModel(model_cfg)
    if load_latest(run_dir / CKPT, model, restore_rng=False) is None:
        raise ValueError(f"{run_dir} holds no checkpoint ({CKPT})")
    return resolved, task, model.eval()


def diagnose_run(run_dir: str | Path, length: int | None = None, examples: int = 8, stride: int | None = None,
                 probe: str = "zero", probe_positions: int = 16) -> dict:
    """Diagnose one run -> the record written to RUN_DIR/diagnostics.json: {"length", "train_len", "examples",
    "state_stats" (rnnlab.diagnostics.state_stats; read every ``stride`` tokens, default length // 64), "probe"
    (rnnlab.diagnostics.locate at ``probe_positions`` evenly spaced positions; mode "patch" takes each row's state
    from the next row of the batch), "heads" (locate_heads)}; probes only for lm tasks, and not with probe="off"."""
    if probe not in MODES + ("off",):
        raise ValueError(f"probe must be one of {MODES + ('off',)}, got {probe!r}")
    for name, v in (("examples", examples), ("probe_positions", probe_positions)) + ((("length", length),) if length else ()):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    resolved, task, model = load_run(run_dir)
    L = max(task.test_lengths) if length is None else length
    task.check_length(L)
    seed = resolved["train"]["seed"]
    batch = next(task.test_batches(L, examples, examples, seed))
    record = {"length": L, "train_len": task.seq_len, "examples": int(batch.inputs.shape[0]),
              "state_stats": state_stats(model, batch.inputs, stride=stride or max(1, L // 64))}
    if probe != "off" and task.output == "lm":
        T = batch.inputs.shape[1]
        positions = sorted({round(i * T / probe_positions) for i in range(probe_positions)} - {T})
        source = torch.roll(batch.inputs, 1, 0) if probe == "patch" else None
        record["probe"] = locate(model, batch.inputs, batch.targets, positions, mode=probe, source=source)
        record["heads"] = locate_heads(model, batch.inputs, batch.targets)
    from rnnlab.train.checkpoint import atomic_write

    atomic_write(Path(run_dir) / DIAGNOSTICS, json.dumps(record))
    return record


def summarize(record: dict) -> dict:
    """A diagnostics record -> the numbers a reproduction's claims read: "norm_growth" (the largest over layers of
    the state norm after the whole test length over the norm at the training length: Stuffed Mamba's collapse),
    "located_layer" / "located_position" (the state probe that hurts the answer most) and "head_layer" (the layer
    of the head whose knockout hurts most), each where the record has it."""
    out = {}
    stats = record.get("state_stats")
    if stats and stats["positions"]:
        pos = stats["positions"]
        at_train = min(range(len(pos)), key=lambda j: abs(pos[j] - record["train_len"]))
        growth = [layer["norm"][-1] / layer["norm"][at_train] for layer in stats["layers"] if layer["norm"][at_train] > 0]
        if growth:
            out["norm_growth"] = max(growth)
    if "located" in (record.get("probe") or {}):
        out["located_layer"] = record["probe"]["located"]["layer"]
        out["located_position"] = record["probe"]["located"]["position"]
    if "located" in (record.get("heads") or {}):
        out["head_layer"] = record["heads"]["located"]["layer"]
    return out
