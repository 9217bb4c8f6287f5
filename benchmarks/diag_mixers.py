"""Parallel form vs reference-loop path of the diagonal mixers lru, hawk, hgrn, rwkv4, mingru,
minlstm (+ rwkv4_channel_mix, and the wkv4 / log_scan ops), at B=4, T=2048, d_model=256.

Two baselines, same weights: "ref" = the mixer built with backend="reference" (its
recurrence runs as the plain loop linear_scan_ref / wkv4_ref / log_scan_ref, projections
still batched over T); "step" = the token-by-token recurrent form (T calls of mixer.step),
what a model without a parallel form would run.  Median of `--reps` timed calls after one warm-up; torch.nn.LSTM as yardstick.

    flock /tmp/rnnlab-bench.lock python benchmarks/diag_mixers.py [--T 2048] [--reps 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import rnnlab

MIXERS = ["lru", "hawk", "hgrn", "rwkv4", "mingru", "minlstm"]  # rwkv4_channel_mix has no recurrence (no backend)


def _time(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _fwd(m, x):
    with torch.no_grad():
        m(x)


def _fwd_bwd(m, x):
    m.zero_grad(set_to_none=True)
    xx = x.detach().requires_grad_()
    y, _ = m(xx)
    y.square().mean().backward()


def _rollout(m, x):
    state, ys = None, []
    for xt in x.split(1, dim=1):
        y, state = m(xt, state)
        ys.append(y)
    return torch.cat(ys, 1)


def _step_fwd(m, x):
    with torch.no_grad():
        _rollout(m, x)


def _step_fwd_bwd(m, x):
    m.zero_grad(set_to_none=True)
    _rollout(m, x.detach().requires_grad_()).square().mean().backward()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--D", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--ref-reps", type=int, default=1)
    p.add_argument("--mixers", default=",".join(MIXERS))
    a = p.parse_args()
    torch.manual_seed(0)
    x = torch.randn(a.B, a.T, a.D)
    ntok = a.B * a.T
    print(f"B={a.B} T={a.T} d_model={a.D} threads={torch.get_num_threads()}  (ms; ratio = reference / parallel)")
    print(f"{'mixer':18s} {'fwd par':>8s} {'fwd ref':>8s} {'x':>5s} {'fwd step':>8s} {'x':>5s} | {'f+b par':>8s} {'f+b ref':>8s} {'x':>5s} {'f+b step':>8s} {'x':>5s} | {'f+b tok/s':>9s}")
    for name in a.mixers.split(","):
        torch.manual_seed(0)
        fast = rnnlab.create_mixer(name, a.D)
        ref = rnnlab.create_mixer(name, a.D, backend="reference")
        ref.load_state_dict(fast.state_dict())
        t = {}
        for mode, fn, step_fn in (("fwd", _fwd, _step_fwd), ("fb", _fwd_bwd, _step_fwd_bwd)):
            t[mode, "par"] = _time(lambda: fn(fast, x), a.reps)
            t[mode, "ref"] = _time(lambda: fn(ref, x), a.ref_reps)
            t[mode, "step"] = _time(lambda: step_fn(fast, x), a.ref_reps)
        cols = []
        for mode in ("fwd", "fb"):
            par = t[mode, "par"]
            cols.append(f"{par*1e3:8.1f} {t[mode,'ref']*1e3:8.1f} {t[mode,'ref']/par:5.1f} {t[mode,'step']*1e3:8.0f} {t[mode,'step']/par:5.1f}")
        print(f"{name:18s} {cols[0]} | {cols[1]} | {ntok/t['fb','par']:9.0f}", flush=True)
    lstm = torch.nn.LSTM(a.D, a.D, batch_first=True)
    t_f = _time(lambda: lstm(x), a.reps)

    def lstm_fb():
        lstm.zero_grad(set_to_none=True)
        lstm(x.detach().requires_grad_())[0].square().mean().backward()

    t_fb = _time(lstm_fb, a.reps)
    pad = " " * 30
    print(f"{'nn.LSTM':18s} {t_f*1e3:8.1f} {pad} | {t_fb*1e3:8.1f} {pad} | {ntok/t_fb:9.0f}")


if __name__ == "__main__":
    main()
