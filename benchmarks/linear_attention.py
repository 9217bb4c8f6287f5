"""Issue-7 benchmark: the matrix-state ops' chunkwise forms vs their reference loops and causal softmax
attention, achieved GFLOP/s vs this machine's matmul throughput, and the mamba2 / mlstm mixers vs the
pure-PyTorch paths of HF transformers' Mamba2Mixer and xLSTM mLSTM layer (when transformers is importable).

    flock /tmp/rnnlab-bench.lock python benchmarks/linear_attention.py [--lens 512,2048,8192]
        [--dtypes fp32,bf16] [--ops gla,simple_gla,linear_attn,rwkv6,mlstm] [--threads 2] [--no-ops] [--no-mixers]

Ops: B=4, H=4, K=V=64; mixers: B=4, T=2048, d_model=256. Tokens/s of forward (no_grad) and
forward+backward (gradients of every input) = B·T / best-of seconds; the rows of one comparison run in
turns (one call each per round, several rounds), so that the load of a shared machine hits them alike. Reference loops run up to T=2048 (they compute
in float32 whatever the input dtype, so they are timed once per length, on float32 inputs).
GFLOP/s: rnnlab.bench.ops_gla.chunk_gla_flops (forward matmul FLOPs) / forward seconds, as a fraction
of the torch.mm 1024³ throughput measured at the start.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from rnnlab import runtime
from rnnlab.bench.machine import measure_roofline
from rnnlab.bench.timing import fwd_and_train, race
from rnnlab.bench.ops_gla import OP_FORMS, chunk_gla_flops, make_inputs

B = 4
DT = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sdpa(q, k, v, **_):
    """Causal softmax attention at the same shapes, (B, T, H, K) in and out."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)


def bench_ops(lens, dtypes, ops, roof):
    hdr = f"{'op / form':<28}{'dtype':<6}{'T':>6} {'fwd tok/s':>10} {'f+b tok/s':>10} {'GFLOP/s':>8} {'% mm':>5} {'f+b x ref':>10} {'fwd x sdpa':>10} {'f+b x sdpa':>10}"
    print(hdr, flush=True)
    for T in lens:
        budget = 6.0 if T <= 2048 else 15.0
        ref = {}
        if T <= 2048:  # reference loops compute in float32 whatever the input dtype: once per length
            for op in ops:
                f, fb = fwd_and_train(OP_FORMS[op][0], make_inputs(op, B, T, torch.float32))
                t = race({"fwd": f, "fb": fb}, budget_s=0.0, max_rounds=2)
                ref[op] = t["fb"]
                print(f"{op + ' reference loop':<28}{'fp32':<6}{T:>6} {B * T / t['fwd']:>10.0f} {B * T / t['fb']:>10.0f}", flush=True)
        for dname in dtypes:
            dtype = DT[dname]
            peak = roof["matmul_gflops"][str(dtype).removeprefix("torch.")]
            forms = {"sdpa": fwd_and_train(sdpa, make_inputs("linear_attn", B, T, dtype))}
            forms.update({op: fwd_and_train(OP_FORMS[op][2], make_inputs(op, B, T, dtype)) for op in ops})
            tf = race({n: f for n, (f, _) in forms.items()}, budget)
            tb = race({n: fb for n, (_, fb) in forms.items()}, 2 * budget)
            gf = 2.0 * B * 4 * T * T * (64 + 64) / 2 / tf["sdpa"] / 1e9  # QKᵀ and PV over the causal half
            print(f"{'sdpa (causal)':<28}{dname:<6}{T:>6} {B * T / tf['sdpa']:>10.0f} {B * T / tb['sdpa']:>10.0f} {gf:>8.1f} {100 * gf / peak:>4.0f}%", flush=True)
            for op in ops:
                gf = chunk_gla_flops(B, T) / tf[op] / 1e9
                x_ref = f"{ref[op] / tb[op]:>9.1f}x" if op in ref else f"{'':>10}"
                print(f"{'chunk_' + op:<28}{dname:<6}{T:>6} {B * T / tf[op]:>10.0f} {B * T / tb[op]:>10.0f} {gf:>8.1f} {100 * gf / peak:>4.0f}% "
                      f"{x_ref} {tf['sdpa'] / tf[op]:>9.2f}x {tb['sdpa'] / tb[op]:>9.2f}x", flush=True)


def bench_mixers(T=2048, d_model=256):
    """rnnlab's mamba2 and mlstm mixers vs HF's pure-PyTorch Mamba2Mixer and xLSTM mLSTM layer (train mode)."""
    from rnnlab.bench.peers import build_peers
    from rnnlab.layers.registry import create_mixer

    x = torch.randn(B, T, d_model)

    def calls(module, fn):
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

        return fwd, fb

    torch.manual_seed(0)
    peers, notes = build_peers(d_model, only_vs={"mamba2", "mlstm"})
    for n in notes:
        print("note:", n)
    # (peer it is compared with, mixer): mamba2 in the HF peer's config; mlstm as the xLSTM paper's block
    # (proj_factor 2: 4 heads of 128) and at proj_factor 1, HF's head count and value width (4 heads of 64;
    # HF's layer, xLSTM-7B's, has no up-projection and qk 32 per head, which the paper's block cannot express)
    ours = [("mamba2", create_mixer("mamba2", d_model, d_state=64, headdim=64, chunk_size=64)),
            ("mlstm", create_mixer("mlstm", d_model, num_heads=4, chunk_size=64)),
            ("mlstm", create_mixer("mlstm", d_model, num_heads=4, proj_factor=1.0, chunk_size=64))]
    for name, m in ours:
        rows = {f"rnnlab {name} ({m.extra_repr()})": (m, calls(m.train(), lambda t, m=m: m(t)[0]))}
        rows.update({f"{p.name} ({p.note})": (p.module, calls(p.module.train(), p.fwd)) for p in peers if p.vs == name})
        tf = race({n: c[0] for n, (_, c) in rows.items()}, 8.0)
        tb = race({n: c[1] for n, (_, c) in rows.items()}, 16.0)
        first = next(iter(rows))
        for n, (mod, _) in rows.items():
            params = sum(p.numel() for p in mod.parameters())
            ratio = "" if n == first else f"   rnnlab {name} / this: fwd {tf[n] / tf[first]:.2f}x, fwd+bwd {tb[n] / tb[first]:.2f}x"
            print(f"{n[:90]:<90} params {params:>7}  fwd {B * T / tf[n]:>7.0f} tok/s  fwd+bwd {B * T / tb[n]:>7.0f} tok/s{ratio}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lens", default="512,2048,8192")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--ops", default=",".join(OP_FORMS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-ops", action="store_true")
    p.add_argument("--no-mixers", action="store_true")
    a = p.parse_args(argv)
    runtime.set_threads(a.threads)  # torch and numba: a script is an entry point (rnnlab/runtime.py)
    runtime.tune_allocator()  # as `rnnlab bench` does
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
