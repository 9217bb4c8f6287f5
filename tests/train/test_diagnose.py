"""`rnnlab diagnose` on a trained run writes diagnostics.json, and `rnnlab report` then plots the state statistics
(state_stats.png) and tabulates the located layer; a reproduction diagnoses its runs and its "diag.*" claims read the
summary."""
import json
from pathlib import Path

from rnnlab.cli import main
from rnnlab.train.diagnose import summarize
from rnnlab.train.report import make_report
from rnnlab.train.reproduce import Claim, Experiment, _add_diagnostics, evaluate_claims
from rnnlab.train.store import Store
from rnnlab.train.sweep import run_sweep


def test_diagnose_a_sweeps_run_and_report_it(tmp_path, capsys):
    s = {"name": "d", "out_dir": str(tmp_path / "runs"), "workers": 1,
         "grid": {"mixer": ["attention", "mamba"], "task": ["mqar"], "d_model": [16], "n_layers": [2], "lr": [3e-3]},
         "base": {"train": {"steps": 4, "batch_size": 8, "eval_every": 4, "eval_examples": 8, "warmup": 1}},
         "tasks": {"mqar": {"task": {"seq_len": 16, "test_lengths": [16, 32], "num_kv_pairs": 2, "vocab_size": 32}}},
         "mixers": {"attention": {"model": {"mixer_kwargs": {"num_heads": 2}}},
                    "mamba": {"model": {"mixer_kwargs": {"d_state": 4}}}}}
    assert run_sweep(s, log=lambda *_: None)["done"] == 2
    db = s["out_dir"] + "/runs.db"
    runs = {r["mixer"]: r["run_dir"] for r in Store(db).rows()}
    assert main(["diagnose", runs["attention"], "--examples", "3", "--stride", "8", "--probe-positions", "4"]) == 0
    assert "located layer" in capsys.readouterr().out
    rec = json.loads(open(f"{runs['attention']}/diagnostics.json").read())
    assert rec["length"] == 32 and rec["train_len"] == 16 and rec["state_stats"]["positions"] == [0, 8, 16, 24, 32]
    assert len(rec["state_stats"]["layers"]) == 2 and rec["probe"]["positions"] == [0, 8, 16, 24]
    assert len(rec["heads"]["heads"]) == 4
    assert main(["diagnose", runs["mamba"], "--examples", "2", "--probe", "patch", "--probe-positions", "2",
                 "--length", "16"]) == 0
    rec = json.loads(open(f"{runs['mamba']}/diagnostics.json").read())
    assert rec["probe"]["mode"] == "patch" and rec["heads"] == {"heads": []}
    text = make_report(db, tmp_path / "rep").read_text()
    assert "State diagnostics and probes" in text and "state_stats.png" in text
    assert (tmp_path / "rep" / "state_stats.png").stat().st_size > 1000
    assert main(["diagnose", str(tmp_path)]) == 2  # not a run directory

    # the summary a reproduction's claims read, from the attention run's record
    rec = json.loads(open(f"{runs['attention']}/diagnostics.json").read())
    summ = summarize(rec)
    norms = [layer["norm"] for layer in rec["state_stats"]["layers"]]  # positions 0, 8, 16, 24, 32: train_len at 2
    assert summ["norm_growth"] == max(n[-1] / n[2] for n in norms)
    assert (summ["located_layer"], summ["located_position"]) == (rec["probe"]["located"]["layer"],
                                                                  rec["probe"]["located"]["position"])
    assert summ["head_layer"] == rec["heads"]["located"]["layer"]
    # a reproduction diagnoses the runs that have no record yet (mamba's is removed) and keeps the others
    Path(runs["mamba"], "diagnostics.json").unlink()
    rows, seen = Store(db).rows(), []
    _add_diagnostics(rows, {"mqar": {"examples": 2, "probe": "off"}}, log=seen.append)
    assert seen == [f"diagnosing {runs['mamba']}"] and Path(runs["mamba"], "diagnostics.json").exists()
    by = {r["mixer"]: r for r in rows}
    assert by["attention"]["result"]["diagnostics"] == summ and list(by["mamba"]["result"]["diagnostics"]) == ["norm_growth"]
    claim = Claim("head", "mqar", "attention", metric="diag.head_layer", paper=summ["head_layer"], tolerance=0.25)
    exp = Experiment("t", "T", "P", "C", spec=lambda q: {}, claims=(claim,))
    (res,) = evaluate_claims(exp, rows)
    assert res["value"] == summ["head_layer"] and res["verdict"] == "reproduced"
