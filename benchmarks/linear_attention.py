"""Issue-7 benchmark: chunkwise gated linear attention ops vs their reference loops and causal
softmax attention; achieved GFLOP/s vs this machine's matmul throughput; the mamba2 mixer vs
HF transformers' Mamba-2 mixer (pure-PyTorch path) when transformers is importable.

    flock /tmp/rnnlab-bench.lock python benchmarks/linear_attention.py [--lens 512,2048,8192]
        [--dtypes fp32,bf16] [--ops chunk_gla,chunk_simple_gla,chunk_linear_attn,sdpa] [--mixer]

Shape B=4, H=4, K=V=64 (ops); B=4, T=2048, d_model=256 (mixers). Tokens/s of forward (no_grad)
and forward+backward (loss = <o, random cotangent>), median of several calls after a warm-up;
ratios against rows measured in the same process. The reference loops run up to T=2048.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from rnnlab.bench.machine import measure_roofline
from rnnlab.bench.ops_gla import _inputs, chunk_gla_flops
from rnnlab.bench.timing import time_call
from rnnlab.ops import gla as G

B, H, K, V = 4, 4, 64, 64
DT = {"fp32": torch.float32, "bf16": torch.bfloat16}
OPS = {
    "chunk_gla": ("vector", G.chunk_gla, G.naive_recurrent_gla),
    "chunk_simple_gla": ("scalar", G.chunk_simple_gla, G.naive_recurrent_simple_gla),
    "chunk_linear_attn": (None, G.chunk_linear_attn, G.naive_recurrent_linear_attn),
}


def sdpa(q, k, v, **_):
    """Causal softmax attention at the same shapes, (B, T, H, K) in and out."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return o.transpose(1, 2), None


def sdpa_flops(B_, T):
    """QKᵀ and PV over the causal half: 2 · 2 · T²/2 · K per (batch, head)."""
    return 2.0 * B_ * H * T * T * (K + V) / 2


def measure(fn, ins, reps, budget):
    """-> (seconds fwd, seconds fwd+bwd), medians."""
    leaves = {n: t.detach().requires_grad_() for n, t in ins.items()}
    with torch.no_grad():
        cot = torch.randn_like(fn(**leaves)[0].float())

    def fb():
        for t in leaves.values():
            t.grad = None
        fn(**leaves)[0].float().backward(cot)

    def fwd():
        with torch.no_grad():
            fn(**leaves)

    t_f = time_call(fwd, warmup=1, reps=reps, budget_s=budget / 2).median
    t_fb = time_call(fb, warmup=1, reps=reps, budget_s=budget).median
    return t_f, t_fb


def bench_ops(lens, dtypes, ops, roof):
    print(f"{'op':<18}{'dtype':<6}{'T':>6} {'fwd tok/s':>11} {'fwd+bwd tok/s':>14} {'fwd GFLOP/s':>12} {'% of mm':>8} {'fb x ref':>9} {'fb x sdpa':>10} {'f x sdpa':>9}")
    for dname in dtypes:
        dtype = DT[dname]
        peak = roof["matmul_gflops"][str(dtype).removeprefix("torch.")]
        for T in lens:
            reps, budget = (5, 4.0) if T <= 2048 else (3, 6.0)
            ins0 = _inputs(B, T, dtype, "cpu", None)
            s_f, s_fb = measure(sdpa, ins0, reps, budget)
            print(f"{'sdpa (causal)':<18}{dname:<6}{T:>6} {B * T / s_f:>11.0f} {B * T / s_fb:>14.0f} {sdpa_flops(B, T) / s_f / 1e9:>12.1f} {100 * sdpa_flops(B, T) / s_f / 1e9 / peak:>7.0f}%", flush=True)
            for name in ops:
                gate, chunk, naive = OPS[name]
                ins = _inputs(B, T, dtype, "cpu", gate)
                t_f, t_fb = measure(chunk, ins, reps, budget)
                gf = chunk_gla_flops(B, T) / t_f / 1e9
                ref = ""
                if T <= 2048:
                    r_f, r_fb = measure(naive, ins, 2, budget)
                    ref = f"{r_fb / t_fb:>8.1f}x"
                    print(f"{'  reference loop':<18}{dname:<6}{T:>6} {B * T / r_f:>11.0f} {B * T / r_fb:>14.0f}", flush=True)
                print(f"{name:<18}{dname:<6}{T:>6} {B * T / t_f:>11.0f} {B * T / t_fb:>14.0f} {gf:>12.1f} {100 * gf / peak:>7.0f}% {ref:>9} {s_fb / t_fb:>9.2f}x {s_f / t_f:>8.2f}x", flush=True)


def bench_mixers(T=2048, d_model=256):
    from rnnlab.layers.registry import create_mixer

    x = torch.randn(B, T, d_model)
    rows = {}

    def run(name, mod, call):
        xg = x.clone().requires_grad_()

        def fb():
            xg.grad = None
            for p in mod.parameters():
                p.grad = None
            call(mod, xg).sum().backward()

        def fwd():
            with torch.no_grad():
                call(mod, x)

        t_f = time_call(fwd, warmup=1, reps=5, budget_s=4).median
        t_fb = time_call(fb, warmup=1, reps=5, budget_s=6).median
        rows[name] = (t_f, t_fb)
        print(f"{name:<34} fwd {B * T / t_f:>9.0f} tok/s   fwd+bwd {B * T / t_fb:>9.0f} tok/s", flush=True)

    torch.manual_seed(0)
    run("rnnlab mamba2 (chunk 64)", create_mixer("mamba2", d_model), lambda m, t: m(t)[0])
    try:
        from transformers import Mamba2Config
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
    except Exception as e:  # noqa: BLE001
        print(f"HF Mamba-2 peer: transformers not importable ({type(e).__name__}: {e})")
        return
    cfg = Mamba2Config(hidden_size=d_model, num_heads=2 * d_model // 64, head_dim=64, state_size=128, expand=2, n_groups=1, num_hidden_layers=1)
    hf = Mamba2Mixer(cfg, layer_idx=0)
    run(f"HF Mamba2Mixer torch path (chunk {cfg.chunk_size})", hf, lambda m, t: m(t))
    a, b = rows["rnnlab mamba2 (chunk 64)"], rows[f"HF Mamba2Mixer torch path (chunk {cfg.chunk_size})"]
    print(f"mamba2 / HF: fwd {b[0] / a[0]:.2f}x, fwd+bwd {b[1] / a[1]:.2f}x")
    for name in ("gla", "retnet", "hgrn2", "linear_attention"):
        run(f"rnnlab {name}", create_mixer(name, d_model), lambda m, t: m(t)[0])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lens", default="512,2048,8192")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--mixer", action="store_true", help="only the mixer rows (mamba2 vs HF, and the other mixers)")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if a.mixer:
        bench_mixers()
        return
    roof = measure_roofline(quick=True)
    print(f"measured matmul GFLOP/s: {roof['matmul_gflops']}  (bmm 64x64 tiles: {roof['bmm64_gflops']})")
    bench_ops([int(t) for t in a.lens.split(",")], a.dtypes.split(","), a.ops.split(","), roof)


if __name__ == "__main__":
    main()
