"""Issue-4 benchmark: nonlinear RNNs (lstm, gru, elman, slstm), fused numba kernel vs reference loop vs
torch.nn (oneDNN), plus single-token decode latency against torch.nn.LSTMCell.

    flock /tmp/rnnlab-bench.lock python benchmarks/nonlinear.py [--shapes 8x1024x256,8x256x1024] [--threads 2]

Rows (float32, same weights in every column of a cell: the rnnlab mixers are built with
``from_torch`` from the torch module):
- ``torch.nn.LSTM`` / ``GRU`` / ``RNN``: one layer, batch_first (oneDNN on CPU).
- ``kernel``: the rnnlab mixer with ``backend="kernel"`` (input projection for all steps in one matmul,
  the recurrent loop in one numba call forward and one backward).
- ``reference``: the same mixer with ``backend="reference"`` (the plain PyTorch loop over t).
- ``slstm``: the sLSTM mixer (4 heads, conv 4, GroupNorm) kernel vs reference, next to the fused lstm
  mixer at the same hidden size; ``op`` rows time the recurrences alone, gx given (slstm vs lstm op, 4 heads,
  and each op against its reference loop: the speed-up of the fused loop without the layer's projection
  GEMMs, which both forms share).
fwd: forward under no_grad; fwd+bwd: forward + backward of mean(y^2) w.r.t. x and every parameter.
tokens/s = B*T / seconds. The forms of one table are timed interleaved (one call of each per round,
after a warm-up), so a change in the machine's load hits them alike; the table gives the median and
the best round, and ratios of medians. Decode: B=1, per-token latency of the lstm mixer's ``step``
(and of the full ``forward`` with its input checks) vs ``torch.nn.LSTMCell``, median of blocks of
calls, interleaved likewise.
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch
from torch import nn

import rnnlab
from rnnlab import runtime
from rnnlab.layers.gru import GRU
from rnnlab.layers.lstm import LSTM
from rnnlab.layers.elman import Elman
from rnnlab.bench.timing import race
from rnnlab.ops import rnn as ops
from rnnlab.testing import rel_err

TORCH = {"lstm": (nn.LSTM, LSTM), "gru": (nn.GRU, GRU), "elman": (nn.RNN, Elman)}


def interleaved(fns: dict, rounds: int, budget_s: float) -> dict:
    """{name: fn} -> {name: (median s, best s)}: one warm-up call each, then rounds of one call each."""
    return race(fns, budget_s, max_rounds=rounds, min_rounds=3, stat=lambda t: (statistics.median(t), min(t)))


def fwd(m, x):
    def run():
        with torch.no_grad():
            m(x)
    return run


def fwd_bwd(m, x):
    def run():
        m.zero_grad(set_to_none=True)
        y = m(x.detach().requires_grad_())
        (y[0] if isinstance(y, tuple) else y).square().mean().backward()
    return run


def table(title, ntok, fns, rounds, budget, base=None):
    res = interleaved(fns, rounds, budget)
    print(f"\n{title}")
    for k, (med, best) in res.items():
        ratio = f"  {res[base][0] / med:6.2f}x vs {base}" if base and k != base else ""
        print(f"  {k:34s} {ntok / med / 1e3:9.1f}k tok/s (best {ntok / best / 1e3:8.1f}k){ratio}")
    return res


def classic(cell, B, T, d, rounds, budget):
    torch.manual_seed(0)
    tmod = TORCH[cell][0](d, d, batch_first=True)
    mixers = {b: TORCH[cell][1].from_torch(tmod, backend=b) for b in ("kernel", "reference")}
    x = torch.randn(B, T, d)
    with torch.no_grad():
        err = max(rel_err(mixers[b](x)[0], tmod(x)[0]) for b in mixers)
    names = {f"torch.nn.{TORCH[cell][0].__name__}": tmod, f"{cell} kernel": mixers["kernel"],
             f"{cell} reference": mixers["reference"]}
    base = f"torch.nn.{TORCH[cell][0].__name__}"
    print(f"\n== {cell}  B={B} T={T} d={d}   (max rel. err. of the mixers vs torch: {err:.1e})")
    ref_rounds = max(3, rounds // 3)
    for mode, make in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        fast = {k: make(m, x) for k, m in names.items() if "reference" not in k}
        table(f"{cell} {mode}", B * T, fast, rounds, budget, base)
        ref = interleaved({f"{cell} reference": make(names[f"{cell} reference"], x),
                           f"{cell} kernel": fast[f"{cell} kernel"]}, ref_rounds, budget)
        kmed, rmed = ref[f"{cell} kernel"][0], ref[f"{cell} reference"][0]
        print(f"  {cell + ' reference':34s} {B * T / rmed / 1e3:9.1f}k tok/s   kernel is {rmed / kmed:6.1f}x the reference"
              f" (interleaved with it)")


def slstm_rows(B, T, d, rounds, budget, lstm_kernel):
    torch.manual_seed(0)
    s = {b: rnnlab.create_mixer("slstm", d, backend=b) for b in ("kernel", "reference")}
    with torch.no_grad():  # random recurrent blocks (the init is R = 0, which would hide the recurrence)
        s["kernel"].weight_hh.normal_(0.0, s["kernel"].weight_hh.shape[-1] ** -0.5)
    s["reference"].load_state_dict(s["kernel"].state_dict())  # the same weights in both columns
    x = torch.randn(B, T, d)
    with torch.no_grad():
        err = rel_err(s["kernel"](x)[0], s["reference"](x)[0])
    print(f"\n== slstm (4 heads, conv 4)  B={B} T={T} d={d}   (rel. err. kernel vs reference: {err:.1e})")
    for mode, make in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        fns = {"slstm kernel": make(s["kernel"], x), "lstm kernel (same H)": make(lstm_kernel, x)}
        table(f"slstm {mode}", B * T, fns, rounds, budget, "lstm kernel (same H)")
        ref = interleaved({"slstm reference": make(s["reference"], x), "slstm kernel": fns["slstm kernel"]},
                          max(3, rounds // 3), budget)
        print(f"  {'slstm reference':34s} {B * T / ref['slstm reference'][0] / 1e3:9.1f}k tok/s   kernel is "
              f"{ref['slstm reference'][0] / ref['slstm kernel'][0]:6.1f}x the reference")
    # the recurrences alone: same hidden size, 4 heads, gx given
    NH, Kh = 4, d // 4
    gx = torch.randn(B, T, 4 * d, requires_grad=True)
    w = (torch.randn(NH, 4 * Kh, Kh) * Kh**-0.5).requires_grad_()

    def op(cell, backend, grad):
        def run():
            if grad:
                gx.grad = w.grad = None
                ops.rnn(cell, gx, w, backend=backend)[0].square().mean().backward()
            else:
                with torch.no_grad():
                    ops.rnn(cell, gx, w, backend=backend)
        return run

    for mode, grad in (("fwd", False), ("fwd+bwd", True)):
        table(f"op {mode} (gx given, 4 heads)", B * T,
              {"slstm op kernel": op("slstm", "kernel", grad), "lstm op kernel": op("lstm", "kernel", grad)},
              rounds, budget, "lstm op kernel")
    # the recurrence alone against its reference loop (the layer's projection GEMMs, shared by both forms, left out)
    for cell in ("slstm", "lstm"):
        table(f"op fwd+bwd {cell} (gx given, 4 heads): kernel vs reference", B * T,
              {f"{cell} op reference": op(cell, "reference", True), f"{cell} op kernel": op(cell, "kernel", True)},
              max(3, rounds // 3), budget, f"{cell} op reference")


def decode(d, budget, block=200):
    torch.manual_seed(0)
    cellmod = nn.LSTMCell(d, d)
    tmod = nn.LSTM(d, d, batch_first=True)
    tmod.load_state_dict({f"{k}_l0": v for k, v in cellmod.state_dict().items()})
    mixer = LSTM.from_torch(tmod)
    x = torch.randn(1, 1, d)
    st = mixer.init_state(1)
    hc = (torch.zeros(1, d), torch.zeros(1, d))
    with torch.no_grad():
        err = rel_err(mixer.step(x, st)[0][:, 0], cellmod(x[:, 0], hc)[0])

    def blocked(fn):
        def run():
            with torch.no_grad():
                for _ in range(block):
                    fn()
        return run

    fns = {"torch.nn.LSTMCell": blocked(lambda: cellmod(x[:, 0], hc)),
           "lstm mixer .step": blocked(lambda: mixer.step(x, st)),
           "lstm mixer forward (T=1)": blocked(lambda: mixer(x, st))}
    res = interleaved(fns, 30, budget)
    print(f"\n== decode B=1 d={d}: latency per token   (rel. err. step vs LSTMCell: {err:.1e})")
    base = res["torch.nn.LSTMCell"][0]
    for k, (med, best) in res.items():
        print(f"  {k:34s} {med / block * 1e6:7.1f} us (best {best / block * 1e6:6.1f})   {med / base:5.2f}x LSTMCell's time")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="8x1024x256,8x256x1024", help="BxTxd list")
    p.add_argument("--cells", default="lstm,gru,elman,slstm")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--budget", type=float, default=20.0, help="seconds per table (after at least 3 rounds)")
    a = p.parse_args(argv)
    runtime.set_threads(a.threads)  # torch and numba: a script is an entry point (rnnlab/runtime.py)
    runtime.tune_allocator()  # as `rnnlab bench` does
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    cells = a.cells.split(",")
    for shape in a.shapes.split(","):
        B, T, d = map(int, shape.split("x"))
        lstm_kernel = None
        for cell in [c for c in cells if c in TORCH]:
            classic(cell, B, T, d, a.rounds, a.budget)
            if cell == "lstm":
                torch.manual_seed(0)
                lstm_kernel = LSTM(d, backend="kernel")
        if "slstm" in cells:
            slstm_rows(B, T, d, a.rounds, a.budget, lstm_kernel or LSTM(d, backend="kernel"))
    for d in sorted({int(s.split("x")[2]) for s in a.shapes.split(",")}):
        decode(d, a.budget)
    print(f"\nload average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
