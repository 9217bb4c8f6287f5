"""Sweeps: a grid of runs (mixers x tasks x sizes x learning rates x seeds) executed in
parallel worker processes, results in SQLite.

A sweep file (YAML, TOML or JSON) is data::

    name: small
    out_dir: runs/small            # run directories (default runs/<name>)
    db: runs/small/runs.db         # default <out_dir>/runs.db
    workers: 2                     # parallel processes; each gets threads_per_worker threads
    threads_per_worker: 1
    grid: {mixer: [attention, lstm], task: [mqar, parity], d_model: [32, 64], n_layers: [2],
           lr: [1.0e-3, 3.0e-3], seed: [0], pack: [false, true],  # pack: train.pack (packed batches)
           model.embedding_init: [unit, gpt2]}   # any other setting by its dotted path
    base: {model: {...}, train: {...}}          # shared by every run
    tasks: {mqar: {task: {num_kv_pairs: 4}, train: {steps: 400}},  # per-task config, merged on top
            parity: {grid: {lr: [3.0e-3, 2.0e-2]}}}   # per-task grid axes replace the global ones
    mixers: {attention: {model: {mixer_kwargs: {num_heads: 2}}},     # per-mixer config
             mamba@neg: {model: {mixer_kwargs: {negative_eigenvalues: true}}},  # grid mixer "mamba@neg": a variant
             slstm: {grid: {lr: [3.0e-3, 1.0e-2]}}}    # a mixer's own grid axes replace the global ones

Every grid point is resolved (validated) before anything runs, so a bad grid fails at once.
A run's id is the hash of its resolved config: re-running a sweep skips runs already
"done"; unfinished ones resume from their last checkpoint; a run whose process fails is
recorded as "failed" with its error tail and never silently dropped. A run is claimed in the database
before it starts (``Store.claim``): two sweeps on one database share the runs instead of both running them,
and a dead sweep's claims are taken over.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rnnlab.train.config import config_hash, load_file, merge, resolve
from rnnlab.train.store import Store

__all__ = ["expand", "run_sweep", "load_sweep"]

GRID_KEYS = {"mixer": ("model", "mixer"), "d_model": ("model", "d_model"), "n_layers": ("model", "n_layers"),
             "lr": ("train", "lr"), "seed": ("train", "seed"), "task": ("task", "name"), "pack": ("train", "pack")}
SWEEP_KEYS = ("name", "out_dir", "db", "workers", "threads_per_worker", "grid", "base", "tasks", "mixers")


def _path(key: str) -> tuple[str, ...]:
    """A grid key -> its place in a run config: a short name of GRID_KEYS, or a dotted path under task / model /
    train (``model.embedding_init``, ``model.mixer_kwargs.num_heads``, ``task.num_kv_pairs``)."""
    if key in GRID_KEYS:
        return GRID_KEYS[key]
    return tuple(key.split("."))


def _check_keys(grid: dict, where: str, valid: list[str]) -> None:
    bad = sorted(k for k in grid if k not in valid and not (
        isinstance(k, str) and "." in k and k.split(".")[0] in ("task", "model", "train") and all(k.split("."))))
    if bad:
        raise ValueError(f"unknown {where} key(s) {bad}; valid grid keys: {', '.join(valid)}, or a dotted path "
                         f"under task / model / train (e.g. model.embedding_init)")


def load_sweep(path_or_dict) -> dict:
    spec = load_file(path_or_dict) if not isinstance(path_or_dict, dict) else dict(path_or_dict)
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise ValueError(f"unknown sweep key(s) {unknown}; valid keys: {', '.join(SWEEP_KEYS)}")
    for key in ("grid", "base", "tasks", "mixers"):
        if not isinstance(spec.get(key) or {}, dict):
            raise ValueError(f"sweep {key} must be a mapping, got {spec[key]!r}")
    for key in ("tasks", "mixers"):
        for name, cfg in (spec.get(key) or {}).items():
            if not isinstance(cfg or {}, dict) or not isinstance((cfg or {}).get("grid") or {}, dict):
                raise ValueError(f"sweep {key}.{name} must be a mapping (with an optional grid mapping), got {cfg!r}")
    for key in ("name", "out_dir", "db"):
        if key in spec and not isinstance(spec[key], str):
            raise ValueError(f"sweep {key} must be a string, got {spec[key]!r}")
    for key in ("tasks", "mixers"):
        spec[key] = {name: dict(cfg or {}) for name, cfg in (spec.get(key) or {}).items()}
    spec["base"] = dict(spec.get("base") or {})
    grid = spec.get("grid") or {}
    _check_keys(grid, "grid", list(GRID_KEYS))
    for task, cfg in (spec.get("tasks") or {}).items():  # a task's own axes (not `task` itself)
        _check_keys((cfg or {}).get("grid") or {}, f"tasks.{task}.grid", [k for k in GRID_KEYS if k != "task"])
    for mixer, cfg in (spec.get("mixers") or {}).items():  # a mixer's own axes (not `task` or `mixer`)
        _check_keys((cfg or {}).get("grid") or {}, f"mixers.{mixer}.grid", [k for k in GRID_KEYS if k not in ("task", "mixer")])
    if "task" not in grid or "mixer" not in grid:
        raise ValueError("a sweep grid needs at least `task` and `mixer` lists")
    spec.setdefault("name", "sweep")
    spec.setdefault("out_dir", f"runs/{spec['name']}")
    spec.setdefault("db", str(Path(spec["out_dir"]) / "runs.db"))
    spec.setdefault("workers", 1)
    spec.setdefault("threads_per_worker", 1)
    for key in ("workers", "threads_per_worker"):
        v = spec[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"sweep {key} must be a positive int, got {v!r}")
    return spec


def _points(spec: dict):
    """Grid points (dicts of grid key -> value), task by task and mixer by mixer: a task's own ``grid`` axes
    replace the global ones, and a mixer's own ``grid`` axes (``mixers.<name>.grid``) replace both."""
    as_list = lambda v: v if isinstance(v, list) else [v]  # noqa: E731
    for task in as_list(spec["grid"]["task"]):
        grid = {**spec["grid"], **((spec.get("tasks") or {}).get(task, {}).get("grid") or {}), "task": [task]}
        for mixer in as_list(grid["mixer"]):
            key = "+".join(mixer) if isinstance(mixer, list) else mixer
            own = (spec.get("mixers") or {}).get(key, {}).get("grid") or {}
            g = {**grid, **own, "mixer": [mixer]}
            keys = list(g)
            for values in itertools.product(*(as_list(g[k]) for k in keys)):
                yield dict(zip(keys, values))


