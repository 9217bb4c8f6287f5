"""The train / sweep / report / suite sub-commands are wired into `rnnlab`."""
import json

from rnnlab.cli import build_parser, main
from tests.train.conftest import TINY_ARGS


def test_subcommands_registered():
    p = build_parser()
    for cmd in (["train", "--task", "mqar"], ["sweep", "f.yaml"], ["report"], ["suite", "--quick"]):
        assert callable(p.parse_args(cmd).func)


def test_train_command_and_bad_mixer(tmp_path, capsys):
    assert main(["train", *TINY_ARGS, "--steps", "3", "--run-dir", str(tmp_path / "r"), "train.eval_every=3"]) == 0
    assert json.loads((tmp_path / "r" / "result.json").read_text())["steps"] == 3
    assert main(["train", "--task", "parity", "--mixer", "nope", "--run-dir", str(tmp_path / "bad")]) == 2
    assert "valid choices" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_report_missing_db(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none.db")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_suite_command_runs_and_reports(tmp_path, monkeypatch, capsys):
    """`rnnlab suite` end to end on a one-run stand-in for its task table (the real one takes minutes)."""
    import rnnlab.train.suite as suite

    monkeypatch.setattr(suite, "QUICK_TASKS", {"parity": {"task": {"max_len": 8, "test_lengths": [8, 16]},
                                                          "train": {"steps": 4, "eval_every": 4, "eval_examples": 8}}})
    out = tmp_path / "suite"
    assert main(["suite", "--mixers", "attention", "--workers", "1", "--out-dir", str(out)]) == 0
    text = (out / "report" / "report.md").read_text()
    assert "parity acc@16" in text and "1 done, 0 failed" in capsys.readouterr().out


def test_zero_or_negative_workers_exit_2_with_a_message(tmp_path, capsys):
    import yaml

    spec = {"name": "t", "out_dir": str(tmp_path / "runs"), "grid": {"mixer": ["attention"], "task": ["parity"]}}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec))
    for workers in ("0", "-1"):
        assert main(["sweep", str(f), "--workers", workers]) == 2
        assert "workers must be a positive int" in capsys.readouterr().err
    assert main(["suite", "--mixers", "attention", "--workers", "0", "--out-dir", str(tmp_path / "suite")]) == 2
    assert "workers must be a positive int" in capsys.readouterr().err


def test_a_config_file_cannot_write_outside_the_runs_root(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"run_dir": "../elsewhere"}))
    assert main(["train", *TINY_ARGS, "--config", str(f), "--steps", "2"]) == 2
    assert "outside runs/" in capsys.readouterr().err and not (tmp_path.parent / "elsewhere").exists()
    assert main(["train", *TINY_ARGS, "--steps", "2", "train.eval_every=2", "--run-dir", str(tmp_path / "out")]) == 0
    f.write_text(json.dumps({"run_dir": "runs/inside"}))
    assert main(["train", *TINY_ARGS, "--config", str(f), "--steps", "2", "train.eval_every=2"]) == 0
    assert (tmp_path / "runs" / "inside" / "result.json").exists()
