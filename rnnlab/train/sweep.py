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
    launcher: local                # or slurm (submitit), ray; `rnnlab sweep --launcher` overrides it
    slurm: {partition: gpu, gpus_per_node: 1, timeout_min: 120}   # rnnlab.train.launchers.SlurmOptions
    ray: {address: auto, num_gpus: 1}                             # rnnlab.train.launchers.RayOptions

Every grid point is resolved (validated) before anything runs, so a bad grid fails at once.
A run's id is the hash of its resolved config: re-running a sweep skips runs already
"done"; unfinished ones resume from their last checkpoint; a run whose process fails is
recorded as "failed" with its error tail and never silently dropped. A run is claimed in the database
before it starts (``Store.claim``): two sweeps on one database share the runs instead of both running them,
and a dead sweep's claims are taken over. A run whose ``result.json`` was written while no sweep watched it
(a SLURM job outlives a killed sweep) is recorded from that file, not run again.

The sweep process is the coordinator for every launcher (rnnlab.train.launchers): it alone writes the
database; the runs write only their own run directories.
"""
from __future__ import annotations

import itertools
import json
import os
import socket
import time
from pathlib import Path

from rnnlab.train.config import config_hash, load_file, merge, resolve
from rnnlab.train.launchers import LAUNCHERS, check_launcher_options, make_launcher
from rnnlab.train.store import Store

__all__ = ["expand", "run_sweep", "load_sweep"]

GRID_KEYS = {"mixer": ("model", "mixer"), "d_model": ("model", "d_model"), "n_layers": ("model", "n_layers"),
             "lr": ("train", "lr"), "seed": ("train", "seed"), "task": ("task", "name"), "pack": ("train", "pack")}
SWEEP_KEYS = ("name", "out_dir", "db", "workers", "threads_per_worker", "grid", "base", "tasks", "mixers", "launcher",
              "slurm", "ray")


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
    spec.setdefault("launcher", "local")
    if spec["launcher"] not in LAUNCHERS:
        raise ValueError(f"sweep launcher must be one of {', '.join(LAUNCHERS)}; got {spec['launcher']!r}")
    for key in ("slurm", "ray"):
        check_launcher_options(key, spec.get(key))
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


def _children_cpu_s() -> float:
    """CPU seconds used by finished child processes (0 where the resource module is missing)."""
    try:
        import resource
    except ImportError:
        return 0.0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _finished(run: dict) -> dict | None:
    """The run's result.json when the run directory holds this run finished (its config.json is this run's), else None."""
    run_dir = Path(run["config"]["run_dir"])
    try:
        config, result = (json.loads((run_dir / f).read_text()) for f in ("config.json", "result.json"))
    except (OSError, json.JSONDecodeError):
        return None
    return result if config_hash(config) == run["id"] else None


def _failure(run_dir: Path, launcher_error: str) -> str:
    """A failed run's error: the tail of its stderr.log, or what the launcher knows (killed, timed out, lost)."""
    err = (run_dir / "stderr.log").read_text()[-4000:] if (run_dir / "stderr.log").exists() else ""
    return err if err.strip() else launcher_error


def run_sweep(spec: dict, log=print) -> dict[str, int]:
    """Run every not-yet-done grid point through the spec's launcher, ``workers`` at a time.
    -> counts {"done", "failed", "skipped"}."""
    spec = load_sweep(spec)
    runs = expand(spec)
    store = Store(spec["db"])
    adopted = store.adopt([r["id"] for r in runs], config_hash)
    if adopted:
        log(f"  {adopted} stored run(s) re-keyed to this version's run ids")
    todo = []
    skipped = 0
    for r in runs:
        if store.status(r["id"]) == "done":
            skipped += 1
        else:
            todo.append(r)
    log(f"sweep {spec['name']!r}: {len(runs)} runs, {skipped} already done, {len(todo)} to run, "
        f"{spec['workers']} worker(s), launcher {spec['launcher']} -> {spec['db']}")
    counts = {"done": 0, "failed": 0, "skipped": skipped}
    launcher = make_launcher(spec) if todo else None
    active: list[tuple[object, dict, float]] = []
    queue = list(todo)
    t0, cpu0 = time.time(), _children_cpu_s()
    me = f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}"
    elsewhere = 0

    def record_done(r: dict, res: dict, note: str = "") -> None:
        run_dir = Path(r["config"]["run_dir"])
        store.upsert(r["id"], status="done", score=res["score"], num_parameters=res["num_parameters"],
                     state_size=res["state_size"], steps=res["steps"], wall_s=res["wall_s"], result=res,
                     curve=_curve(run_dir))
        counts["done"] += 1
        log(f"  done   {run_dir.name}: {res['primary_metric']}={res['score']:.4f} ({res['steps']} steps, "
            f"{res['wall_s']:.1f}s){note}  [{time.time() - t0:.0f}s]")

    try:
        while queue or active:
            batch = []
            while queue and len(active) + len(batch) < launcher.slots:
                r = queue.pop(0)
                if not store.claim(r["id"], me, _owner_alive, error=None, **_row_fields(spec, r)):
                    elsewhere += 1  # done meanwhile, or running in another live sweep on this database: not ours
                    continue
                res = _finished(r)
                if res is not None:  # finished while no sweep watched it
                    record_done(r, res, " (finished while no sweep was running)")
                    continue
                run_dir = Path(r["config"]["run_dir"])
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "stderr.log").unlink(missing_ok=True)  # an earlier attempt's
                (run_dir / "sweep_config.json").write_text(json.dumps(r["config"]))
                batch.append(r)
            if batch:
                handles = launcher.submit([Path(r["config"]["run_dir"]) / "sweep_config.json" for r in batch])
                active += [(h, r, time.time()) for h, r in zip(handles, batch)]
            time.sleep(launcher.poll_s)
            for item in list(active):
                handle, r, started = item
                outcome = launcher.poll(handle)
                if outcome is None:
                    continue
                active.remove(item)
                ok, launcher_error = outcome
                run_dir = Path(r["config"]["run_dir"])
                res = _finished(r) if ok else None
                if res is not None:
                    record_done(r, res)
                else:
                    err = _failure(run_dir, launcher_error or "the run ended without a result.json")
                    store.upsert(r["id"], status="failed", error=err, wall_s=time.time() - started, curve=_curve(run_dir))
                    counts["failed"] += 1
                    last = [ln for ln in err.strip().splitlines() if ln.strip()][-1:] or [""]
                    log(f"  FAILED {run_dir.name}: {last[0]}")
    finally:
        if launcher is not None:
            launcher.close()
        store.close()
    counts["skipped"] += elsewhere
    if elsewhere:
        log(f"  {elsewhere} run(s) were done or running in another sweep on {spec['db']} and left to it")
    cpu = f", {_children_cpu_s() - cpu0:.0f} s CPU over all worker processes" if spec["launcher"] == "local" else ""
    log(f"sweep {spec['name']!r} finished: {counts['done']} done, {counts['failed']} failed, {counts['skipped']} skipped in "
        f"{time.time() - t0:.0f} s wall{cpu}")
    return counts
