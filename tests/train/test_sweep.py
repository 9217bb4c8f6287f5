"""Sweeps into SQLite: parallel runs, failures recorded with their error, re-runs skip finished
runs (also after the sweep process itself was killed, under every launcher), and the report reads the database."""
import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from rnnlab.train.report import aggregate, make_report
from rnnlab.train.store import Store
from rnnlab.train.suite import pick_mixers, suite_spec
from rnnlab.train.sweep import expand, load_sweep, run_sweep
from tests.train.conftest import PY


def spec(tmp_path, mixers=("attention", "sliding_attention"), lrs=(1e-3, 3e-3)):
    return {
        "name": "t", "out_dir": str(tmp_path / "runs"), "workers": 2,
        "grid": {"mixer": list(mixers), "task": ["parity"], "d_model": [16], "n_layers": [1], "lr": list(lrs)},
        "base": {"train": {"steps": 6, "batch_size": 8, "eval_every": 6, "eval_examples": 16, "warmup": 2}},
        "tasks": {"parity": {"task": {"max_len": 12, "test_lengths": [12, 24]}}},
        "mixers": {"attention": {"model": {"mixer_kwargs": {"num_heads": 2}}},
                   "sliding_attention": {"model": {"mixer_kwargs": {"num_heads": 3, "window": 4}}}},  # 16 % 3: fails
    }


