"""Checkpoints as one safetensors file: model weights, AdamW state, RNG state and step.

Keys: ``model.<name>`` (state_dict), ``optim.<i>.<key>`` (state of the i-th parameter in
optimizer order), ``rng.torch`` (+ ``rng.cuda``); metadata: ``step`` and ``extra`` (JSON).
safetensors holds tensors and strings only, so loading never executes code. Writes go to a
temporary file first and are renamed into place, so a run killed mid-write keeps the
previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["save_checkpoint", "load_checkpoint", "read_metadata"]


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, step: int,
                    extra: dict | None = None) -> None:
    tensors = {f"model.{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    if optimizer is not None:
        for i, p in enumerate(_params(optimizer)):
            for k, v in optimizer.state.get(p, {}).items():
                t = v if torch.is_tensor(v) else torch.tensor(v)
                tensors[f"optim.{i}.{k}"] = t.detach().cpu().clone().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"step": str(step), "extra": json.dumps(extra or {})})
    os.replace(tmp, path)


def read_metadata(path: str | Path) -> tuple[int, dict]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    return int(meta["step"]), json.loads(meta["extra"])


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True) -> tuple[int, dict]:
    """Load into model (and optimizer, RNG) in place. -> (step, extra)."""
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    device = next(model.parameters()).device
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None:
        params = _params(optimizer)
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v
        for i, st in state.items():
            p = params[i]
            optimizer.state[p] = {n: (v if n == "step" else v.to(device)) for n, v in st.items()}
    if restore_rng:
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(meta["step"]), json.loads(meta["extra"])
