"""Issue-7 benchmark: the matrix-state ops' chunkwise forms vs their reference loops and causal softmax
attention, achieved GFLOP/s vs this machine's matmul throughput, and the mamba2 / mlstm mixers vs the
pure-PyTorch paths of HF transformers' Mamba2Mixer and xLSTM mLSTM layer (when transformers is importable).

    flock /tmp/rnnlab-bench.lock python benchmarks/linear_attention.py [--lens 512,2048,8192]
        [--dtypes fp32,bf16] [--ops gla,simple_gla,linear_attn,rwkv6,mlstm] [--threads 2] [--no-ops] [--no-mixers]

Ops: B=4, H=4, K=V=64; mixers: B=4, T=2048, d_model=256. Tokens/s of forward (no_grad) and
forward+backward (gradients of every input) = B·T / median seconds of several calls after a warm-up;
every ratio is between rows measured in this process. Reference loops run up to T=2048 (they compute
in float32 whatever the input dtype, so they are timed once per length, on float32 inputs).
GFLOP/s: rnnlab.bench.ops_gla.chunk_gla_flops (forward matmul FLOPs) / forward seconds, as a fraction
of the torch.mm 1024³ throughput measured at the start.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from rnnlab.bench.machine import measure_roofline
from rnnlab.bench.ops_gla import OP_FORMS, chunk_gla_flops, make_inputs
from rnnlab.bench.timing import time_call

B = 4
DT = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sdpa(q, k, v, **_):
    """Causal softmax attention at the same shapes, (B, T, H, K) in and out."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)


def measure(fn, ins, reps, budget):
    """fn(**ins) -> output or (output, ...); -> (median seconds forward, median seconds forward+backward)."""
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    with torch.no_grad():
        cot = torch.randn_like(first(fn(**ins)).float())

    def fwd():
        with torch.no_grad():
            fn(**ins)

    def fb():
        for t in ins.values():
            t.grad = None
        first(fn(**ins)).float().backward(cot)

    return time_call(fwd, warmup=1, reps=reps, budget_s=budget).median, time_call(fb, warmup=1, reps=reps, budget_s=2 * budget).median


def bench_ops(lens, dtypes, ops, roof):
    hdr = f"{'op / form':<28}{'dtype':<6}{'T':>6} {'fwd tok/s':>10} {'f+b tok/s':>10} {'GFLOP/s':>8} {'% mm':>5} {'f+b x ref':>10} {'fwd x sdpa':>10} {'f+b x sdpa':>10}"
    print(hdr, flush=True)
    for T in lens:
        reps, budget = (5, 3.0) if T <= 2048 else (3, 5.0)
        ref = {}
        if T <= 2048:
            for op in ops:
                ref[op] = measure(OP_FORMS[op][0], make_inputs(op, B, T, torch.float32), 1, 1.0)
                print(f"{op + ' reference loop':<28}{'fp32':<6}{T:>6} {B * T / ref[op][0]:>10.0f} {B * T / ref[op][1]:>10.0f}", flush=True)
        for dname in dtypes:
            dtype = DT[dname]
            peak = roof["matmul_gflops"][str(dtype).removeprefix("torch.")]
            s = measure(sdpa, make_inputs("linear_attn", B, T, dtype), reps, budget)
            gf = 2.0 * B * 4 * T * T * (64 + 64) / 2 / s[0] / 1e9  # QKᵀ and PV over the causal half
            print(f"{'sdpa (causal)':<28}{dname:<6}{T:>6} {B * T / s[0]:>10.0f} {B * T / s[1]:>10.0f} {gf:>8.1f} {100 * gf / peak:>4.0f}%", flush=True)
            for op in ops:
                t = measure(OP_FORMS[op][2], make_inputs(op, B, T, dtype), reps, budget)
                gf = chunk_gla_flops(B, T) / t[0] / 1e9
                x_ref = f"{ref[op][1] / t[1]:>9.1f}x" if op in ref else f"{'':>10}"
                print(f"{'chunk_' + op:<28}{dname:<6}{T:>6} {B * T / t[0]:>10.0f} {B * T / t[1]:>10.0f} {gf:>8.1f} {100 * gf / peak:>4.0f}% "
                      f"{x_ref} {s[0] / t[0]:>9.2f}x {s[1] / t[1]:>9.2f}x", flush=True)


def bench_mixers(T=2048, d_model=256):
    """rnnlab's mamba2 and mlstm mixers vs HF's pure-PyTorch Mamba2Mixer and xLSTM mLSTM layer (train mode)."""
    from rnnlab.bench.peers import build_peers
    from rnnlab.layers.registry import create_mixer

    x = torch.randn(B, T, d_model)

    def run(name, module, fn):
        xg = x.clone().requires_grad_()

        def fwd():
            with torch.no_grad():
                fn(x)

        def fb():
            xg.grad = None
            for p in module.parameters():
                p.grad = None
            out = fn(xg)
            (out[0] if isinstance(out, tuple) else out).float().sum().backward()

        t_f = time_call(fwd, warmup=1, reps=5, budget_s=4).median
        t_fb = time_call(fb, warmup=1, reps=5, budget_s=8).median
        params = sum(p.numel() for p in module.parameters())
        print(f"{name:<48} params {params:>8}  fwd {B * T / t_f:>8.0f} tok/s  fwd+bwd {B * T / t_fb:>8.0f} tok/s", flush=True)
        return t_f, t_fb

    torch.manual_seed(0)
    peers, notes = build_peers(d_model, only_vs={"mamba2", "mlstm"})
    for n in notes:
        print("note:", n)
    ours = {"mamba2": create_mixer("mamba2", d_model, d_state=64, headdim=64, chunk_size=64),  # HF peer's config
            "mlstm": create_mixer("mlstm", d_model, num_heads=4, chunk_size=64)}
    for name, m in ours.items():
        m.train()
        a = run(f"rnnlab {name} ({m.extra_repr()})", m, lambda t, m=m: m(t)[0])
        for p in (p for p in peers if p.vs == name):
            p.module.train()
            b = run(f"{p.name} ({p.note})"[:48], p.module, p.fwd)
            print(f"  {name} / {p.name}: fwd {b[0] / a[0]:.2f}x, fwd+bwd {b[1] / a[1]:.2f}x", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lens", default="512,2048,8192")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--ops", default=",".join(OP_FORMS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-ops", action="store_true")
    p.add_argument("--no-mixers", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    if not a.no_ops:
        roof = measure_roofline(quick=True)
        print(f"measured matmul GFLOP/s (torch.mm 1024^3): {roof['matmul_gflops']}  (bmm 64x64 tiles: {roof['bmm64_gflops']})")
        bench_ops([int(t) for t in a.lens.split(",")], a.dtypes.split(","), a.ops.split(","), roof)
    if not a.no_mixers:
        bench_mixers()
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