def test_sweep_records_done_and_failed_and_skips_on_rerun(tmp_path):
    s = spec(tmp_path)
    counts = run_sweep(s, log=lambda *_: None)
    assert counts == {"done": 2, "failed": 2, "skipped": 0}
    rows = Store(s["out_dir"] + "/runs.db").rows()
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(rows) == 4 and {r["mixer"] for r in failed} == {"sliding_attention"}
    assert all("divisible" in r["error"] for r in failed)
    done_before = {r["id"]: r["updated"] for r in rows if r["status"] == "done"}
    time.sleep(1.1)
    counts = run_sweep(s, log=lambda *_: None)
    assert counts["skipped"] == 2 and counts["done"] == 0 and counts["failed"] == 2
    after = {r["id"]: r["updated"] for r in Store(s["out_dir"] + "/runs.db").rows(status="done")}
    assert after == done_before  # finished results untouched

    best = aggregate(Store(s["out_dir"] + "/runs.db").rows())
    assert len(best) == 1 and best[0]["mixer"] == "attention"  # best of the two learning rates
    md = make_report(s["out_dir"] + "/runs.db", tmp_path / "rep")
    text = md.read_text()
    assert "## parity" in text and "Failed runs" in text and "acc@24" in text
    for png in ("state_size.png", "length.png", "loss.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 1000


ENGINE = {"slurm": "submitit", "ray": "ray"}
LAUNCHER_OPTIONS = {"local": {}, "slurm": {"slurm": {"cluster": "local", "timeout_min": 10}},  # submitit's local executor
                    "ray": {"ray": {"init": {"num_cpus": 2, "object_store_memory": 80_000_000}}}}  # Ray on this machine


def _done_count(db) -> int:
    try:
        return sqlite3.connect(str(db)).execute("SELECT count(*) FROM runs WHERE status='done'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.parametrize("launcher", ["local", "slurm", "ray"])
def test_killed_sweep_restarts_keeping_finished_results(tmp_path, env1, launcher):
    """The sweep process (the coordinator) is SIGKILLed after its first finished run and started again: finished
    runs are kept (not run again), the rest are resubmitted and resume; the database is intact and holds each run
    once. Under slurm the jobs outlive the coordinator (as SLURM jobs do); under local and ray they die with it."""
    if launcher in ENGINE:
        pytest.importorskip(ENGINE[launcher], reason=f"--launcher {launcher} needs the rnnlab[{launcher}] extra")
    s = {**spec(tmp_path, mixers=("attention",), lrs=(1e-3,)), "launcher": launcher, **LAUNCHER_OPTIONS[launcher]}
    s["workers"] = 1
    s["grid"]["train.steps"] = [40, 400, 401]  # one short run: submitit's local executor runs the array at once
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(s))
    db = tmp_path / "runs" / "runs.db"
    proc = subprocess.Popen([PY, "-m", "rnnlab.cli", "sweep", str(f), "--no-report"], env=env1,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and _done_count(db) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the coordinator dies; its current runs are orphaned (or die with it)
    proc.wait()
    first = {r["id"]: r["updated"] for r in Store(db).rows(status="done")}
    assert 1 <= len(first) < 3
    time.sleep(1.1)
    counts = run_sweep(load_sweep(str(f)), log=lambda *_: None)
    rows = Store(db).rows()
    assert counts["skipped"] == len(first) and counts["done"] == 3 - len(first) and counts["failed"] == 0
    assert all(r["status"] == "done" for r in rows) and len(rows) == 3 and len({r["id"] for r in rows}) == 3
    assert all(r["updated"] == first[r["id"]] for r in rows if r["id"] in first)
    con = sqlite3.connect(str(db))
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for r in rows:  # every run trained to its end, each logged step once
        recs = [json.loads(ln) for ln in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        logged = [rec["step"] for rec in recs if "loss" in rec]
        n = r["config"]["train"]["steps"]
        assert logged == [*range(10, n + 1, 10), *([n] if n % 10 else [])] and r["steps"] == n, logged


def test_importing_rnnlab_does_not_import_the_engines():
    """ray and submitit are optional extras, imported only by the launcher that uses them."""
    code = ("import sys, rnnlab, rnnlab.cli, rnnlab.train.sweep, rnnlab.train.launchers, rnnlab.train.worker; "
            "bad = {'ray', 'submitit'} & set(sys.modules); assert not bad, bad")
    subprocess.run([PY, "-c", code], check=True)


def test_bad_sweep_fails_before_running(tmp_path):
    s = spec(tmp_path)
    s["grid"]["mixer"] = ["attention", "nope"]
    with pytest.raises(ValueError, match="valid choices"):
        run_sweep(s, log=lambda *_: None)
    assert not (tmp_path / "runs" / "runs.db").exists()
    with pytest.raises(ValueError, match="valid grid keys"):
        load_sweep({"grid": {"mixer": ["lstm"], "task": ["mqar"], "width": [3]}})


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_non_positive_workers_are_rejected_instead_of_hanging(tmp_path, workers):
    s = spec(tmp_path)
    s["workers"] = workers
    with pytest.raises(ValueError, match="workers must be a positive int"):
        run_sweep(s, log=lambda *_: None)
    with pytest.raises(ValueError, match="threads_per_worker must be a positive int"):
        load_sweep({**spec(tmp_path), "threads_per_worker": 0})


def test_packing_can_be_turned_on_in_a_sweep(tmp_path):
    s = spec(tmp_path, mixers=("attention",), lrs=(1e-3,))
    s["base"]["train"]["pack"] = True
    s["tasks"]["parity"]["task"]["min_len"] = 3
    counts = run_sweep(s, log=lambda *_: None)
    assert counts["done"] == 1
    (run,) = expand(load_sweep(s))
    assert run["config"]["train"]["pack"] is True


def test_suite_picks_one_mixer_per_family():
    chosen = pick_mixers()
    from rnnlab.layers.registry import available_mixers, mixer_info

    fams = {mixer_info(m).family for m in available_mixers()} - {"attention", "nonlinear", "other"}
    assert chosen[:2] == ["attention", "sliding_attention"] and "lstm" in chosen
    assert {mixer_info(m).family for m in chosen[3:]} == fams and len(chosen) == 3 + len(fams)
    runs = expand(suite_spec(quick=True, mixers=chosen))
    assert {r["config"]["task"]["name"] for r in runs} == {"mqar", "parity", "selective_copy"}
    assert len(runs) == 4 * len(chosen)  # parity at two learning rates
    assert [r["config"]["model"]["mixer"] for r in runs[:4]] == ["attention"] * 4  # queued mixer by mixer


def test_task_grid_axes_replace_global_ones():
    s = {"grid": {"mixer": ["attention"], "task": ["parity", "mqar"], "lr": [1e-3], "seed": [0, 1]},
         "tasks": {"parity": {"grid": {"lr": [1e-3, 2e-2]}, "train": {"steps": 3}}},
         "mixers": {"attention": {"model": {"mixer_kwargs": {"num_heads": 2}}}}}
    runs = expand(load_sweep(s))
    got = sorted((r["config"]["task"]["name"], r["config"]["train"]["lr"], r["config"]["train"]["seed"]) for r in runs)
    assert got == sorted([("mqar", 1e-3, 0), ("mqar", 1e-3, 1)] + [("parity", lr, sd) for lr in (1e-3, 2e-2) for sd in (0, 1)])
    assert all(r["config"]["train"]["steps"] == 3 for r in runs if r["config"]["task"]["name"] == "parity")
    s["tasks"]["parity"]["grid"] = {"task": ["mqar"]}
    with pytest.raises(ValueError, match="tasks.parity.grid"):
        load_sweep(s)


def test_example_files_resolve():
    from rnnlab.train.config import load_file, resolve

    runs = expand(load_sweep("examples/sweep_small.yaml"))
    assert len(runs) >= 4
    resolved, task, model_cfg, _ = resolve(load_file("examples/train_mqar.toml"))
    assert task.name == "mqar" and model_cfg.vocab_size == 128 and resolved["train"]["target"] == 0.99


def test_two_identical_sweeps_on_one_database_share_the_runs(tmp_path, env1):
    """Started together, two copies of one sweep claim runs in the database: every run is run and reported
    done by exactly one of them; the other counts it as skipped."""
    s = spec(tmp_path, mixers=("attention",), lrs=(1e-3, 2e-3, 3e-3, 4e-3))
    s["workers"] = 1
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(s))
    procs = [subprocess.Popen([PY, "-m", "rnnlab.cli", "sweep", str(f), "--no-report"], env=env1, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    done_lines = [ln for out in outs for ln in out.splitlines() if ln.startswith("  done")]
    assert len(done_lines) == 4 and len(set(done_lines)) == 4, outs  # each run reported done once
    finals = [next(ln for ln in out.splitlines() if " done, " in ln and "skipped ->" in ln) for out in outs]
    done = [int(x.split(" done")[0]) for x in finals]
    skipped = [int(x.split(" failed, ")[1].split(" skipped")[0]) for x in finals]
    assert sum(done) == 4 and [d + k for d, k in zip(done, skipped)] == [4, 4], finals
    rows = Store(tmp_path / "runs" / "runs.db").rows()
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)


def test_a_dead_sweeps_claim_is_taken_over(tmp_path):
    s = spec(tmp_path, mixers=("attention",), lrs=(1e-3,))
    (run,) = expand(load_sweep(s))
    store = Store(tmp_path / "runs" / "runs.db")
    assert store.claim(run["id"], "elsewhere:1:0", lambda o: True)      # another sweep holds it...
    assert not store.claim(run["id"], "me:2:0", lambda o: True)         # ...and is alive: not ours
    store.close()
    counts = run_sweep(s, log=lambda *_: None)  # this host has no such owner process: taken over
    assert counts == {"done": 0, "failed": 0, "skipped": 1}  # owner "elsewhere" is another host: left to it
    store = Store(tmp_path / "runs" / "runs.db")
    import socket

    store.upsert(run["id"], owner=f"{socket.gethostname()}:999999999:0")  # a dead process on this host
    store.close()
    assert run_sweep(s, log=lambda *_: None)["done"] == 1


def test_grid_axes_per_task_and_per_mixer_and_variants(tmp_path):
    """A task's grid axes replace the global ones, a mixer's replace both; `<mixer>@<tag>` is a variant with
    its own settings; a dotted key sets any config field and names the run's variant."""
    s = spec(tmp_path, mixers=("attention", "lstm", "mamba@neg"), lrs=(1e-3,))
    s["mixers"]["lstm"] = {"grid": {"lr": [3e-3, 1e-2]}}
    s["mixers"]["mamba@neg"] = {"model": {"mixer_kwargs": {"negative_eigenvalues": True}}}
    s["grid"]["model.embedding_init"] = ["unit", "gpt2"]
    runs = expand(load_sweep(s))
    got = sorted((r["name"], r["config"]["train"]["lr"], r["config"]["model"]["embedding_init"]) for r in runs)
    assert got == sorted([(m, lr, e) for m, lrs in (("attention", [1e-3]), ("lstm", [3e-3, 1e-2]), ("mamba@neg", [1e-3]))
                          for lr in lrs for e in ("unit", "gpt2")])
    neg = [r for r in runs if r["name"] == "mamba@neg"]
    assert all(r["config"]["model"]["mixer"] == "mamba" and r["config"]["model"]["mixer_kwargs"]["negative_eigenvalues"]
               for r in neg)
    assert {r["variant"] for r in runs} == {"model.embedding_init=unit", "model.embedding_init=gpt2"}
    with pytest.raises(ValueError, match="unknown mixers.lstm.grid key"):
        expand(load_sweep({**s, "mixers": {**s["mixers"], "lstm": {"grid": {"mixer": ["gru"]}}}}))


def test_state_tracking_sweep_file_resolves():
    """examples/sweep_state_tracking.yaml (issue 22's comparison): every point resolves, every mixer on every task."""
    runs = expand(load_sweep("examples/sweep_state_tracking.yaml"))
    pairs = {(r["config"]["task"]["name"], r["config"]["model"]["mixer"]) for r in runs}
    assert len(runs) == 108 and len(pairs) == 54
    s5 = [r for r in runs if r["config"]["task"]["name"] == "word_problem"]
    assert all(r["config"]["task"]["group"] == "S5" and r["config"]["task"]["test_lengths"] == [16, 64, 128] for r in s5)


def test_a_setting_added_at_its_default_keeps_stored_runs_found(tmp_path):
    """Run ids leave out settings at their defaults, and a sweep re-keys runs stored under an older id of the
    same identity (here: the id scheme that hashed every default), marking a second stored copy as duplicate:
    results stored before a setting existed stay found and are not run again."""
    import hashlib

    from rnnlab.train.config import RUNTIME_KEYS, config_hash
    from rnnlab.train.store import Store

    s = spec(tmp_path, mixers=("attention",), lrs=(1e-3,))
    s["base"]["train"]["steps"] = 4
    assert run_sweep(s, log=lambda *_: None)["done"] == 1
    (run,) = expand(load_sweep(s))
    old = {k: run["config"][k] for k in ("task", "model", "train")}  # the old scheme: every default hashed
    old["train"] = {k: v for k, v in old["train"].items() if k not in RUNTIME_KEYS}
    old_id = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:12]
    assert old_id != run["id"]
    db = tmp_path / "runs" / "runs.db"
    store = Store(db)
    row = store.rows()[0]
    store.db.execute("UPDATE runs SET id = ? WHERE id = ?", (old_id, run["id"]))
    store.upsert("0ld0ld0ld0ld", status="done", config=row["config"], task=row["task"], mixer=row["mixer"])
    store.db.commit()
    store.close()
    counts = run_sweep(s, log=lambda *_: None)
    assert counts == {"done": 0, "failed": 0, "skipped": 1}
    rows = {r["id"]: r["status"] for r in Store(db).rows()}
    assert rows[run["id"]] == "done" and sorted(rows.values()) == ["done", "duplicate"]  # one re-keyed, one marked
    # a setting at its default is not part of the identity; a changed one is
    cfg = run["config"]
    from rnnlab.train.config import TrainConfig

    assert config_hash({**cfg, "train": {**cfg["train"], "beta2": TrainConfig.beta2}}) == run["id"]
    assert config_hash({**cfg, "train": {**cfg["train"], "beta2": 0.5}}) != run["id"]
    assert config_hash({**cfg, "train": {k: v for k, v in cfg["train"].items() if k != "beta2"}}) == run["id"]
