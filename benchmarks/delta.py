"""Issue-8 benchmark: chunkwise delta rule vs its reference loop, chunk_gla and the HF peer.

    flock /tmp/rnnlab-bench.lock python benchmarks/delta.py [--lens 512,2048,8192] [--dtypes fp32,bf16]

Shape B=4, H=4, K=V=64. Rows: tokens/s forward+backward (loss = <o, random cotangent>) and
forward-only (no_grad), median of several calls after a warm-up; ratios are taken against
rows measured in the same process. Memory: bytes of tensors saved for backward (autograd
saved-tensor hooks, deduplicated by storage) and the peak-RSS delta of one fwd+bwd call.
The HF peer (transformers' pure-PyTorch ``torch_chunk_gated_delta_rule``, Qwen3-Next) runs
only when transformers is importable; otherwise its rows say so.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys

import torch

from rnnlab.bench.timing import peak_rss_delta, time_call
from rnnlab.ops import delta as D
from rnnlab.testing import rel_err

B, H, K, V = 4, 4, 64, 64
DT = {"fp32": torch.float32, "bf16": torch.bfloat16}


def inputs(T, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = D.l2norm(torch.randn(B, T, H, K, generator=gen))
    v = torch.randn(B, T, H, V, generator=gen)
    g = -0.1 * torch.rand(B, T, H, generator=gen)
    beta = torch.rand(B, T, H, generator=gen)
    return dict(q=q.to(dtype), k=k.to(dtype), v=v.to(dtype), g=g, beta=beta)


def saved_bytes(fn, ins):
    seen, total = set(), [0]

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    leaves = {n: t.detach().requires_grad_() for n, t in ins.items()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(**leaves)
    del out
    return total[0]


def measure(fn, ins, reps=5, budget=6.0, memory=False):
    leaves = {n: t.detach().requires_grad_() for n, t in ins.items()}
    with torch.no_grad():
        cot = torch.randn_like(fn(**leaves)[0].float())

    def fb():
        for t in leaves.values():
            t.grad = None
        o = fn(**leaves)[0]
        o.float().backward(cot)

    def fwd():
        with torch.no_grad():
            fn(**leaves)

    t_fb = time_call(fb, warmup=1, reps=reps, budget_s=budget).median
    t_f = time_call(fwd, warmup=1, reps=reps, budget_s=budget / 2).median
    row = {"fb": t_fb, "f": t_f}
    if memory:
        row["saved"] = saved_bytes(fn, ins)
        row["rss"] = peak_rss_delta(fb)
    return row


def fmt(row, T):
    s = f"fwd+bwd {B * T / row['fb'] / 1e3:8.1f}k tok/s   fwd {B * T / row['f'] / 1e3:8.1f}k tok/s"
    if "saved" in row:
        rss = f"{row['rss'] / 2**20:7.1f} MiB" if row.get("rss") is not None else "   n/a"
        s += f"   saved {row['saved'] / 2**20:7.1f} MiB   peak-RSS {rss}"
    return s


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lens", default="512,2048,8192")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--ref-max-len", type=int, default=2048, help="skip the reference loops above this T")
    p.add_argument("--chunk-size", type=int, default=64)
    a = p.parse_args(argv)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, B={B} H={H} K=V={K}, chunk {a.chunk_size}")
    has_gla = importlib.util.find_spec("rnnlab.ops.gla") is not None
    has_hf = importlib.util.find_spec("transformers") is not None
    C = a.chunk_size
    forms = {
        "chunk_gated_delta_rule": lambda **kw: D.chunk_gated_delta_rule(**kw, chunk_size=C),
        "chunk_delta_rule": lambda g, **kw: D.chunk_delta_rule(**kw, chunk_size=C),
    }
    loops = {"naive_recurrent (reference)": D.naive_recurrent_gated_delta_rule, "fused_recurrent": D.fused_recurrent_gated_delta_rule}
    if has_gla:
        from rnnlab.ops.gla import chunk_gla

        def gla(q, k, v, g, beta):  # same shape, per-key decay broadcast from the per-head gate
            return chunk_gla(q, k, v, g[..., None].expand(*g.shape, K), chunk_size=64)

        forms["chunk_gla (matrix family)"] = gla
    for dname in a.dtypes.split(","):
        for T in map(int, a.lens.split(",")):
            ins = inputs(T, DT[dname])
            print(f"\n== {dname} T={T}")
            res = {}
            for name, fn in forms.items():
                res[name] = measure(fn, ins, memory=True)
                print(f"  {name:34s} {fmt(res[name], T)}")
            base = res["chunk_gated_delta_rule"]
            if T <= a.ref_max_len:
                for name, fn in loops.items():
                    r = measure(fn, ins, reps=3, budget=8.0)
                    print(f"  {name:34s} {fmt(r, T)}   -> chunk is {r['fb'] / base['fb']:.1f}x fwd+bwd, {r['f'] / base['f']:.1f}x fwd")
            if "chunk_gla (matrix family)" in res:
                r = res["chunk_gla (matrix family)"]
                print(f"  delta rule / chunk_gla time: gated {base['fb'] / r['fb']:.2f}x, plain {res['chunk_delta_rule']['fb'] / r['fb']:.2f}x (fwd+bwd)")
            if T == 2048 and dname == "fp32":
                if not has_hf:
                    print("  peer transformers torch_chunk_gated_delta_rule: skipped (transformers not importable)")
                else:
                    from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule

                    def hf(q, k, v, g, beta):
                        return torch_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64)

                    r = measure(hf, ins, reps=3)
                    with torch.no_grad():
                        err = rel_err(D.chunk_gated_delta_rule(**ins)[0], hf(**ins)[0])
                    print(f"  {'peer HF torch_chunk_gated_delta_rule':34s} {fmt(r, T)}   -> ours {r['fb'] / base['fb']:.2f}x fwd+bwd, "
                          f"{r['f'] / base['f']:.2f}x fwd; rel err of outputs {err:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
