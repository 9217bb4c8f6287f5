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
