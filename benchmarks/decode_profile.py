"""Issue-20 counter: what one decode step costs in calls, not seconds (a shared machine's load does not move it).

    python benchmarks/decode_profile.py [--mixers attention,mlstm,...] [--peers] [--context 512] [--batch 1]
        [--d-model 256] [--top 0]

For each mixer (built as ``rnnlab bench`` builds it: ``create_mixer(name, d_model)``), a prefill of ``--context``
tokens, then one step ``mixer(x1, state)`` under ``torch.inference_mode`` — the bench's decode call — counted three
ways:

* ``top``: top-level ATen calls (the torch profiler's events with no parent: what Python dispatched, each paying
  the dispatcher's fixed cost);
* ``aten``: every ATen call, nested ones included (a ``linear`` is a ``t`` and an ``mm``, ...);
* ``py``: Python function calls (``sys.setprofile``'s 'call' events: the interpreter's share).

``--time R`` times the steps too (hold ``flock /tmp/rnnlab-bench.lock``): R rounds, each 16 steps of every subject in
turn (so a shared machine's load hits them alike), the median µs per step of each, and its ratio to the first
subject's in the same rounds. ``--threads`` sets torch's threads (default 2, as the bench).

``--torch`` adds each mixer's torch step (``decode.enabled(False)``) as a subject of its own: a fused kernel's
speed-up over the step it replaces, in the same rounds. ``--peers`` adds the peers' steps (the SDPA attention with a
static cache; HF's RWKV-4, RG-LRU and xLSTM mLSTM when transformers is installed). ``--top N`` lists the N most frequent ATen ops of each step. Timings are
``rnnlab bench --modes decode``'s job (under ``flock /tmp/rnnlab-bench.lock``); these counts need no lock.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
import time

import torch

from rnnlab.bench.peers import build_peers
from rnnlab.bench.runner import BenchConfig, _mixer_subject
from rnnlab.ops import decode
from rnnlab.runtime import tune_allocator


def count_step(step, x1, state) -> dict:
    """One call ``step(x1, state)`` -> {"aten": n, "top": n, "py": n, "ops": Counter}, each call continuing from the
    last one's state (a state stepped twice may take a slower path: attention's cache copies then)."""
    with torch.inference_mode():
        state = step(x1, state)[1]  # warm: caches built on the first call (fused weights, specs) are not per-token costs
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            state = step(x1, state)[1]
        events = [e for e in prof.events() if e.name.startswith("aten::")]
        ops = collections.Counter(e.name[6:] for e in events if e.cpu_parent is None)
        calls = [0]

        def tracer(frame, event, arg):
            if event == "call":
                calls[0] += 1

        sys.setprofile(tracer)
        try:
            state = step(x1, state)[1]
        finally:
            sys.setprofile(None)
    return {"aten": len(events), "top": sum(ops.values()), "py": calls[0], "ops": ops}


def time_steps(subjects, states, x1, rounds: int, per_round: int = 16) -> list[float]:
    """Median µs per step of each subject, the subjects' steps interleaved round by round."""
    lat = [[] for _ in subjects]
    with torch.inference_mode():
        for _ in range(rounds):
            for i, s in enumerate(subjects):
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    states[i] = s.step(x1, states[i])[1]
                    lat[i].append(time.perf_counter() - t0)
    return [sorted(v)[len(v) // 2] * 1e6 for v in lat]


def _torch_step(subject):
    """The subject with its fused decode kernels off: the layer's torch step."""
    step = subject.step

    def torch_step(x1, state):
        with decode.enabled(False):
            return step(x1, state)

    return dataclasses.replace(subject, name=subject.name + " (torch step)", step=torch_step)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixers", default="attention,mlstm,hawk,mamba2,gated_deltanet,gla")
    p.add_argument("--peers", action="store_true")
    p.add_argument("--torch", action="store_true")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--top", type=int, default=0)
    p.add_argument("--time", type=int, default=0, metavar="ROUNDS")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    tune_allocator()  # as `rnnlab bench`: a fresh large state reuses freed heap memory (rnnlab/runtime.py)
    cfg = BenchConfig.preset(d_model=a.d_model)
    names = [n for n in a.mixers.split(",") if n]
    subjects = [_mixer_subject(n, cfg) for n in names]
    if a.torch:
        subjects += [_torch_step(_mixer_subject(n, cfg)) for n in names]
    if a.peers:
        subjects += [s for s in build_peers(a.d_model, only_vs=set(names))[0] if s.step is not None]
    g = torch.Generator().manual_seed(0)
    print(f"one decode step, B={a.batch}, d_model={a.d_model}, context {a.context}: calls per step")
    print(f"{'subject':28s} {'top':>6s} {'aten':>6s} {'py':>6s}")
    states = []
    x1 = torch.randn(a.batch, 1, a.d_model, generator=g)
    for s in subjects:
        s.module.eval()
        x = torch.randn(a.batch, a.context, a.d_model, generator=g)
        with torch.inference_mode():
            state = s.prefill(x)
            r = count_step(s.step, x1, state)
            states.append(s.prefill(x) if a.time else None)
        print(f"{s.name:28s} {r['top']:6d} {r['aten']:6d} {r['py']:6d}")
        if a.top:
            print("    " + ", ".join(f"{k} {n}" for k, n in r["ops"].most_common(a.top)))
    if a.time:
        med = time_steps(subjects, states, x1, a.time)
        print(f"µs per step (median of {a.time} rounds x 16 steps, interleaved; {a.threads} threads)")
        for s, t in zip(subjects, med):
            print(f"{s.name:28s} {t:8.1f}  {med[0] / t:5.2f}x of {subjects[0].name}'s speed")


if __name__ == "__main__":
    main()
