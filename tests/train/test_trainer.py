"""Trainer: schedule, parameter groups, determinism, early stop, bf16, config validation."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rnnlab.train.config import apply_overrides, load_file as load_cfg, parse_value, resolve
from rnnlab.train.trainer import get_lr, train
from tests.train.conftest import tiny_config


def test_get_lr_warmup_then_cosine():
    lr = lambda s: get_lr(s, 1.0, 10, 110, 0.1)  # noqa: E731
    assert lr(0) == pytest.approx(0.1) and lr(9) == pytest.approx(1.0)
    assert lr(10) == pytest.approx(1.0) and lr(60) == pytest.approx(0.55) and lr(110) == pytest.approx(0.1)
    assert all(lr(s) >= lr(s + 1) for s in range(10, 120))


def test_param_groups_cover_every_parameter_once():
    from rnnlab import ModelConfig, SequenceModel

    m = SequenceModel(ModelConfig(mixer="attention", vocab_size=10, d_model=16, n_layers=1, mixer_kwargs={"num_heads": 2}))
    groups = m.param_groups(0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert all(id(p) in no_decay for n, p in m.named_parameters() if p.dim() < 2)


def test_deterministic_given_seed(tmp_path):
    a = train(tiny_config(tmp_path / "a"))
    b = train(tiny_config(tmp_path / "b"))
    assert a["metrics"] == b["metrics"]
    wa, wb = load_file(tmp_path / "a/checkpoint.safetensors"), load_file(tmp_path / "b/checkpoint.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    train(tiny_config(tmp_path / "c", seed=1))
    wc = load_file(tmp_path / "c/checkpoint.safetensors")
    assert not torch.equal(wa["model.head.weight"], wc["model.head.weight"])


def test_run_dir_contents(tmp_path):
    res = train(tiny_config(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model"]["vocab_size"] == 2 and cfg["train"]["lr"] == 1e-3 and cfg["task"]["min_len"] == 3
    recs = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in recs) and [r["step"] for r in recs if "eval" in r] == [6, 12]
    assert set(res["metrics"]) == {"12", "24"} and res["steps"] == 12 and res["num_parameters"] > 0
    assert json.loads((tmp_path / "result.json").read_text())["score"] == res["score"]


def test_early_stop_at_target(tmp_path):
    res = train(tiny_config(tmp_path, steps=30, target=0.0))  # any accuracy reaches 0
    assert res["stopped_early"] and res["steps"] == 6


def test_bf16_autocast_runs(tmp_path):
    res = train(tiny_config(tmp_path, steps=4, bf16=True, eval_every=4))
    assert math.isfinite(res["metrics"]["12"]["loss"])


def test_overrides_and_files(tmp_path):
    cfg = apply_overrides({"train": {}}, ["train.lr=3e-3", "task.num_kv_pairs=8", "task.test_lengths=[64,128]",
                                          "model.mixer_kwargs.num_heads=2", "train.bf16=true"])
    assert cfg["train"] == {"lr": 3e-3, "bf16": True} and cfg["task"] == {"num_kv_pairs": 8, "test_lengths": [64, 128]}
    assert cfg["model"]["mixer_kwargs"] == {"num_heads": 2}
    assert parse_value("1e-3") == 1e-3 and parse_value("lstm") == "lstm" and parse_value("null") is None
    with pytest.raises(ValueError, match="valid sections"):
        apply_overrides({}, ["optim.lr=1"])
    (tmp_path / "c.toml").write_text('[task]\nname = "mqar"\n[train]\nlr = 0.003\n')
    (tmp_path / "c.yaml").write_text("task: {name: mqar}\ntrain: {lr: 0.003}\n")
    assert load_cfg(tmp_path / "c.toml") == load_cfg(tmp_path / "c.yaml")


@pytest.mark.parametrize("change, match", [
    ({"task": {"name": "nope"}}, "valid choices: .*parity"),
    ({"task": {"name": "parity", "modulus": 3}}, "valid options: "),
    ({"task": {"name": "parity", "test_lengths": [0]}}, "positive|impossible|>="),
    ({"model": {"mixer": "nope"}}, "valid choices: .*attention"),
    ({"model": {"dim": 3}}, "valid fields: .*d_model"),
    ({"train": {"learning_rate": 3}}, "valid options: .*lr"),
    ({"task": {"name": "mqar", "num_kv_pairs": 8, "test_lengths": [20]}}, "impossible"),
    ({"task": {"name": "bytes_lm", "corpus": "/no/such/dir"}}, "does not exist"),
])
def test_bad_configs_fail_before_training(tmp_path, change, match):
    cfg = tiny_config(tmp_path / "run")
    for k, v in change.items():
        cfg[k] = v if k == "task" else {**cfg[k], **v}
    with pytest.raises(ValueError, match=match):
        resolve(cfg)
    assert not (tmp_path / "run").exists()
