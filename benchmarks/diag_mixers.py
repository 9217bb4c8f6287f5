"""Diagonal recurrences and SSMs (issue 3): each mixer's parallel form against its own reference
loop, with torch.nn.LSTM as a yardstick and HF transformers' MambaMixer (pure-PyTorch path) as the
peer of ``mamba``.  Default shapes: B=4, T in {512, 2048, 8192}, d_model=256, float32.

    flock /tmp/rnnlab-bench.lock python benchmarks/diag_mixers.py [--T 512,2048,8192] [--json out.json]

Rows, same weights in both columns of a mixer:
- "parallel": the mixer as created (``backend`` default: numba kernel / chunked scan / FFT).
- "reference": the same mixer built with ``backend="reference"``: its recurrence runs as the plain
  loop over t (``linear_scan_ref``, ``selective_scan_ref``, ``wkv4_ref``, ``log_scan_ref``, or the
  S4/S4D step), projections still batched over T.
- "step": the same (parallel) mixer run token by token through its recurrent form (T calls of
  ``mixer.step`` with the state carried): what a model without a parallel form would run.
- fwd: forward under no_grad; fwd+bwd: forward + backward of mean(y²) w.r.t. x and every parameter
  (ops: backward of a fixed random cotangent w.r.t. every input).
- ops (``--ops``, registered in rnnlab/bench/ops_diag.py): each form of the recurrence alone
  (numba kernel, parallel torch form) against its reference loop, on the op's own inputs.
Figures are tokens/s = B·T / seconds of the fastest timed call (``time_call``: one warm-up call,
then up to --reps calls within --budget seconds; on a machine shared with other work the fastest
call is the least perturbed one); peak MiB is ``peak_rss_delta`` of one fwd+bwd call (resident memory
above what was resident before it).  A reference (or HF) call predicted to take longer than
--max-call-s (linear extrapolation in T from the previous length; quadratic for HF fwd+bwd, whose
backward is O(T²)) is not run: its figure is printed as "~N" (the extrapolation) and marked skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

import rnnlab
from rnnlab import runtime
from rnnlab.bench.machine import describe_machine
from rnnlab.bench.registry import get_op_bench
from rnnlab.bench.timing import peak_rss_delta, time_call

MIXERS = ["s4d", "s4", "s5", "lru", "mamba", "longhorn", "hawk", "hgrn", "rwkv4", "mingru", "minlstm"]
OPS = ["linear_scan", "linear_scan_complex", "selective_scan", "wkv4", "log_scan"]


def _fwd(m):
    def run(x):
        with torch.no_grad():
            m(x)

    return run


def _fwd_bwd(m):
    def run(x):
        m.zero_grad(set_to_none=True)
        y = m(x.detach().requires_grad_())
        (y[0] if isinstance(y, tuple) else y).square().mean().backward()

    return run


def _rollout(m, x):
    state, ys = None, []
    for xt in x.split(1, dim=1):
        y, state = m(xt, state)
        ys.append(y)
    return torch.cat(ys, 1)


def _step_fwd(m):
    def run(x):
        with torch.no_grad():
            _rollout(m, x)

    return run


def _step_fwd_bwd(m):
    def run(x):
        m.zero_grad(set_to_none=True)
        _rollout(m, x.detach().requires_grad_()).square().mean().backward()

    return run


def _op_fns(fn, inputs):
    """fwd / fwd+bwd callables of an op form on fixed leaf inputs (their shape's x ignored)."""
    def fwd(_):
        with torch.no_grad():
            fn(**inputs)

    cot = {}

    def fb(_):
        for t in inputs.values():
            t.grad = None
        o = fn(**inputs)
        o = o[0] if isinstance(o, tuple) else o
        o.backward(cot.setdefault("o", torch.randn_like(o)))  # a fixed random cotangent: no loss ops timed

    return fwd, fb


class _Row:
    def __init__(self, name, form, T, B):
        self.d = dict(name=name, form=form, T=T, B=B)

    def measure(self, key, fn, x, a, predicted=None, mem=False):
        """Time fn(x) unless ``predicted`` seconds exceed the limit (then record the extrapolation)."""
        ntok = x.shape[0] * x.shape[1]
        if predicted is not None and predicted > a.max_call_s:
            self.d[key] = ntok / predicted
            self.d[key + "_skipped"] = True
            return predicted
        t = time_call(lambda: fn(x), warmup=1, reps=a.reps, budget_s=a.budget).lo  # fastest: least perturbed by other load
        self.d[key] = ntok / t
        if mem:
            self.d[key + "_peak_mib"] = (peak_rss_delta(lambda: fn(x)) or 0) / 2**20
        return t


def _hf_mamba(D):
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    cfg = MambaConfig(hidden_size=D, state_size=16, expand=2, conv_kernel=4, num_hidden_layers=1, use_mambapy=False)
    return MambaMixer(cfg, layer_idx=0)


def _fmt(v, skipped=False):
    if v is None:
        return "—"
    s = f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}" if v >= 10 else f"{v:.1f}"
    return "~" + s if skipped else s


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", default="512,2048,8192")
    p.add_argument("--D", type=int, default=256)
    p.add_argument("--mixers", default=",".join(MIXERS))
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--budget", type=float, default=3.0)
    p.add_argument("--max-call-s", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    runtime.set_threads(a.threads)  # torch and numba: a script is an entry point (rnnlab/runtime.py)
    runtime.tune_allocator()  # as `rnnlab bench` does
    Ts = [int(t) for t in a.T.split(",")]
    print(f"# B={a.B} d_model={a.D} T={Ts} threads={a.threads} load={os.getloadavg()[0]:.1f}", flush=True)
    rows = []

    def emit(r):
        rows.append(r.d)
        d = r.d
        cols = [_fmt(d.get(k), d.get(k + "_skipped", False)) for k in ("fwd", "fb")]
        print(f"{d['name']:10s} {d['form']:9s} T={d['T']:5d}  fwd {cols[0]:>7s} tok/s  fwd+bwd {cols[1]:>7s} tok/s"
              f"  peak {d.get('fb_peak_mib', float('nan')):7.1f} MiB", flush=True)

    for name in [m for m in a.mixers.split(",") if m]:
        torch.manual_seed(0)
        fast = rnnlab.create_mixer(name, a.D)
        ref = rnnlab.create_mixer(name, a.D, backend="reference")
        ref.load_state_dict(fast.state_dict())
        prev = {}
        for T in Ts:
            x = torch.randn(a.B, T, a.D)
            forms = (("parallel", _fwd(fast), _fwd_bwd(fast)), ("reference", _fwd(ref), _fwd_bwd(ref)),
                     ("step", _step_fwd(fast), _step_fwd_bwd(fast)))
            for form, f_fwd, f_fb in forms:
                r = _Row(name, form, T, a.B)
                r.d["state_floats"] = fast.state_size(T)
                for key, fn in (("fwd", f_fwd), ("fb", f_fb)):
                    pred = prev.get((form, key))
                    pred = pred * T / prev["T"] if pred is not None else None
                    prev[form, key] = r.measure(key, fn, x, a, predicted=pred if form != "parallel" else None,
                                                mem=(key == "fb" and not r.d.get("fb_skipped") and form != "step"))
                emit(r)
            prev["T"] = T
    for name in [o for o in a.ops.split(",") if o]:
        ob = get_op_bench(name)
        prev = {}
        for T in Ts:
            inputs = ob.make_inputs(a.B, T, torch.float32, "cpu")
            x = torch.empty(a.B, T, 0)  # only its (B, T) counts tokens
            for form, fn in ob.forms.items():
                r = _Row(name, form, T, a.B)
                r.d["kind"] = "op"
                for key, f in zip(("fwd", "fb"), _op_fns(fn, inputs)):
                    pred = prev.get((form, key))
                    pred = pred * T / prev["T"] if pred is not None else None
                    prev[form, key] = r.measure(key, f, x, a, predicted=pred if form == ob.baseline else None,
                                                mem=(key == "fb" and not r.d.get("fb_skipped")))
                emit(r)
            prev["T"] = T
    for T in Ts:  # yardstick
        x = torch.randn(a.B, T, a.D)
        lstm = torch.nn.LSTM(a.D, a.D, batch_first=True)
        r = _Row("nn.LSTM", "oneDNN", T, a.B)
        r.measure("fwd", _fwd(lstm), x, a)
        r.measure("fb", _fwd_bwd(lstm), x, a, mem=True)
        emit(r)
    if not a.no_peers:
        try:
            hf = _hf_mamba(a.D)
        except ImportError as e:
            print(f"# HF MambaMixer skipped: {e}")
            hf = None
        prev = {}
        for T in Ts if hf is not None else []:
            x = torch.randn(a.B, T, a.D)
            r = _Row("hf.Mamba", "torch", T, a.B)
            r.d["note"] = "HF MambaMixer pure-PyTorch path (use_mambapy=False), d_state 16, expand 2"
            for key, fn, power in (("fwd", _fwd(hf), 1), ("fb", _fwd_bwd(hf), 2)):
                pred = prev.get(key)
                pred = pred * (T / prev["T"]) ** power if pred is not None else None
                prev[key] = r.measure(key, fn, x, a, predicted=pred, mem=(key == "fb"))
            prev["T"] = T
            emit(r)
    _summary(rows, Ts)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": describe_machine(), "argv": sys.argv, "load_after": os.getloadavg()[0], "rows": rows}, f, indent=1)


def _summary(rows, Ts):
    """Markdown table: tokens/s of both forms and their ratio per mixer and T, then the peers."""
    by = {(r["name"], r["form"], r["T"]): r for r in rows}
    print("\n| mixer / op form | T | fwd tok/s | fwd reference loop | × | fwd+bwd tok/s | fwd+bwd reference loop | × | × vs step | peak MiB fwd+bwd (ref) | state floats |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    pairs = [(r["name"], "parallel", False) for r in rows if r["form"] == "parallel" and r.get("kind") != "op"]
    pairs += [(r["name"], r["form"], True) for r in rows if r.get("kind") == "op" and r["form"] != "reference"]
    for name, form, is_op in dict.fromkeys(pairs):
        for T in Ts:
            p, q = by.get((name, form, T)), by.get((name, "reference", T))
            if p is None or q is None:
                continue
            name_col = f"op `{name}` {form}" if is_op else f"`{name}`"
            rf, rb = p["fwd"] / q["fwd"], p["fb"] / q["fb"]
            sk = "~" if q.get("fb_skipped") or q.get("fwd_skipped") else ""
            mem_q = f"{q['fb_peak_mib']:.0f}" if "fb_peak_mib" in q else "—"
            state = p.get("state_floats", "")
            st = by.get((name, "step", T))
            vs_step = "—" if st is None else ("~" if st.get("fb_skipped") else "") + f"{p['fb'] / st['fb']:.0f}"
            print(f"| {name_col} | {T} | {_fmt(p['fwd'])} | {_fmt(q['fwd'], q.get('fwd_skipped'))} | {sk}{rf:.1f} | "
                  f"{_fmt(p['fb'])} | {_fmt(q['fb'], q.get('fb_skipped'))} | {sk}{rb:.1f} | {vs_step} | {p['fb_peak_mib']:.0f} ({mem_q}) | {state} |")
    for peer in ("nn.LSTM", "hf.Mamba"):
        for T in Ts:
            r, m = by.get((peer, rows and next((r["form"] for r in rows if r["name"] == peer), ""), T)), by.get(("mamba", "parallel", T))
            if r is None:
                continue
            vs = ""
            if peer == "hf.Mamba" and m is not None:
                vs = f" (mamba ÷ HF: fwd {m['fwd'] / r['fwd']:.1f}×, fwd+bwd {m['fb'] / r['fb']:.0f}×)"
            print(f"| {peer} | {T} | {_fmt(r['fwd'], r.get('fwd_skipped'))} | | | {_fmt(r['fb'], r.get('fb_skipped'))} | | | | "
                  f"{r.get('fb_peak_mib', float('nan')):.0f} | {vs} |")


if __name__ == "__main__":
    main()