def expand(spec: dict) -> list[dict]:
    """Sweep spec -> list of resolved run configs (validated; raises ValueError on a bad point)."""
    runs = []
    for point in _points(spec):
        task_cfg = {k: v for k, v in (spec.get("tasks") or {}).get(point["task"], {}).items() if k != "grid"}
        cfg = merge({"task": {}, "model": {}, "train": {}}, spec.get("base") or {})
        cfg = merge(cfg, task_cfg)
        mixer = point["mixer"]
        mixer_key = "+".join(mixer) if isinstance(mixer, list) else mixer
        base = mixer_key.split("@")[0]  # "mamba@neg": mamba with the settings of mixers["mamba@neg"], its own model
        mixers = {k: {s: v for s, v in c.items() if s != "grid"} for k, c in (spec.get("mixers") or {}).items()}
        cfg = merge(cfg, mixers.get(base, {}))
        if base != mixer_key:
            cfg = merge(cfg, mixers.get(mixer_key, {}))
            point = {**point, "mixer": base if isinstance(mixer, str) else mixer}
        for k, v in point.items():
            *parents, field = _path(k)
            node = cfg
            for p in parents:
                node = node.setdefault(p, {})
            node[field] = v
        cfg["train"].update(progress=False, threads=spec["threads_per_worker"])
        cfg.pop("run_dir", None)
        resolved, *_ = resolve(cfg)
        rid = config_hash(resolved)
        resolved["run_dir"] = str(Path(spec["out_dir"]) / f"{resolved['task']['name']}-{mixer_key}-d{resolved['model']['d_model']}"
                                  f"-l{resolved['model']['n_layers']}-lr{resolved['train']['lr']:g}-s{resolved['train']['seed']}-{rid[:6]}")
        variant = ",".join(f"{k}={v}" for k, v in point.items() if k not in GRID_KEYS)  # the extra grid axes
        runs.append({"id": rid, "config": resolved, "variant": variant, "name": mixer_key})
    # mixer by mixer, in grid order (a mixer's runs cost alike; the queue ends on the grid's last mixer)
    names = spec["grid"]["mixer"] if isinstance(spec["grid"]["mixer"], list) else [spec["grid"]["mixer"]]
    order = {"+".join(m) if isinstance(m, list) else m: i for i, m in enumerate(names)}
    runs.sort(key=lambda r: order.get(r["name"], len(order)))
    ids = [r["id"] for r in runs]
    if len(set(ids)) != len(ids):
        raise ValueError("the sweep grid contains duplicate runs")
    return runs


def _curve(run_dir: Path) -> list[list[float]]:
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return []
    recs = [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]
    return [[r["step"], r["loss"]] for r in recs if "loss" in r]


