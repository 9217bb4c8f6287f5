"""The closed-form readout (ModelConfig readout="ridge"): the accumulated ridge solution equals the normal equations
(and scikit-learn's Ridge) in float64; `rnnlab train` fits a reservoir on memory capacity with no gradient step and
says so; a run killed after a checkpoint and resumed refits exactly the uninterrupted run's head; and the memory
capacity metric reproduces Jaeger's bound on a delay line."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rnnlab.models import ModelConfig, SequenceModel
from rnnlab.models.readout import RidgeReadout
from rnnlab.tasks import create_task
from rnnlab.tasks.memory_capacity import MemoryCapacity
from rnnlab.testing import TOLERANCE, assert_close
from rnnlab.train.trainer import train


def test_ridge_equals_the_normal_equations():
    """Σ over three batches, then (X̃ᵀX̃ + λ diag(1, …, 1, 0)) [W b]ᵀ = X̃ᵀY with X̃ = [X, 1], float64 (tol 1e-10), and
    scikit-learn's Ridge (an unpenalized intercept by centering: the same solution)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 6, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(6, 3, generator=g, dtype=torch.float64) + 0.1 * torch.randn(50, 3, generator=g, dtype=torch.float64) + 2.0
    fit, lam = RidgeReadout(6, 3), 0.7
    for part in (slice(0, 17), slice(17, 33), slice(33, 50)):
        fit.add(X[part], Y[part])
    W, b = fit.solve(lam)
    Xa = torch.cat([X, torch.ones(50, 1, dtype=torch.float64)], 1)
    D = torch.diag(torch.tensor([1.0] * 6 + [0.0], dtype=torch.float64))
    ref = torch.linalg.solve(Xa.T @ Xa + lam * D, Xa.T @ Y)
    assert_close(W, ref[:-1].T) and assert_close(b, ref[-1])
    assert int(fit.rows) == 50
    from sklearn.linear_model import Ridge

    sk = Ridge(alpha=lam, fit_intercept=True, solver="cholesky").fit(X.numpy(), Y.numpy())
    assert_close(W, torch.tensor(sk.coef_)) and assert_close(b, torch.tensor(sk.intercept_))


def test_config_rules():
    base = dict(mixer="deep_res_esn", d_model=8, n_layers=1, input_dim=1, head="regress", out_dim=2, readout="ridge")
    with pytest.raises(ValueError, match="mlp=None"):
        ModelConfig(**base)
    with pytest.raises(ValueError, match="input_dim <= d_model"):
        ModelConfig(**{**base, "mlp": None, "input_dim": 9})
    with pytest.raises(ValueError, match="readout must be one of"):
        ModelConfig(**{**base, "mlp": None, "readout": "lstsq"})
    with pytest.raises(ValueError, match="untrained mixers"):
        SequenceModel(ModelConfig(**{**base, "mlp": None, "mixer": "lru"}))
    m = SequenceModel(ModelConfig(**{**base, "mlp": None}))
    assert [n for n, _ in m.named_parameters()] == ["head.weight", "head.bias"]


def _mc_config(run_dir, **train):
    return {"task": {"name": "memory_capacity", "seq_len": 400, "max_delay": 20, "test_lengths": [400]},
            "model": {"mixer": "deep_res_esn", "d_model": 40, "n_layers": 1, "mlp": None, "readout": "ridge",
                      "mixer_kwargs": {"layers": 1, "orthogonal": "cycle", "alpha": 0.95, "beta": 0.05, "rho": 0.9, "input_scaling": 0.1}},
            "train": {"steps": 4, "batch_size": 2, "eval_every": 2, "ckpt_every": 2, "eval_examples": 2, "ridge": 1e-8,
                      "progress": False, **train},
            "run_dir": str(run_dir)}


