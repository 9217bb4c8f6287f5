"""plstm2d's forms (issue 22): the hierarchical form (log-depth block merges, blocks of up to ``block`` cells a side,
then a wavefront over the blocks) against the wavefront form (the cells' anti-diagonals in turn), forward + backward.

    flock /tmp/rnnlab-bench.lock python benchmarks/plstm2d_forms.py [--sides 16,32] [--blocks 4,8,16] [--cpu-time] [--json out.json]

Rows: "op": rnnlab.ops.plstm2d alone on the PLSTM2D layer's shapes (B images x 4 orientations, H heads, K = V =
d_model / H, float32; backward of a fixed random cotangent w.r.t. every input); "layer": PLSTM2D(d_model, H) with
each backend (same weights; backward of mean(y²) w.r.t. x and every parameter). The forms of one grid side run in
turns (``race``: one call of each per round, the fastest call is the figure), so a change of the machine's load hits
them alike; the ratio is the wavefront's time over the form's (> 1: faster than the wavefront). --cpu-time: one torch
thread, calls timed in CPU seconds of this process (time.process_time), for a machine loaded by other work. Peak MiB: resident
memory above the start of one fwd+bwd call.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from rnnlab.bench.machine import describe_machine
from rnnlab.bench.timing import fwd_and_train, peak_rss_delta, race
from rnnlab.layers.plstm2d import PLSTM2D
from rnnlab.ops.plstm2d import plstm2d


def _op_inputs(B: int, n: int, H: int, K: int) -> dict:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = dict(q=r(B, n, n, H, K), k=r(B, n, n, H, K), v=r(B, n, n, H, K), S=torch.sigmoid(r(B, n, n, H, 2)),
             T=torch.tanh(r(B, n, n, H, 2, 2)) / 2, M=torch.sigmoid(r(B, n, n, H, 2)), D=torch.sigmoid(r(B, n, n, H)))
    return {name: t.requires_grad_() for name, t in x.items()}


def _layer_call(layer: PLSTM2D, x: torch.Tensor):
    def train():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).square().mean().backward()

    return train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sides", default="16,32")
    ap.add_argument("--blocks", default="4,8,16")
    ap.add_argument("--batch", type=int, default=8, help="images (the op runs 4x this: the layer's orientations)")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per race")
    ap.add_argument("--cpu-time", action="store_true", help="one thread, CPU seconds (module doc)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.cpu_time:
        torch.set_num_threads(1)
    torch.manual_seed(0)
    blocks = [int(b) for b in args.blocks.split(",")]
    forms = {"wavefront": dict(backend="wavefront"), **{f"hierarchical/{b}": dict(backend="hierarchical", block=b) for b in blocks}}
    H, K = args.heads, args.d_model // args.heads
    rows = []
    print(f"threads {torch.get_num_threads()}; {describe_machine()['cpu']}")
    for n in (int(s) for s in args.sides.split(",")):
        inputs = _op_inputs(4 * args.batch, n, H, K)
        calls = {f: fwd_and_train(lambda kw=kw, **x: plstm2d(**x, **kw), inputs)[1] for f, kw in forms.items()}
        layer = PLSTM2D(args.d_model, H)
        x = torch.randn(args.batch, n, n, args.d_model, requires_grad=True)
        layers = {}
        for f, kw in forms.items():
            layers[f] = PLSTM2D(args.d_model, H, backend=kw["backend"], block=kw.get("block", 16))
            layers[f].load_state_dict(layer.state_dict())
        for what, fns in (("op", calls), ("layer", {f: _layer_call(m, x) for f, m in layers.items()})):
            best = race(fns, args.budget, clock=time.process_time if args.cpu_time else time.perf_counter)
            for f, fn in fns.items():
                peak = peak_rss_delta(fn)
                rows.append(dict(what=what, side=n, form=f, ms=1e3 * best[f], vs_wavefront=best["wavefront"] / best[f],
                                 peak_mib=None if peak is None else peak / 2**20))
                r = rows[-1]
                print(f"{what:5s} {n:3d}x{n:<3d} {f:16s} {r['ms']:9.1f} ms  x{r['vs_wavefront']:.2f}  "
                      f"peak {r['peak_mib'] if r['peak_mib'] is None else round(r['peak_mib'])} MiB", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": describe_machine(), "args": vars(args), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
