"""Checkpoints survive truncation and corruption: checksum on load, the previous one kept as a fallback."""
import pytest
import torch

from rnnlab.train.checkpoint import CorruptCheckpoint, atomic_write, load_checkpoint, load_latest, previous_path, save_checkpoint


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 3)


def test_round_trip_and_previous_kept(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    m = _model(0)
    opt = torch.optim.AdamW(m.parameters())
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    save_checkpoint(path, m, opt, 5, {"best": 0.5})
    save_checkpoint(path, _model(1), None, 10)
    assert previous_path(path).exists()
    dst = _model(2)
    assert load_checkpoint(previous_path(path), dst, torch.optim.AdamW(dst.parameters()))[0] == 5
    assert torch.equal(dst.weight, m.weight)
    assert load_latest(path, _model(3))[0] == 10
    assert not list(tmp_path.glob("*.tmp")), "no temporary file is left behind"


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "empty"])
def test_corrupt_newest_falls_back_to_previous(tmp_path, damage, caplog):
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, _model(0), None, 5)
    save_checkpoint(path, _model(1), None, 10)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "overwrite":
        data[-8:] = b"\xff" * 8  # tensor bytes, the header still parses
    else:
        data = b""
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint):
        load_checkpoint(path, _model(2))
    dst = _model(2)
    with caplog.at_level("WARNING"):
        step, _ = load_latest(path, dst)
    assert step == 5 and torch.equal(dst.weight, _model(0).weight)
    assert "previous checkpoint" in caplog.text
    previous_path(path).write_bytes(b"garbage")
    with pytest.raises(CorruptCheckpoint, match="no good checkpoint"):
        load_latest(path, _model(2))


def test_atomic_write_replaces_whole_files(tmp_path):
    p = tmp_path / "config.json"
    atomic_write(p, "{}")
    atomic_write(p, '{"a": 1}')
    assert p.read_text() == '{"a": 1}' and not list(tmp_path.glob(".*tmp"))
    assert load_latest(tmp_path / "none.safetensors", _model(0)) is None


def test_resume_survives_a_corrupt_checkpoint_an_empty_config_and_a_partial_metrics_line(tmp_path):
    from rnnlab.train.trainer import train
    from tests.train.conftest import tiny_config

    full = train(tiny_config(tmp_path / "full", steps=12))
    run = tmp_path / "run"
    cfg = tiny_config(run, steps=12)
    train(cfg)
    # the damage a kill can leave: the newest checkpoint overwritten, config.json empty, half a metrics line
    ck = run / "checkpoint.safetensors"
    data = bytearray(ck.read_bytes())
    data[-16:] = b"\0" * 16
    ck.write_bytes(bytes(data))
    (run / "config.json").write_text("")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "loss"')
    resumed = train(cfg, resume=True)  # falls back to the step-6 checkpoint and retrains 6..12
    assert resumed["score"] == full["score"] and resumed["steps"] == 12
    lines = (run / "metrics.jsonl").read_text().splitlines()
    import json

    assert all(json.loads(ln) for ln in lines)
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 12


def test_a_finished_run_is_not_replaced_without_resume_or_overwrite(tmp_path):
    from rnnlab.train.trainer import train
    from tests.train.conftest import tiny_config

    cfg = tiny_config(tmp_path / "r", steps=6)
    first = train(cfg)
    with pytest.raises(ValueError, match="holds a finished run"):
        train(cfg)
    assert train(cfg, resume=True)["score"] == first["score"]
    assert train(cfg, overwrite=True)["score"] == first["score"]


def test_a_second_writer_of_a_run_directory_is_refused(tmp_path):
    import fcntl

    from rnnlab.train.trainer import train
    from tests.train.conftest import tiny_config

    run = tmp_path / "r"
    run.mkdir()
    with open(run / ".lock", "a+") as held:  # another process holds the directory
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        p = ctx.Process(target=_try_train, args=(str(run), q))
        p.start()
        p.join(120)
        assert "being written by another process" in q.get(timeout=5)
    assert train(tiny_config(run, steps=2))["steps"] == 2  # free again once the holder let go


def _try_train(run_dir, q):
    from rnnlab.train.trainer import RunDirInUse, train
    from tests.train.conftest import tiny_config

    try:
        train(tiny_config(run_dir, steps=2))
        q.put("trained")
    except RunDirInUse as e:
        q.put(str(e))
