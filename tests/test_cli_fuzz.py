"""Fuzz the command line: random sub-commands, flags, values, dotted overrides and malformed files must
end in exit code 0 or 2 (argparse's usage errors and rnnlab's ValueErrors naming what was expected),
never in a traceback. The expensive parts (training, timing, running a sweep's processes) are stubbed
by a sentinel raised only after every check the real function would make before starting work
(a sweep's grid is expanded, i.e. every point resolved)."""
from __future__ import annotations

import contextlib
import io
import json
import random

import pytest

from rnnlab import cli


class Reached(Exception):
    """The command got past validation to the work itself."""


@pytest.fixture
def stubbed(monkeypatch):
    import rnnlab.bench.runner
    import rnnlab.train.sweep
    import rnnlab.train.trainer

    def sweep_stub(spec):
        rnnlab.train.sweep.expand(spec)
        raise Reached

    def raise_reached(*a, **k):
        raise Reached

    monkeypatch.setattr(rnnlab.train.trainer, "train", raise_reached)
    monkeypatch.setattr(rnnlab.train.sweep, "run_sweep", sweep_stub)
    monkeypatch.setattr(rnnlab.bench.runner, "run_bench", raise_reached)


VALUES = ["0", "-1", "1", "2", "3", "16", "1e-3", "abc", "", "nan", "inf", "-inf", "1e99", "[1, 2]", "{a: 1}",
          "null", "true", "lstm", "attention", "gla,lstm", "none", "all", "cuda", "cpu", "banana", "[", "{", "x=y",
          "float32", "bfloat16", "train,decode", "512,abc"]
SECTIONS = ["task", "model", "train", "run_dir", "bogus", ""]
KEYS = {"task": ["name", "seq_len", "num_kv_pairs", "max_len", "test_lengths", "vocab_size", "nope"],
        "model": ["mixer", "d_model", "n_layers", "mixer_kwargs.num_heads", "mixer_kwargs.nope", "mlp_ratio", "norm_eps",
                  "dropout", "head", "mlp", "vocab_size", "nope"],
        "train": ["lr", "steps", "batch_size", "warmup", "seed", "device", "bf16", "pack", "pack_tokens", "target",
                  "on_nonfinite", "grad_clip", "beta1", "threads", "nope"],
        "run_dir": [""], "bogus": ["x"], "": ["x"]}
FLAGS = {
    "train": ["--task", "--mixer", "--d-model", "--layers", "--lr", "--steps", "--batch-size", "--seed", "--device",
              "--target", "--config", "--run-dir"],
    "sweep": ["--workers", "--db"],
    "report": ["--out", "--sweep"],
    "suite": ["--mixers", "--workers", "--out-dir"],
    "bench": ["--mixers", "--ops", "--seq-lens", "--batch", "--d-model", "--modes", "--dtype", "--decode-batches",
              "--threads", "--reps", "--warmup", "--budget", "--max-call-s", "--compare", "--from-json"],
    "list": ["--d-model", "--seq-lens"],
}
SWITCHES = {"train": ["--bf16", "--resume", "--overwrite", "--no-progress"], "sweep": ["--no-report"],
            "suite": ["--quick", "--full"], "bench": ["--quick", "--no-peers", "--no-packing", "--no-memory"],
            "report": [], "list": []}


def _files(tmp):
    """Malformed and odd files of every kind the commands read."""
    files = {
        "bad.toml": "x = [1,\n", "bad.yaml": "a: [1,\n", "bad.json": "{", "list.json": "[1, 2]", "scalar.yaml": "5\n",
        "grid5.yaml": "grid: 5\n", "nogrid.yaml": "name: x\n", "sections.yaml": "task: 5\nmodel: [1]\n",
        "badtask.yaml": "grid: {task: [nosuch], mixer: [lstm]}\n",
        "badkw.yaml": "base: {model: {mixer_kwargs: {num_heads: 0}}}\ngrid: {task: [parity], mixer: [lstm]}\n",
        "okay.yaml": "base: {train: {steps: 2}}\ngrid: {task: [parity], mixer: [lstm], lr: [1.0e-3, abc]}\n",
        "workers0.yaml": "workers: 0\ngrid: {task: [parity], mixer: [lstm]}\n",
        "tasksnull.yaml": "grid: {task: [parity], mixer: [lstm]}\ntasks: {parity: null}\nmixers: {lstm: 3}\n",
        "train.toml": "[task]\nname = 'parity'\n[train]\nlr = 'x'\n", "empty.json": "", "bench.json": "{\"schema\": 1}",
        "outside.yaml": "task: {name: parity}\nrun_dir: ../../elsewhere\n", "empty.db": "",
    }
    paths = []
    for name, text in files.items():
        p = tmp / name
        p.write_text(text)
        paths.append(str(p))
    garbage = tmp / "garbage.db"
    garbage.write_bytes(random.Random(0).randbytes(3000))
    binary = tmp / "binary.yaml"
    binary.write_bytes(random.Random(1).randbytes(300))
    return paths + [str(garbage), str(binary), str(tmp / "missing.yaml"), str(tmp)]


