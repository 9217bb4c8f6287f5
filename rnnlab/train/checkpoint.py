"""Checkpoints as one safetensors file: model weights, AdamW state, RNG state and step.

Keys: ``model.<name>`` (state_dict), ``optim.<i>.<key>`` (state of the i-th parameter in
optimizer order), ``rng.torch`` (+ ``rng.cuda``); metadata: ``step`` and ``extra`` (JSON).
safetensors holds tensors and strings only, so loading never executes code.

Durability: every file is written to a temporary file, fsynced and renamed into place
(``atomic_write``), so a kill mid-write leaves the previous file intact. A checkpoint carries
the SHA-256 of its tensors in its metadata (``sha256``), verified on load (``CorruptCheckpoint``
otherwise); the previous checkpoint is kept beside the newest (``<name>.prev.safetensors``), and
``load_latest`` falls back to it, with a warning, when the newest is truncated or corrupt.

One layout for every way of training: a model sharded over processes (FSDP) is gathered whole before it is
written (``checkpoint_tensors``), and loaded whole before it is sharded again (``load_model``, then
``load_optimizer`` places each state tensor as its parameter is), so a run resumes on any number of processes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rnnlab.train.distributed import full_tensor, is_main, shard_like

__all__ = ["save_checkpoint", "load_checkpoint", "load_latest", "read_metadata", "atomic_write", "previous_path",
           "CorruptCheckpoint", "checkpoint_tensors", "write_checkpoint", "read_latest", "load_model", "load_optimizer",
           "load_rng"]

log = logging.getLogger(__name__)


class CorruptCheckpoint(ValueError):
    """A checkpoint file that cannot be read or whose checksum does not match its tensors."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported (e.g. Windows): the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, rename, fsync the folder:
    readers see the old file or the new one, never a partial one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def previous_path(path: str | Path) -> Path:
    """Where the checkpoint before ``path`` is kept: checkpoint.safetensors -> checkpoint.prev.safetensors."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def checkpoint_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors on the CPU: weights, optimizer state, RNG. A sharded model's tensors are gathered
    whole, one at a time (rnnlab.train.distributed.full_tensor: every process calls this, in step); only the
    coordinating process keeps them (the others get {})."""
    keep = is_main()
    tensors = {}

    def take(key: str, t: torch.Tensor) -> None:
        t = full_tensor(t)
        if keep:
            tensors[key] = t.detach().cpu().clone().contiguous()

    for k, v in model.state_dict().items():
        take(f"model.{k}", v)
    if optimizer is not None:
        for i, p in enumerate(_params(optimizer)):
            for k, v in optimizer.state.get(p, {}).items():
                take(f"optim.{i}.{k}", v if torch.is_tensor(v) else torch.tensor(v))
    if keep:
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return tensors


def write_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], step: int, extra: dict | None = None) -> None:
    """Write ``tensors`` atomically, with their checksum; the file it replaces becomes the previous one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"step": str(step), "extra": json.dumps(extra or {}), "sha256": _digest(tensors)})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    if path.exists():  # keep the last good one: a later corrupt newest file falls back to it
        os.replace(path, previous_path(path))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, step: int,
                    extra: dict | None = None) -> None:
    write_checkpoint(path, checkpoint_tensors(model, optimizer), step, extra)


def read_metadata(path: str | Path) -> tuple[int, dict]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    return int(meta["step"]), json.loads(meta["extra"])


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a checkpoint, checksum verified; CorruptCheckpoint if unreadable or altered."""
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
        int(meta["step"]), json.loads(meta["extra"])
    except Exception as e:  # truncated, garbage, or missing metadata
        raise CorruptCheckpoint(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from e
    if "sha256" in meta and meta["sha256"] != _digest(tensors):
        raise CorruptCheckpoint(f"checkpoint {path} fails its checksum: its tensors were altered after it was written")
    return meta, tensors


def read_latest(path: str | Path) -> tuple[int, dict, dict[str, torch.Tensor]] | None:
    """The newest good checkpoint: ``path``, or its previous one when ``path`` is corrupt (a warning names why).
    -> (step, extra, tensors), or None when neither exists. Raises CorruptCheckpoint when all are corrupt."""
    path = Path(path)
    candidates = [p for p in (path, previous_path(path)) if p.exists()]
    errors = []
    for p in candidates:
        try:
            meta, tensors = _read(p)
            return int(meta["step"]), json.loads(meta["extra"]), tensors
        except CorruptCheckpoint as e:
            errors.append(str(e))
            log.warning("%s; trying the previous checkpoint", e)
    if errors:
        raise CorruptCheckpoint("; ".join(errors) + "; no good checkpoint is left")
    return None


def load_model(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Weights into an unsharded model, in place (shard it afterwards)."""
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Optimizer state, in place; each state tensor placed (and sharded) as its parameter is."""
    params = _params(optimizer)
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    for i, st in state.items():
        p = params[i]
        optimizer.state[p] = {n: (v if n == "step" else shard_like(v, p)) for n, v in st.items()}


def load_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def _load(found, model, optimizer, restore) -> tuple[int, dict]:
    step, extra, tensors = found
    load_model(model, tensors)
    if optimizer is not None:
        load_optimizer(optimizer, tensors)
    if restore:
        load_rng(tensors)
    return step, extra


def load_latest(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                restore_rng: bool = True) -> tuple[int, dict] | None:
    """Load the newest good checkpoint (``read_latest``) into model (and optimizer, RNG) in place. -> (step, extra),
    or None when there is none."""
    found = read_latest(path)
    return None if found is None else _load(found, model, optimizer, restore_rng)


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True) -> tuple[int, dict]:
    """Load into model (and optimizer, RNG) in place, checksum verified. -> (step, extra)."""
    meta, tensors = _read(Path(path))
    return _load((int(meta["step"]), json.loads(meta["extra"]), tensors), model, optimizer, restore_rng)
