"""Kills at the exact moments a run directory is most fragile: just before each fsync (a temporary file
written, not yet renamed) and just before each rename (including between moving the newest checkpoint to
.prev and moving the new one in) of checkpoints, config.json, metrics and result.json. After every kill the
run resumes with --resume; the final weights equal the uninterrupted run's, bit for bit."""
import json
import subprocess

import torch
from safetensors.torch import load_file

from tests.train.conftest import PY, TINY_ARGS

# The child: the n-th call of os.fsync / os.replace in this process (counted from the start) exits at once,
# as a SIGKILL would leave the files (no cleanup, no atexit).
CHILD = """
import os, sys
target, n = sys.argv[1], int(sys.argv[2])
calls = {"fsync": 0, "replace": 0}
def hook(name, real):
    def f(*a, **k):
        calls[name] += 1
        if name == target and calls[name] == n:
            os._exit(137)
        return real(*a, **k)
    return f
os.fsync, os.replace = hook("fsync", os.fsync), hook("replace", os.replace)
from rnnlab.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _weights(run_dir):
    w = load_file(str(run_dir / "checkpoint.safetensors"))
    return {k: v for k, v in w.items() if k.startswith(("model.", "optim."))}


def test_killed_inside_every_kind_of_write_resumes_to_the_uninterrupted_weights(tmp_path, env1):
    steps = 24
    args = ["train", *TINY_ARGS, "--steps", str(steps), "train.ckpt_every=4", "train.eval_every=12"]
    subprocess.run([PY, "-m", "rnnlab.cli", *args, "--run-dir", str(tmp_path / "full")], env=env1, check=True,
                   capture_output=True)
    run = tmp_path / "killed"
    # first start: config.json (1 fsync, 1 replace), then checkpoints (fsync, replace to .prev, replace in), metrics
    kills = [("replace", 1), ("fsync", 2), ("replace", 3), ("replace", 4), ("fsync", 3), ("replace", 2), ("replace", 5)]
    killed = 0
    for attempt, (target, n) in enumerate(kills):
        resume = ["--resume"] if attempt else []
        proc = subprocess.run([PY, "-c", CHILD, target, str(n), *args, "--run-dir", str(run), *resume], env=env1,
                              capture_output=True, text=True)
        assert proc.returncode in (0, 137), proc.stderr[-2000:]
        killed += proc.returncode == 137
    assert killed >= 5, "most kill points must have been reached"
    done = subprocess.run([PY, "-m", "rnnlab.cli", *args, "--run-dir", str(run), "--resume"], env=env1,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _weights(tmp_path / "full"), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "result.json").read_text())["steps"] == steps
    steps_logged = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    full_logged = [json.loads(ln)["step"] for ln in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == full_logged