def _argv(rng: random.Random, files: list[str]) -> list[str]:
    cmd = rng.choice(list(FLAGS))
    argv = [cmd]
    if cmd in ("sweep", "report"):
        argv.append(rng.choice(files + VALUES[:4]))
    for _ in range(rng.randint(0, 4)):
        flag = rng.choice(FLAGS[cmd])
        value = rng.choice(files) if flag in ("--config", "--compare", "--from-json", "--db") and rng.random() < 0.8 \
            else rng.choice(VALUES)
        argv += [flag, value]
    for _ in range(rng.randint(0, 2)):
        if SWITCHES[cmd]:
            argv.append(rng.choice(SWITCHES[cmd]))
    if cmd == "train":
        argv += ["--steps", rng.choice(["1", "0", "x"]), "--d-model", rng.choice(["16", "15", "0"])]
        for _ in range(rng.randint(0, 3)):
            section = rng.choice(SECTIONS)
            key = rng.choice(KEYS[section])
            argv.append(f"{section}.{key}={rng.choice(VALUES)}" if key else f"{section}={rng.choice(VALUES)}")
    if cmd == "list":
        argv += ["--d-model", rng.choice(["16", "0", "-4", "x", "33"])]
    return argv


def _run(argv: list[str]) -> tuple[int, str]:
    """-> (exit code, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse: usage errors exit 2, --help 0
            rc = e.code if isinstance(e.code, int) else 2
        except Reached:
            rc = 0
    return rc, err.getvalue()


def test_cli_fuzz_no_traceback(stubbed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = _files(tmp_path)
    rng = random.Random(1234)
    failures = []
    for _ in range(1000):
        argv = _argv(rng, files)
        try:
            rc, _ = _run(argv)
        except Exception as e:  # a traceback: the finding
            failures.append(f"{json.dumps(argv)} -> {type(e).__name__}: {e}")
            continue
        if rc not in (0, 2):
            failures.append(f"{json.dumps(argv)} -> exit {rc}")
    assert not failures, f"{len(failures)} argument lists crashed:\n" + "\n".join(failures[:20])


def test_cli_errors_name_what_was_expected(stubbed, tmp_path, monkeypatch):
    """A few fixed cases from the hardening issue, each with the message it must give."""
    monkeypatch.chdir(tmp_path)
    files = {p.rsplit("/", 1)[-1]: p for p in _files(tmp_path)}
    cases = [
        (["train", "--task", "parity", "train.lr=abc"], "train.lr must be float"),
        (["train", "--task", "parity", "model.mixer_kwargs.nope=1"], "unknown option(s) ['nope']"),
        (["train", "--task", "parity", "train.device=banana"], "train.device must be 'auto' or a torch device"),
        (["train", "--config", files["bad.toml"]], "is not valid TOML"),
        (["train", "--config", files["outside.yaml"]], "lies outside runs/"),
        (["sweep", files["grid5.yaml"]], "sweep grid must be a mapping"),
        (["sweep", files["badkw.yaml"]], "num_heads must be an int >= 1, got 0"),
        (["sweep", files["binary.yaml"]], "is not valid YAML"),
        (["report", files["empty.db"]], "is not an rnnlab results database"),
        (["report", files["garbage.db"]], "is not an rnnlab results database"),
        (["bench", "--mixers", "nosuch"], "unknown mixer(s) ['nosuch']"),
        (["list", "--seq-lens", "12,x"], "argument --seq-lens: comma-separated lengths: expected an int >= 1, got 'x'"),
    ]
    for argv, message in cases:
        rc, err = _run(argv)
        assert rc == 2 and message in err, (argv, rc, err)
    assert (tmp_path / "empty.db").stat().st_size == 0  # report wrote nothing into a file it could not read
