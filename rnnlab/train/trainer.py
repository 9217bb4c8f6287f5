"""A model-agnostic trainer: any SequenceModel on any registered task.

AdamW over ``model.param_groups(weight_decay)`` (no decay on norms, biases and tagged
parameters), linear warmup then cosine decay (``get_lr``, a pure function of the step),
global-norm gradient clipping, optional bfloat16 autocast, evaluation at every test length,
early stop at a target metric. Deterministic given the seed: the model is initialised from
``torch.manual_seed(seed)`` and batch s is a function of (seed, s) only, so resuming from a
checkpoint (weights, optimizer, RNG, step) reproduces the uninterrupted run.

Run directory: ``config.json`` (resolved config), ``metrics.jsonl`` (one JSON object per
log/eval event), ``checkpoint.safetensors`` (latest) and ``checkpoint.prev.safetensors`` (the one
before), ``result.json`` (final metrics). config.json, result.json and checkpoints are written
atomically; a resume falls back to the previous checkpoint when the newest is corrupt and drops
a partial last metrics line (a kill mid-append), so a killed run always resumes.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from rnnlab.runtime import scoped_threads, set_threads
from rnnlab.tasks import metrics as M
from rnnlab.train import distributed as D
from rnnlab.train.checkpoint import (atomic_write, checkpoint_tensors, load_model, load_optimizer, load_rng, previous_path,
                                     read_latest, read_metadata, write_checkpoint)
from rnnlab.train.config import identity, resolve
from rnnlab.train.birdie import Birdie
from rnnlab.train.init_state import start_states
from rnnlab.train.packing import train_shard

__all__ = ["get_lr", "evaluate", "train", "score_of", "context_prefix", "NonFiniteError", "RunDirInUse"]

CKPT, CONFIG, METRICS, RESULT, LOCK = "checkpoint.safetensors", "config.json", "metrics.jsonl", "result.json", ".lock"


class NonFiniteError(RuntimeError):
    """A training step produced a NaN or infinite loss or gradient (train.on_nonfinite = "stop")."""


def get_lr(step: int, lr: float, warmup: int, total: int, min_lr_ratio: float) -> float:
    """Learning rate at ``step`` (0-based): linear warmup over ``warmup`` steps to ``lr``, then cosine
    decay to ``min_lr_ratio * lr`` at ``total`` (nanoGPT's get_lr)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= total:
        return lr * min_lr_ratio
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r}, but this torch build sees no CUDA device (use 'auto' or 'cpu')")
    return device


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def evaluate(model, task, train_cfg, device) -> dict[int, dict[str, float]]:
    """{test length: metrics} on the fixed test set of every test length."""
    was = model.training
    model.eval()
    out = {}
    for L in task.test_lengths:
        sums: dict[str, float] = {}
        for batch in task.test_batches(L, train_cfg.eval_examples, train_cfg.eval_batch_size, train_cfg.seed):
            prefix = context_prefix(model, task, batch.inputs)
            if train_cfg.eval_prompt == "jrt_prompt":
                batch = task.jrt_prompt(batch)
                prefix = None if prefix is None else 2 * prefix  # the context given twice
            batch = batch.to(device)
            with _autocast(device, train_cfg.bf16):
                y, _ = model(batch.inputs, **({} if prefix is None else {"prefix_len": prefix}))
            sums = M.add_sums(sums, task.metric_sums(y.float(), batch.targets))
        out[L] = task.finalize(sums)
    model.train(was)
    return out


def context_prefix(model, task, inputs, cu_seqlens=None) -> int | None:
    """The prompt prefix of a task's own rows (B, T) for a model with bidirectional layers (ModelConfig.bidirectional_every,
    rnnlab.models.bidirectional): the task's declared context (``Task.context_len``: MQAR's key-value pairs, whose
    targets are not scored), 0 for a task without one; None for a causal model or packed rows."""
    every = getattr(getattr(model, "config", None), "bidirectional_every", None)  # evaluate takes any module
    if every is None or cu_seqlens is not None or task.output != "lm":
        return None
    return task.context_len(inputs.shape[1]) or 0


def score_of(evals: dict, metric: str) -> float:
    """The primary metric averaged over test lengths."""
    vals = [m[metric] for m in evals.values()]
    return sum(vals) / len(vals)


