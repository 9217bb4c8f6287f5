"""Data parallelism on torch's engines (train.parallel = ddp | fsdp, 2 gloo processes under torchrun) and
gradient accumulation: the same global batch gives the same run.

Two processes reduce their gradients as g0 + g1, exactly what one process accumulating the same two
micro-batches computes (train.grad_accum = 2), so those runs agree bit for bit: under DDP, under FSDP, after
a resume on another number of processes or under the other engine, and after SIGKILLs. Against one process
on the whole batch at once they agree up to float summation order."""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from rnnlab.cli import main
from rnnlab.testing import assert_close
from tests.train.conftest import PY, TINY_ARGS

# no gradient clipping: FSDP sums the shards' norms in another order, so clipped steps agree only to rounding
# (test_killed_ddp_run_resumed_under_fsdp_ends_bit_for_bit)
ARGS = [*TINY_ARGS, "--steps", "12", "train.eval_every=6", "train.ckpt_every=6", "train.grad_clip=0"]
TORCHRUN = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rnnlab.cli", "train"]


def _state(run_dir):
    """Weights and optimizer state of the run's newest checkpoint."""
    w = load_file(str(run_dir / "checkpoint.safetensors"))
    return {k: v for k, v in w.items() if k.startswith(("model.", "optim."))}


def _same(a_dir, b_dir):
    a, b = _state(a_dir), _state(b_dir)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"differ: {differ[:5]}"


def _torchrun(args, env, **kw):
    done = subprocess.run([*TORCHRUN, *args], env=env, capture_output=True, text=True, **kw)
    assert done.returncode == 0, done.stderr[-3000:]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc): torchrun starts its workers in sessions of their own."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            continue
        for k in kids:
            out += [k, *_descendants(k)]
    return out


def _rewind(src, dst):
    """A copy of run ``src`` as it was at its previous checkpoint (unfinished): the starting point of a resume."""
    shutil.copytree(src, dst)
    os.replace(dst / "checkpoint.prev.safetensors", dst / "checkpoint.safetensors")
    (dst / "result.json").unlink()


@pytest.fixture(scope="module")
def accum2(tmp_path_factory):
    """The reference: one process accumulating two micro-batches per step."""
    run = tmp_path_factory.mktemp("accum2") / "run"
    assert main(["train", *ARGS, "train.grad_accum=2", "--run-dir", str(run)]) == 0
    return run