def test_train_fits_the_readout_in_closed_form(tmp_path):
    res = train(_mc_config(tmp_path))
    assert res["readout"] == {"fit": "closed-form ridge regression (no gradient steps)", "ridge": 1e-8, "rows": 4 * 2 * (400 - 20)}
    assert res["num_parameters"] == 40 * 20 + 20  # the head only
    assert res["score"] > 18, res["metrics"]  # a 40-unit near-linear cyclic reservoir recalls ~all 20 delays
    recs = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "eval" in r] == [2, 4] and not any("loss" in r for r in recs)


def test_refit_after_kill_and_resume_is_identical(tmp_path, monkeypatch):
    """Killed after the step-2 checkpoint (the third batch raises), resumed: the head equals the uninterrupted run's
    bit for bit (the float64 sums travel in the checkpoint)."""
    full = train(_mc_config(tmp_path / "full"))
    real = MemoryCapacity.train_batch

    def dies_at_step_2(self, batch_size, seed, step, rows=None):
        if step == 2:
            raise KeyboardInterrupt("killed")
        return real(self, batch_size, seed, step, rows)

    monkeypatch.setattr(MemoryCapacity, "train_batch", dies_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        train(_mc_config(tmp_path / "killed"))
    monkeypatch.setattr(MemoryCapacity, "train_batch", real)
    resumed = train(_mc_config(tmp_path / "killed"), resume=True)
    a, b = load_file(tmp_path / "full/checkpoint.safetensors"), load_file(tmp_path / "killed/checkpoint.safetensors")
    for k in ("model.head.weight", "model.head.bias", "model.ridge.gram", "model.ridge.moment"):
        assert torch.equal(a[k], b[k]), k
    assert resumed["metrics"] == full["metrics"]


def test_ridge_sums_read_each_process_shards_of_the_step(tmp_path, monkeypatch):
    """The ridge branch reads its rows as the gradient step does (rnnlab.train.packing.train_shard, the rows= path):
    with grad_accum=1 the sums are exactly those of the whole batch of every step (what the trainer summed before it
    read shards), bit for bit; grad_accum=2 reads the two halves and gives the same sums up to float32 rounding (the
    reservoir computes its features in float32, and a batch of one row rounds differently from a batch of two:
    measured 2e-9 absolute on the features, 8e-10 relative on the sums)."""
    from rnnlab.train.config import resolve

    full = train(_mc_config(tmp_path / "one"))
    _, task, model_cfg, tc = resolve(_mc_config(tmp_path / "ref"))
    torch.manual_seed(tc.seed)
    ref = SequenceModel(model_cfg)
    for step in range(tc.steps):
        whole = task.train_batch(tc.batch_size, tc.seed, step)
        ref.accumulate(whole.inputs, whole.targets)
    one = load_file(tmp_path / "one/checkpoint.safetensors")
    for k in ("gram", "moment", "rows"):
        assert torch.equal(one[f"model.ridge.{k}"], getattr(ref.ridge, k)), k

    read, real = [], MemoryCapacity.train_batch
    monkeypatch.setattr(MemoryCapacity, "train_batch",
                        lambda self, batch_size, seed, step, rows=None: read.append((step, rows)) or real(self, batch_size, seed, step, rows))
    accum2 = train(_mc_config(tmp_path / "two", grad_accum=2))
    assert read == [(s, slice(m, m + 1)) for s in range(4) for m in range(2)]  # batch_size 2: one row per micro-batch
    two = load_file(tmp_path / "two/checkpoint.safetensors")
    assert torch.equal(two["model.ridge.rows"], one["model.ridge.rows"]) and accum2["readout"] == full["readout"]
    for k in ("gram", "moment"):
        assert_close(two[f"model.ridge.{k}"], one[f"model.ridge.{k}"], tol=TOLERANCE[torch.float32], name=k)
    assert accum2["score"] == pytest.approx(full["score"], rel=1e-6)


def test_ridge_on_two_processes_equals_one_process(tmp_path, env1):
    """2 gloo processes (torchrun, train.parallel=ddp) each sum their rows of every step; the fit all-reduces the sums:
    the readout of one process on the same global batches, up to float rounding (float32 features of a batch of one
    row against two; float64 sums in another order)."""
    import subprocess

    from tests.train.conftest import PY

    cfg = {k: v for k, v in _mc_config(tmp_path).items() if k != "run_dir"}
    (tmp_path / "mc.json").write_text(json.dumps(cfg))
    done = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rnnlab.cli",
                           "train", "--config", str(tmp_path / "mc.json"), "--run-dir", str(tmp_path / "two")],
                          env=env1, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    full = train(_mc_config(tmp_path / "one"))
    res = json.loads((tmp_path / "two/result.json").read_text())
    assert res["readout"] == full["readout"] and res["score"] == pytest.approx(full["score"], rel=1e-6)
    a, b = load_file(tmp_path / "one/checkpoint.safetensors"), load_file(tmp_path / "two/checkpoint.safetensors")
    assert int(b["model.ridge.rows"]) * 2 == int(a["model.ridge.rows"])  # each process's own rows
    for k in ("model.head.weight", "model.head.bias"):
        assert_close(b[k], a[k], name=k)