def _row_fields(spec: dict, run: dict) -> dict:
    cfg, m = run["config"], run["config"]["model"]
    return {"sweep": spec["name"], "task": cfg["task"]["name"], "mixer": run["name"],
            "d_model": m["d_model"], "n_layers": m["n_layers"], "lr": cfg["train"]["lr"], "seed": cfg["train"]["seed"],
            "primary_metric": cfg["task_info"]["primary_metric"], "higher_is_better": int(cfg["task_info"]["higher_is_better"]),
            "config": cfg, "run_dir": cfg["run_dir"], "variant": run["variant"]}


def _owner_alive(owner: str) -> bool:
    """Whether the sweep that claimed a run (``host:pid:start``) still runs: a pid check on this host; a sweep
    on another host (a shared file system) counts as alive."""
    host, pid, _ = (owner.split(":") + ["", "", ""])[:3]
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _die_with_parent() -> None:
    """Runs in the worker before exec (Linux): SIGKILL it when the sweep process dies, so a killed
    sweep leaves no orphan training on (the restarted sweep resumes the run from its checkpoint)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _children_cpu_s() -> float:
    """CPU seconds used by finished child processes (0 where the resource module is missing)."""
    try:
        import resource
    except ImportError:
        return 0.0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_sweep(spec: dict, log=print) -> dict[str, int]:
    """Run every not-yet-done grid point, ``workers`` at a time. -> counts {"done", "failed", "skipped"}."""
    spec = load_sweep(spec)
    runs = expand(spec)
    store = Store(spec["db"])
    todo = []
    skipped = 0
    for r in runs:
        if store.status(r["id"]) == "done":
            skipped += 1
        else:
            todo.append(r)
    log(f"sweep {spec['name']!r}: {len(runs)} runs, {skipped} already done, {len(todo)} to run, "
        f"{spec['workers']} worker(s) -> {spec['db']}")
    counts = {"done": 0, "failed": 0, "skipped": skipped}
    # every thread pool a worker may start (torch/OpenMP, MKL, numba's kernels) sized to its share of the cores
    n = str(spec["threads_per_worker"])
    env = dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, NUMBA_NUM_THREADS=n)
    env.pop("WORLD_SIZE", None)
    active: list[tuple[subprocess.Popen, dict, float]] = []
    queue = list(todo)
    t0, cpu0 = time.time(), _children_cpu_s()
    me = f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}"
    elsewhere = 0
    while queue or active:
        while queue and len(active) < spec["workers"]:
            r = queue.pop(0)
            if not store.claim(r["id"], me, _owner_alive, error=None, **_row_fields(spec, r)):
                elsewhere += 1  # done meanwhile, or running in another live sweep on this database: not ours
                continue
            run_dir = Path(r["config"]["run_dir"])
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "sweep_config.json").write_text(json.dumps(r["config"]))
            with open(run_dir / "stderr.log", "w") as err_file:
                proc = subprocess.Popen([sys.executable, "-m", "rnnlab.train.worker", str(run_dir / "sweep_config.json")],
                                        stdout=subprocess.DEVNULL, stderr=err_file, env=env,
                                        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
            active.append((proc, r, time.time()))
        time.sleep(0.1)
        for item in list(active):
            proc, r, started = item
            if proc.poll() is None:
                continue
            active.remove(item)
            run_dir = Path(r["config"]["run_dir"])
            result_path = run_dir / "result.json"
            if proc.returncode == 0 and result_path.exists():
                res = json.loads(result_path.read_text())
                store.upsert(r["id"], status="done", score=res["score"], num_parameters=res["num_parameters"],
                             state_size=res["state_size"], steps=res["steps"], wall_s=res["wall_s"], result=res,
                             curve=_curve(run_dir))
                counts["done"] += 1
                log(f"  done   {run_dir.name}: {res['primary_metric']}={res['score']:.4f} ({res['steps']} steps, "
                    f"{res['wall_s']:.1f}s)  [{time.time() - t0:.0f}s]")
            else:
                err = (run_dir / "stderr.log").read_text()[-4000:] if (run_dir / "stderr.log").exists() else ""
                err = err or f"worker exited with code {proc.returncode}"
                store.upsert(r["id"], status="failed", error=err, wall_s=time.time() - started, curve=_curve(run_dir))
                counts["failed"] += 1
                last = [ln for ln in err.strip().splitlines() if ln.strip()][-1:] or [""]
                log(f"  FAILED {run_dir.name}: {last[0]}")
    store.close()
    counts["skipped"] += elsewhere
    if elsewhere:
        log(f"  {elsewhere} run(s) were done or running in another sweep on {spec['db']} and left to it")
    log(f"sweep {spec['name']!r} finished: {counts['done']} done, {counts['failed']} failed, {counts['skipped']} skipped in "
        f"{time.time() - t0:.0f} s wall, {_children_cpu_s() - cpu0:.0f} s CPU over all worker processes")
    return counts