def test_grad_accum_equals_the_whole_batch(tmp_path):
    assert main(["train", *ARGS, "--run-dir", str(tmp_path / "one")]) == 0
    assert main(["train", *ARGS, "train.grad_accum=4", "--run-dir", str(tmp_path / "four")]) == 0
    a, b = _state(tmp_path / "one"), _state(tmp_path / "four")
    for k in a:  # equal up to float summation order (four partial sums vs one)
        assert_close(b[k], a[k], name=k)
    with pytest.raises(ValueError, match="divisible by train.grad_accum"):
        from rnnlab.train.config import TrainConfig

        TrainConfig(batch_size=8, grad_accum=3)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_equal_one_process_accumulating_their_micro_batches(tmp_path, env1, accum2, parallel):
    _torchrun([*ARGS, f"train.parallel={parallel}", "--run-dir", str(tmp_path / "two")], env1)
    _same(accum2, tmp_path / "two")
    logged = [json.loads(ln) for ln in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(ln) for ln in (accum2 / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("loss") for r in logged] == [r.get("loss") for r in ref]  # the global-batch loss, logged once


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_with_grad_accum_equal_one_process_on_the_global_batch(tmp_path, env1, parallel):
    """2 processes x 2 micro-batches (no_sync on the first) against 1 process on all 8 rows at once."""
    _torchrun([*ARGS, f"train.parallel={parallel}", "train.grad_accum=2", "--run-dir", str(tmp_path / "two")], env1)
    assert main(["train", *ARGS, "--run-dir", str(tmp_path / "one")]) == 0
    a, b = _state(tmp_path / "one"), _state(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:  # equal up to float summation order
        assert_close(b[k], a[k], name=k)
    assert not torch.equal(a["model.head.weight"], torch.zeros_like(a["model.head.weight"]))


PACKED = [*ARGS, "train.pack=true", "task.min_len=3"]  # parity of lengths 3..12, packed back to back


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_packed_batches_on_two_processes_equal_one_process(tmp_path, env1, parallel):
    """train.pack under DDP / FSDP: each process packs its own examples of the step (every second one) into one
    row with cu_seqlens. Bit for bit the run of one process accumulating the same two packed shards, and up to
    summation order the run of one process packing the whole global batch into one row."""
    _torchrun([*PACKED, f"train.parallel={parallel}", "--run-dir", str(tmp_path / "two")], env1)
    assert main(["train", *PACKED, "train.grad_accum=2", "--run-dir", str(tmp_path / "accum2")]) == 0
    assert main(["train", *PACKED, "--run-dir", str(tmp_path / "one")]) == 0
    _same(tmp_path / "accum2", tmp_path / "two")
    a, b = _state(tmp_path / "one"), _state(tmp_path / "two")
    for k in a:
        assert_close(b[k], a[k], name=k)
    logged = [json.loads(ln) for ln in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(ln) for ln in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["loss"], q["loss"]) for r, q in zip(logged, ref) if "loss" in r]
    assert len(losses) == 2 and all(abs(x - y) <= 1e-5 * abs(y) for x, y in losses)


def test_fsdp_run_resumes_on_another_number_of_processes(tmp_path, env1, accum2):
    """One process's checkpoint resumed by two FSDP processes, and two FSDP processes' checkpoint resumed by one:
    both continue exactly as the uninterrupted run."""
    _rewind(accum2, tmp_path / "one_to_two")
    _torchrun([*ARGS, "train.parallel=fsdp", "--run-dir", str(tmp_path / "one_to_two"), "--resume"], env1)
    _same(accum2, tmp_path / "one_to_two")

    two = tmp_path / "two"
    _torchrun([*ARGS, "train.parallel=fsdp", "--run-dir", str(two)], env1)
    _rewind(two, tmp_path / "two_to_one")
    assert main(["train", *ARGS, "train.grad_accum=2", "--run-dir", str(tmp_path / "two_to_one"), "--resume"]) == 0
    _same(accum2, tmp_path / "two_to_one")
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "two_to_one" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(ln)["step"] for ln in (accum2 / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="finds torchrun's processes in /proc (Linux)")
def test_killed_ddp_run_resumed_under_fsdp_ends_bit_for_bit(tmp_path, env1):
    """SIGKILL of every process of a DDP run (a lost node) right after a checkpoint, then --resume under FSDP: the
    final weights are the uninterrupted run's (one process accumulating the same micro-batches), bit for bit.
    Without gradient clipping: FSDP's gradient norm sums the shards' norms, another order than the whole
    tensor's, so a clipped step agrees only to float rounding (measured: bitwise over 150 steps without clipping;
    with it, 25 of 27 tensors differ in the last bits after 150 steps)."""
    args = [*TINY_ARGS, "--steps", "150", "train.ckpt_every=5", "train.eval_every=150", "train.grad_clip=0"]
    assert main(["train", *args, "train.grad_accum=2", "--run-dir", str(tmp_path / "full")]) == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen([*TORCHRUN, *args, "--run-dir", str(run)], env=env1, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoint.safetensors"
    deadline = time.time() + 180
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    for pid in [proc.pid, *_descendants(proc.pid)]:  # torchrun and both of its processes
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    assert not (run / "result.json").exists(), "the run must be interrupted mid-way"
    _torchrun([*args, "train.parallel=fsdp", "--run-dir", str(run), "--resume"], env1)
    _same(tmp_path / "full", run)
    assert json.loads((run / "result.json").read_text())["steps"] == 150