def test_memory_capacity_of_a_delay_line_is_its_length():
    """Jaeger's MC on a reservoir that is a pure delay line of N taps (a linear reservoir with full-rank controllability):
    MC = N to roundoff for delays up to N, and r² = 0 beyond (max_delay = N + 5)."""
    N, task = 12, create_task("memory_capacity", seq_len=3000, max_delay=17)

    def rows(batch):  # the delay line's state, u_{t−k} for k = 0..N, at the scored positions
        u = batch.inputs[0, :, 0]
        feats = torch.stack([torch.nn.functional.pad(u, (k, 0))[: u.shape[0]] for k in range(N + 1)], -1)
        keep = ~torch.isnan(batch.targets[0]).any(-1)
        return torch.cat([feats[keep].double(), torch.ones(int(keep.sum()), 1, dtype=torch.float64)], 1), batch.targets[0][keep]

    X, Y = rows(task.train_batch(1, 0, 0))
    W = torch.linalg.lstsq(X, Y.double()).solution
    Xt, Yt = rows(next(task.test_batches(3000, 1, 1, 0)))
    m = task.finalize(task.metric_sums((Xt @ W).float()[None], Yt[None]))
    assert m["mc"] == pytest.approx(N, abs=0.05) and m["mc@1"] == pytest.approx(1.0, abs=1e-5)
    assert np.isfinite(m["nrmse"])


def test_sweep_report_says_the_readout_was_fitted_in_closed_form(tmp_path):
    from rnnlab.train.report import make_report
    from rnnlab.train.sweep import run_sweep

    cfg = _mc_config(tmp_path)
    spec = {"name": "r", "out_dir": str(tmp_path / "runs"), "workers": 1,
            "grid": {"mixer": ["deep_res_esn"], "task": ["memory_capacity"], "d_model": [40], "n_layers": [1], "lr": [1e-3]},
            "base": {"task": {k: v for k, v in cfg["task"].items() if k != "name"},
                     "model": {k: v for k, v in cfg["model"].items() if k not in ("mixer", "d_model", "n_layers")},
                     "train": cfg["train"]}}
    assert run_sweep(spec, log=lambda *_: None)["done"] == 1
    text = make_report(spec["out_dir"] + "/runs.db", tmp_path / "rep").read_text()
    assert "deep_res_esn (closed-form ridge readout, λ = 1e-08, 3040 rows)" in text
    with pytest.raises(ValueError, match="pack"):
        train({**_mc_config(tmp_path / "p"), "train": {**cfg["train"], "pack": True}})
    with pytest.raises(ValueError, match="fsdp"):  # FSDP shards the head that the fit writes whole (crashed before)
        train({**_mc_config(tmp_path / "f"), "train": {**cfg["train"], "parallel": "fsdp"}})
