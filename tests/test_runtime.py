"""rnnlab.runtime: thread counts scoped and restored, library calls leave the process as they found it,
the allocator tuned only by entry points, once, and switchable off."""
import os
import subprocess
import sys

import pytest
import torch

from rnnlab import runtime
from rnnlab.runtime import scoped_threads, set_threads, threads

numba = pytest.importorskip("numba")
# two distinct numba counts need a pool of >= 2 threads (its size is fixed when it starts)
needs_two = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="numba pool of one thread")


@pytest.fixture
def numba_one():
    """numba's pool started, torch and numba (this thread's) on 1 thread; numba's count put back after (torch's
    by tests/conftest.py)."""
    before = numba.get_num_threads()  # starts the pool, which may reset torch's count
    set_threads(1)
    yield
    numba.set_num_threads(before)


def _run(code: str, **env) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@needs_two
def test_scope_sets_then_restores_torch_and_numba(numba_one):
    assert threads() == (1, 1)
    with scoped_threads(2) as inside:
        assert inside == (2, 2) == (torch.get_num_threads(), numba.get_num_threads())
        with scoped_threads(1):
            assert threads() == (1, 1)
        assert threads() == (2, 2)
    assert threads() == (1, 1)


@needs_two
def test_scope_restores_on_an_exception_and_whatever_the_block_set(numba_one):
    with pytest.raises(KeyError):
        with scoped_threads(2):
            raise KeyError("boom")
    assert threads() == (1, 1)
    with scoped_threads():  # None: nothing set on entry, but what the block sets is undone
        set_threads(2)
        assert threads() == (2, 2)
    assert threads() == (1, 1)


@needs_two
def test_scope_as_a_decorator(numba_one):
    @scoped_threads()
    def f(fail: bool):
        set_threads(2)
        if fail:
            raise RuntimeError
        return threads()

    assert f(False) == (2, 2) and threads() == (1, 1)
    with pytest.raises(RuntimeError):
        f(True)
    assert threads() == (1, 1)


def test_set_threads_rejects_bad_counts():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads must be an integer >= 1"):
            set_threads(bad)
    assert torch.get_num_threads() == 1


def test_numba_started_inside_a_scope_goes_back_to_a_fresh_pools_count():
    """threads() neither imports numba nor starts its pool; a pool first started inside a scope leaves with the
    count a fresh pool has (NUMBA_NUM_THREADS), what the caller would have seen."""
    code = ("import sys, torch, rnnlab.runtime as r\n"
            "torch.set_num_threads(1)\n"
            "print(r.threads().numba, 'numba' in sys.modules)\n"
            "import numba\n"
            "print(r.threads().numba)\n"
            "with r.scoped_threads(1): print(r.threads().numba)\n"
            "print(r.threads().numba, r.threads().torch)\n")
    assert _run(code, NUMBA_NUM_THREADS="2") == ["None", "False", "None", "1", "2", "1"]


def test_set_threads_survives_numba_pool_start():
    """Starting numba's OpenMP pool resets torch's count to NUMBA_NUM_THREADS once torch's has been read; set_threads
    starts numba first, so both end at n (torch first, then numba, left torch at 2 here)."""
    code = ("import torch, rnnlab.runtime as r\n"
            "torch.get_num_threads()\n"
            "r.set_threads(1)\n"
            "print(*r.threads())\n")
    assert _run(code, NUMBA_NUM_THREADS="2") == ["1", "1"]


def test_train_leaves_the_callers_thread_counts(tmp_path, numba_one):
    from rnnlab.train.trainer import train
    from tests.train.conftest import tiny_config

    before = threads()
    train(tiny_config(tmp_path, steps=2, eval_every=2, ckpt_every=2, threads=2))
    assert threads() == before


def test_run_bench_applies_its_threads_and_restores_them(numba_one):
    from rnnlab.bench.runner import BenchConfig, run_bench

    before = threads()
    cfg = BenchConfig(mixers=["attention"], ops=[], peers=False, seq_lens=[8], batch=1, d_model=16, modes=["prefill"],
                      dtypes=["float32"], warmup=0, reps=1, budget_s=0.0, memory=False, threads=2, quick=True)
    result = run_bench(cfg, log=lambda s: None)
    assert result["machine"]["threads"] == 2  # in force while it measured
    assert threads() == before


# --- allocator (glibc mallopt) -------------------------------------------------

_PROBE = ("import rnnlab, rnnlab.train.trainer, rnnlab.bench.runner, rnnlab.runtime as r;"
          "print(r.allocator_tuned(), r.tune_allocator(), r.tune_allocator(), r.allocator_tuned())")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_importing_leaves_the_allocator_alone_and_tuning_is_idempotent():
    assert _run(_PROBE, RNNLAB_TUNE_MALLOC="1") == ["False", "True", "True", "True"]


def test_env_switch_disables_tuning():
    assert _run(_PROBE, RNNLAB_TUNE_MALLOC="0") == ["False", "False", "False", "False"]


def test_repeat_call_does_not_call_glibc_again(monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(runtime, "_APPLIED", None)
    monkeypatch.setattr(runtime.sys, "platform", "linux")
    monkeypatch.setenv("RNNLAB_TUNE_MALLOC", "1")
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda name: FakeLibc())
    assert runtime.tune_allocator() and runtime.allocator_tuned()
    assert len(calls) == 2  # mmap and trim thresholds
    assert runtime.tune_allocator() and len(calls) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_the_cli_tunes_it():
    code = ("import contextlib, io, rnnlab.cli as c, rnnlab.runtime as r\n"
            "with contextlib.redirect_stdout(io.StringIO()): c.main(['list', '--seq-lens', '8'])\n"
            "print(r.allocator_tuned())")
    assert _run(code, RNNLAB_TUNE_MALLOC="1") == ["True"]
