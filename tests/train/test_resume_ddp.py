"""Kill a run after a checkpoint and resume it: same result as the uninterrupted run.
Two gloo processes under torchrun: same weights as one process at the same global batch."""
import json
import signal
import subprocess
import time

import torch
from safetensors.torch import load_file

from rnnlab.cli import main
from rnnlab.testing import assert_close
from rnnlab.train.checkpoint import read_metadata
from tests.train.conftest import PY, TINY_ARGS


def _weights(run_dir):
    w = load_file(str(run_dir / "checkpoint.safetensors"))
    return {k: v for k, v in w.items() if k.startswith(("model.", "optim."))}


def test_kill_and_resume_equals_uninterrupted(tmp_path, env1):
    steps = 400
    args = [PY, "-m", "rnnlab.cli", "train", *TINY_ARGS, "--steps", str(steps), "train.ckpt_every=20", "train.eval_every=200"]
    subprocess.run(args + ["--run-dir", str(tmp_path / "full")], env=env1, check=True, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--run-dir", str(run)], env=env1, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoint.safetensors"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = read_metadata(ckpt)[0]
    assert 0 < killed_at < steps, "the run must be interrupted mid-way"
    subprocess.run(args + ["--run-dir", str(run), "--resume"], env=env1, check=True, capture_output=True)

    a, b = _weights(tmp_path / "full"), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (tmp_path / "full", run))
    assert ra["metrics"] == rb["metrics"] and rb["steps"] == steps
    steps_logged = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    full_logged = [json.loads(ln)["step"] for ln in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == full_logged  # no duplicated or missing records after the resume


def test_two_process_ddp_equals_single_process(tmp_path, env1):
    args = [*TINY_ARGS, "--steps", "12", "train.eval_every=6", "train.ckpt_every=6"]
    subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rnnlab.cli",
                    "train", *args, "--run-dir", str(tmp_path / "two")], env=env1, check=True, capture_output=True)
    assert main(["train", *args, "--run-dir", str(tmp_path / "one")]) == 0  # the reference, in this process
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:  # equal up to float summation order (two partial sums vs one)
        assert_close(b[k], a[k], name=k)
    assert not torch.equal(a["model.head.weight"], torch.zeros_like(a["model.head.weight"]))


def test_killed_at_random_points_many_times_resumes_to_the_uninterrupted_weights(tmp_path, env1):
    """SIGKILL at random moments (mid-step, mid-checkpoint, mid-config write at each restart), resume each
    time with --resume: the final weights equal the uninterrupted run's, bit for bit."""
    import random

    steps = 300
    args = [PY, "-m", "rnnlab.cli", "train", *TINY_ARGS, "--steps", str(steps), "train.ckpt_every=7", "train.eval_every=150"]
    subprocess.run(args + ["--run-dir", str(tmp_path / "full")], env=env1, check=True, capture_output=True)
    run = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for attempt in range(6):
        resume = ["--resume"] if attempt else []
        proc = subprocess.Popen(args + ["--run-dir", str(run), *resume], env=env1, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 4.0))  # interpreter start, config write, training, checkpoint writes
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3, "the run should have been interrupted several times"
    done = subprocess.run(args + ["--run-dir", str(run), "--resume"], env=env1, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _weights(tmp_path / "full"), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "result.json").read_text())["steps"] == steps