def _write_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _records(lines):
    """Parsed JSON records; a line that does not parse (a write cut short by a kill) is dropped."""
    for ln in lines:
        try:
            yield ln, json.loads(ln)
        except json.JSONDecodeError:
            continue


def _truncate_jsonl(path: Path, step: int) -> None:
    """Drop records logged after ``step`` (a resumed run re-logs them) and any partial line."""
    if not path.exists():
        return
    keep = [ln for ln, rec in _records(path.read_text().splitlines()) if isinstance(rec, dict) and rec.get("step", 0) <= step]
    atomic_write(path, "".join(ln + "\n" for ln in keep))


def _old_config(path: Path) -> dict | None:
    """The run directory's config.json, or None when it is missing or unreadable (written before atomic writes)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


class RunDirInUse(RuntimeError):
    """Another process is writing this run directory."""


@contextmanager
def _locked(run_dir: Path, main: bool, wait: bool = False):
    """Hold an exclusive lock on run_dir/.lock while this process writes the directory (POSIX flock; released
    by the OS if the process dies). A second writer gets RunDirInUse instead of interleaving files, or with
    ``wait`` blocks until the first is done."""
    if not main:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    f = open(run_dir / LOCK, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            raise RunDirInUse(f"run directory {run_dir} is being written by another process (pid {f.read().strip() or '?'}); "
                              "wait for it or choose another --run-dir") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        f.close()  # closing releases the lock


@scoped_threads()  # the caller's torch and numba thread counts come back on return or on an exception
def train(config: dict, resume: bool = False, overwrite: bool = False, wait: bool = False) -> dict[str, Any]:
    """Train one run described by ``config`` (see rnnlab.train.config). -> the result dict (also in result.json).

    ``resume`` continues from the run directory's last good checkpoint. A directory that holds a finished
    run (result.json) is not replaced unless ``overwrite``: without either, ValueError. The directory is
    locked while the run writes it: a second writer gets RunDirInUse, or with ``wait`` waits for the first
    (a sweep worker left over from a killed sweep makes the restarted sweep's worker wait).

    ``train.threads``, when set, is the torch and numba thread count for this call only: the caller's counts
    are restored afterwards (rnnlab.runtime.scoped_threads). The allocator is left alone (rnnlab.runtime)."""
    resolved, task, model_cfg, tc = resolve(config)
    if tc.eval_prompt == "jrt_prompt" and (task.output != "lm" or task.context_len(task.test_lengths[0]) is None):
        raise ValueError(f"train.eval_prompt=jrt_prompt needs an lm task that declares its context; {task.name} does not")
    run_dir = Path(resolved["run_dir"])
    if not resume and not overwrite and (run_dir / RESULT).exists():
        raise ValueError(f"{run_dir} holds a finished run ({RESULT}); resume it (--resume), or replace it (--overwrite), "
                         "or choose another --run-dir")
    with _locked(run_dir, int(os.environ.get("RANK", "0")) == 0, wait):  # the process that writes the directory
        return _train(resolved, task, model_cfg, tc, resume)


def _train(resolved, task, model_cfg, tc, resume: bool) -> dict[str, Any]:
    from rnnlab.models import SequenceModel

    device = _device(tc.device)
    if tc.threads:
        set_threads(tc.threads)  # undone on return: @scoped_threads above
    rank, world, device = D.init_from_env(device)
    main = rank == 0
    accum = tc.grad_accum
    if tc.batch_size % (world * accum):
        raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by the {world} processes x "
                         f"train.grad_accum={accum} micro-batches")
    run_dir = Path(resolved["run_dir"])
    ckpt = run_dir / CKPT
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        old = _old_config(run_dir / CONFIG) if resume else None
        if old is not None:
            was, now = identity(old), identity(resolved)
            diff = [s for s in ("task", "model", "train") if was.get(s) != now.get(s)]
            if diff:
                raise ValueError(f"--resume: config section(s) {diff} differ from {run_dir / CONFIG}; resume needs the same config")
        atomic_write(run_dir / CONFIG, json.dumps(resolved, indent=2))

    torch.manual_seed(tc.seed)
    model = SequenceModel(model_cfg).to(device)
    # AdamW groups by parameter name: FSDP replaces the parameters (and their no-decay tags) when it shards them
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [{**g, "params": [names[id(p)] for p in g["params"]]} for g in model.param_groups(tc.weight_decay)]
    start, extra = 0, {"best": None, "wall_s": 0.0, "cpu_s": 0.0}
    loaded = read_latest(ckpt) if resume else None  # the newest good one (warns on a corrupt one)
    if loaded is not None:
        start, extra, tensors = loaded
        load_model(model, tensors)  # whole, before any sharding
        load_rng(tensors)
        if main:
            _truncate_jsonl(run_dir / METRICS, start)
    elif main:
        for stale in (run_dir / METRICS, run_dir / RESULT, ckpt, previous_path(ckpt)):  # a fresh run: nothing of an older one may be resumed
            stale.unlink(missing_ok=True)
    net = D.wrap(model, tc.parallel)  # what the step calls: DDP around the model, or the model sharded in place
    current = dict(model.named_parameters())
    optimizer = torch.optim.AdamW([{**g, "params": [current[n] for n in g["params"]]} for g in groups], lr=tc.lr,
                                  betas=(tc.beta1, tc.beta2))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    starts = start_states(model, task, tc, world)  # train.init_state (None: the model's own initial state)
    birdie = Birdie(task, tc) if tc.objective == "birdie" else None  # rnnlab.train.birdie
    if birdie is not None and loaded is not None:
        birdie.controller.load(extra.get("birdie"))
    source = birdie or starts  # what makes the training batches, when not rnnlab.train.packing
    if loaded is not None:
        load_optimizer(optimizer, tensors)
        if starts is not None:
            starts.load(tensors, device)  # the carried states
        del tensors

    ridge = model_cfg.readout == "ridge"  # closed-form readout: batches are summed into the ridge sums, no gradient steps
    if ridge and tc.pack:
        raise ValueError('train.pack is not supported with model.readout="ridge" (the ridge sums read whole rows)')
    if ridge and tc.parallel == "fsdp":  # the fit writes whole tensors into the head; use ddp (nothing to shard)
        raise ValueError('train.parallel="fsdp" is not supported with model.readout="ridge" (its only trained parameters '
                         'are the head\'s, set in closed form); use train.parallel="ddp"')
    metric, higher = task.primary_metric, task.higher_is_better
    reached = lambda s: tc.target is not None and (s >= tc.target if higher else s <= tc.target)  # noqa: E731
    best, evals, stopped_early = extra.get("best"), extra.get("evals") or None, False
    if evals is not None:
        evals = {int(k): v for k, v in evals.items()}
    # wall and CPU time of this process, carried across resumes through the checkpoint
    wall0, cpu0 = time.time() - extra.get("wall_s", 0.0), time.process_time() - extra.get("cpu_s", 0.0)
    t_last, tok_last = time.time(), 0
    bar = tqdm(total=tc.steps, initial=start, disable=not (tc.progress and main), desc=f"{task.name}/{model_cfg.mixer}",
               dynamic_ncols=True)
    step = start
    if evals is not None and reached(score_of(evals, metric)):
        stopped_early = True  # the checkpointed run had already stopped at its target
    model.train()
    while step < tc.steps and not stopped_early:
        if ridge:  # the closed-form readout: this process's shards of the step's batch join the ridge sums
            rows = sum(model.accumulate(mb.inputs, mb.targets) for mb in _micro_batches(task, tc, step, rank, world, device))
            step += 1
            if main and (step % tc.log_every == 0 or step == tc.steps):
                _write_jsonl(run_dir / METRICS, {"step": step, "ridge_rows": int(model.ridge.rows), "batch_rows": rows})
        else:
            step, lval, gnorm, tokens, aux = _gradient_step(net, optimizer, params, task, tc, step, rank, world, device, run_dir,
                                                            main, model, starts, train_shard if source is None else source.train_shard)
            if birdie is not None and step % tc.birdie_every == 0:
                rec = birdie.update(model, step, device)
                if main:
                    _write_jsonl(run_dir / METRICS, {"step": step, "birdie": rec})
            tok_last += tokens
            if step % tc.log_every == 0 or step == tc.steps:
                now = time.time()
                tps = tok_last / max(now - t_last, 1e-9)
                t_last, tok_last = now, 0
                rec = {"step": step, "loss": float(lval), "lr": get_lr(step - 1, tc.lr, tc.warmup, tc.steps, tc.min_lr_ratio),
                       "grad_norm": float(gnorm), "tokens_per_s": tps, **({} if aux is None else {"aux_loss": float(aux)})}
                if main:
                    _write_jsonl(run_dir / METRICS, rec)
                bar.set_postfix(loss=f"{float(lval):.4f}", **({metric: f"{score_of(evals, metric):.3f}"} if evals else {}),
                                tok_s=f"{tps:,.0f}")
        if step % tc.eval_every == 0 or step == tc.steps:
            if ridge:
                _fit(model, tc, world)
            evals = evaluate(model, task, tc, device)
            s = score_of(evals, metric)
            best = s if best is None or (s > best if higher else s < best) else best
            if main:
                _write_jsonl(run_dir / METRICS, {"step": step, "eval": {str(k): v for k, v in evals.items()}, "score": s})
            bar.set_postfix(**({} if ridge else {"loss": f"{float(lval):.4f}"}), **{metric: f"{s:.3f}"})
            stopped_early = reached(s) and step < tc.steps
        if step % tc.ckpt_every == 0 or step == tc.steps or stopped_early:
            tensors = checkpoint_tensors(model, optimizer)  # every process: a sharded model is gathered to the first
            if main and starts is not None:
                tensors.update(starts.tensors())  # carried states (one process: rnnlab.train.init_state)
            if main:
                write_checkpoint(ckpt, tensors, step,
                                 {"best": best, "evals": {str(k): v for k, v in (evals or {}).items()},
                                  "wall_s": time.time() - wall0, "cpu_s": time.process_time() - cpu0,
                                  **({"birdie": birdie.controller.state()} if birdie is not None else {})})
            del tensors
        bar.update(1)
    bar.close()
    if ridge:
        _fit(model, tc, world)
    if evals is None or (step % tc.eval_every != 0 and step != tc.steps and not stopped_early):
        evals = evaluate(model, task, tc, device)
    result = {
        "run_dir": str(run_dir), "task": task.name, "mixer": model_cfg.mixer,
        "d_model": model_cfg.d_model, "n_layers": model_cfg.n_layers, "lr": tc.lr, "seed": tc.seed,
        "steps": step, "stopped_early": stopped_early, "primary_metric": metric, "higher_is_better": higher,
        "score": score_of(evals, metric), "best": best, "metrics": {str(k): v for k, v in evals.items()},
        "num_parameters": model.num_parameters(), "state_size": model.state_size(task.seq_len),
        "state_size_per_length": {str(L): model.state_size(L) for L in task.test_lengths},
        "wall_s": time.time() - wall0, "cpu_s": time.process_time() - cpu0,
    }
    if ridge:
        result["readout"] = {"fit": "closed-form ridge regression (no gradient steps)", "ridge": tc.ridge,
                             "rows": int(model.ridge.rows) * world}
    if main:
        atomic_write(run_dir / RESULT, json.dumps(result, indent=2))
    return result


def _fit(model, tc, world: int) -> None:
    """Solve the ridge readout from the sums of every process (each process summed its own rows)."""
    gram, moment = model.ridge.gram.clone(), model.ridge.moment.clone()
    if world > 1:
        torch.distributed.all_reduce(gram)
        torch.distributed.all_reduce(moment)
    model.fit_readout(tc.ridge, gram, moment)


def _micro_batches(task, tc, step, rank, world, device, shard_of=train_shard) -> list:
    """This process's train.grad_accum shards of global batch ``step``: shards rank * accum ... of world * accum
    (rnnlab.train.packing; ``shard_of``: what makes a shard's batch, e.g. rnnlab.train.birdie's objectives)."""
    accum = tc.grad_accum
    return [shard_of(task, step, rank * accum + m, world * accum, batch_size=tc.batch_size, seed=tc.seed,
                     pack=tc.pack, pack_tokens=tc.pack_tokens).to(device) for m in range(accum)]


def _gradient_step(net, optimizer, params, task, tc, step, rank, world, device, run_dir, main, model, starts=None,
                   shard_of=train_shard):
    """One AdamW step on global batch ``step`` -> (step + 1, global-batch loss, gradient norm, tokens of the global batch,
    the auxiliary loss averaged over micro-batches and processes or None). This process runs its train.grad_accum
    micro-batches, shards rank * accum ... of the global batch (rnnlab.train.packing); DDP / FSDP reduce the gradients
    at the last one. ``model.aux_loss()`` (MoE load balancing) joins the loss times train.aux_loss_coef. ``starts``:
    the initial states (rnnlab.train.init_state), None for the model's own; ``shard_of``: what makes a shard's batch."""
    accum = tc.grad_accum
    lr = get_lr(step, tc.lr, tc.warmup, tc.steps, tc.min_lr_ratio)
    for g in optimizer.param_groups:
        g["lr"] = lr
    micro = _micro_batches(task, tc, step, rank, world, device, shard_of)
    totals = D.all_reduce_sum(torch.tensor([sum(mb.count for mb in micro), sum(mb.tokens for mb in micro)], device=device))
    count, tokens = totals[0].clamp_min(1).to(device), int(totals[1])  # over the global batch
    optimizer.zero_grad(set_to_none=True)
    lval = torch.zeros((), device=device)
    aux_sum = None
    for m, mb in enumerate(micro):
        with D.no_sync(net, sync=m == accum - 1):
            j = rank * accum + m
            rows = mb.inputs.shape[0] if mb.cu_seqlens is None else len(mb.cu_seqlens) - 1
            state = None if starts is None else starts.initial(step, j, rows, device)
            prefix = mb.prefix_len if mb.prefix_len is not None else context_prefix(model, task, mb.inputs, mb.cu_seqlens)
            with _autocast(device, tc.bf16):
                out, final = net(mb.inputs, state, cu_seqlens=mb.cu_seqlens, **({} if prefix is None else {"prefix_len": prefix}))
            if starts is not None:
                starts.record(j, final)
            loss_sum, _ = task.loss_terms(out.float(), mb.targets)
            loss = loss_sum / count  # this shard's part of the global-batch mean
            aux = model.aux_loss()
            if aux is not None:  # the mean over processes and micro-batches, after the scaling below
                aux = aux.float() / (world * accum)
                aux_sum = aux.detach() if aux_sum is None else aux_sum + aux.detach()
                loss_total = loss + tc.aux_loss_coef * aux
            else:
                loss_total = loss
            (loss_total * world).backward()  # DDP and FSDP average over processes: the scaling makes it the sum
        lval += loss.detach()
    lval = D.all_reduce_sum(lval)  # the global-batch loss, the same on every process
    if aux_sum is not None:
        aux_sum = D.all_reduce_sum(aux_sum)
    gnorm = D.full_tensor(torch.nn.utils.clip_grad_norm_(params, tc.grad_clip if tc.grad_clip > 0 else math.inf))
    if not (torch.isfinite(lval) and torch.isfinite(gnorm)):  # global values: every process decides alike
        what = f"non-finite {'loss' if not torch.isfinite(lval) else 'gradient norm'} at step {step + 1} " \
               f"(loss {float(lval)}, gradient norm {float(gnorm)}, lr {lr:g})"
        if tc.on_nonfinite == "stop":
            raise NonFiniteError(f"{what}; the weights of step {step} are in the last checkpoint "
                                 "(train.on_nonfinite=skip skips such steps instead)")
        optimizer.zero_grad(set_to_none=True)  # skip: no update from this batch
        if main:
            _write_jsonl(run_dir / METRICS, {"step": step + 1, "skipped": what})
    else:
        optimizer.step()
    return step + 1, lval, gnorm, tokens, aux_sum


def checkpoint_step(run_dir: str | Path) -> int | None:
    """Step of the run's latest readable checkpoint (the previous one when the newest is corrupt), or None."""
    for p in (Path(run_dir) / CKPT, previous_path(Path(run_dir) / CKPT)):
        try:
            return read_metadata(p)[0]
        except Exception:  # missing, truncated or garbage
            continue
    return None
