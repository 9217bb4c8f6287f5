"""Issue-8 benchmark: the chunkwise delta rule vs its reference loops, the GLA ops and the HF peer.

    flock /tmp/rnnlab-bench.lock python benchmarks/delta.py [--lens 512,2048,8192] [--dtypes fp32,bf16]
        [--threads 2] [--ref-max-len 2048] [--chunk-size 64] [--budget 8] [--g-max 0.1]

Shape B=4, H=4, K=V=64, log-decay g ~ −U(0, g_max) (``--g-max``, default 0.1; 3 gives the strong decays
of trained Mamba-2 / Gated DeltaNet layers), β ~ U(0, 1), L2-normalized keys. Tokens/s of the
forward (no_grad) and forward+backward (loss = <o, random cotangent>, gradients of every input) =
B·T / best-of seconds. The rows compared at one shape run in turns (one call of each per round, after
a warm-up round, until ``--budget`` seconds), so a change of a shared machine's load hits them alike;
ratios are taken between rows of the same race. Rows:

* ``chunk_gated_delta_rule`` / ``chunk_delta_rule``: rnnlab's chunkwise WY/UT forms;
* ``chunk_simple_gla`` (the same scalar gate, no delta correction) and ``chunk_gla`` (the issue-7 op,
  the gate broadcast per key): the matrix-state family at the same shapes;
* ``HF torch_chunk_gated_delta_rule``: transformers' pure-PyTorch Qwen3-Next kernel (float32 inputs
  only; skipped with a note when transformers is not importable);
* reference loops (``naive_recurrent``, the specification, and the rank-one ``fused_recurrent``) up
  to ``--ref-max-len``; they compute in float32, so they are raced once per length on float32 inputs.

Memory: bytes of the tensors saved for backward (saved-tensor hooks, deduplicated by storage) and
the peak-RSS growth of one forward+backward call (rnnlab.bench.timing.peak_rss_delta).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import torch

from rnnlab import runtime
from rnnlab.bench.timing import fwd_and_train, peak_rss_delta, race
from rnnlab.ops import delta as D
from rnnlab.ops.gla import chunk_gla, chunk_simple_gla
from rnnlab.testing import rel_err

B, H, K, V = 4, 4, 64, 64
DT = {"fp32": torch.float32, "bf16": torch.bfloat16}


def inputs(T, dtype, seed=0, g_max=0.1):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = D.l2norm(torch.randn(B, T, H, K, generator=gen))
    v = torch.randn(B, T, H, V, generator=gen)
    g = -g_max * torch.rand(B, T, H, generator=gen)
    beta = torch.rand(B, T, H, generator=gen)
    return dict(q=q.to(dtype), k=k.to(dtype), v=v.to(dtype), g=g, beta=beta)


def hf_peer():
    if importlib.util.find_spec("transformers") is None:
        return None
    from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule

    return lambda q, k, v, g, beta: torch_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64)


def forms(C):
    """name -> fn(q, k, v, g, beta) -> (o, ...): the rows raced at every shape."""
    return {
        "chunk_gated_delta_rule": lambda **kw: D.chunk_gated_delta_rule(**kw, chunk_size=C),
        "chunk_delta_rule": lambda g, **kw: D.chunk_delta_rule(**kw, chunk_size=C),
        "chunk_simple_gla": lambda q, k, v, g, beta: chunk_simple_gla(q, k, v, g, chunk_size=64),
        "chunk_gla": lambda q, k, v, g, beta: chunk_gla(q, k, v, g[..., None].expand(*g.shape, K), chunk_size=64),
    }


def saved_bytes(fn, ins):
    """Bytes of the tensors autograd saves for backward (each storage counted once)."""
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


def run_shape(rows: dict, ins: dict, T: int, budget: float, memory: bool) -> dict:
    """Race the forward calls, then the forward+backward calls of ``rows``; -> name -> result dict."""
    leaves = {n: t.detach().requires_grad_() for n, t in ins.items()}
    pairs = {n: fwd_and_train(fn, leaves) for n, fn in rows.items()}
    fwd = race({n: p[0] for n, p in pairs.items()}, budget / 3, max_rounds=9)
    fb = race({n: p[1] for n, p in pairs.items()}, budget, max_rounds=9)
    out = {n: {"fwd": B * T / fwd[n], "fb": B * T / fb[n]} for n in rows}
    if memory:
        for n, fn in rows.items():
            out[n]["saved"] = saved_bytes(fn, ins) / 2**20
            out[n]["rss"] = (peak_rss_delta(pairs[n][1]) or 0) / 2**20
    return out


def fmt(name, r):
    mem = f"{r['saved']:9.1f} {r['rss']:9.1f}" if "saved" in r else f"{'':9s} {'':9s}"
    return f"  {name:34s} {r['fwd'] / 1e3:9.1f}k {r['fb'] / 1e3:9.1f}k {mem}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lens", default="512,2048,8192")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ref-max-len", type=int, default=2048, help="skip the reference loops above this T")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--budget", type=float, default=8.0, help="seconds per race (forward races get a third)")
    p.add_argument("--g-max", type=float, default=0.1, help="log-decays g ~ -U(0, g_max) per step")
    a = p.parse_args(argv)
    runtime.set_threads(a.threads)  # torch and numba: a script is an entry point (rnnlab/runtime.py)
    runtime.tune_allocator()  # as `rnnlab bench` does
    hf = hf_peer()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}, "
          f"B={B} H={H} K=V={K}, chunk {a.chunk_size}, transformers {'yes' if hf else 'not importable: peer rows skipped'}")
    print(f"  {'row':34s} {'fwd tok/s':>10s} {'f+b tok/s':>10s} {'saved MiB':>9s} {'peak MiB':>9s}")
    for dname in a.dtypes.split(","):
        for T in map(int, a.lens.split(",")):
            ins = inputs(T, DT[dname], g_max=a.g_max)
            rows = forms(a.chunk_size)
            if hf is not None and dname == "fp32":
                rows["HF torch_chunk_gated_delta_rule"] = hf
            print(f"== {dname} T={T} (load {os.getloadavg()[0]:.1f})", flush=True)
            res = run_shape(rows, ins, T, a.budget * (1 + T / 2048), memory=True)
            for n, r in res.items():
                print(fmt(n, r), flush=True)
            ours = res["chunk_gated_delta_rule"]
            for n in ("chunk_simple_gla", "chunk_gla"):
                print(f"  time of the gated delta rule / {n}: fwd+bwd {res[n]['fb'] / ours['fb']:.2f}x, fwd {res[n]['fwd'] / ours['fwd']:.2f}x")
            if "HF torch_chunk_gated_delta_rule" in res:
                r = res["HF torch_chunk_gated_delta_rule"]
                with torch.no_grad():
                    err = rel_err(D.chunk_gated_delta_rule(**ins)[0], hf(**ins)[0])
                print(f"  chunk_gated_delta_rule / HF: fwd+bwd {ours['fb'] / r['fb']:.2f}x, fwd {ours['fwd'] / r['fwd']:.2f}x; "
                      f"rel err of the outputs {err:.1e}")
            if dname == a.dtypes.split(",")[0] and T <= a.ref_max_len:
                ins32 = inputs(T, torch.float32, g_max=a.g_max)
                loops = {"chunk_gated_delta_rule": rows["chunk_gated_delta_rule"],
                         "naive_recurrent (reference)": D.naive_recurrent_gated_delta_rule,
                         "fused_recurrent": D.fused_recurrent_gated_delta_rule}
                ref = run_shape(loops, ins32, T, budget=0.0, memory=False)
                for n in list(loops)[1:]:
                    print(fmt(n, ref[n]) + f"   chunk is {ref['chunk_gated_delta_rule']['fb'] / ref[n]['fb']:.1f}x fwd+bwd, "
                          f"{ref['chunk_gated_delta_rule']['fwd'] / ref[n]['fwd']:.1f}x fwd (fp32)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
