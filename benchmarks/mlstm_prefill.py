"""Issue-20 item 3: ``mlstm`` prefill (forward without autograd) at HF's xLSTM layer shapes, against HF's layer.

    flock /tmp/rnnlab-bench.lock python benchmarks/mlstm_prefill.py [--d-model 256] [--rounds 5]

rnnlab's ``mlstm`` with ``layout="dense"`` (xLSTM 7B's layer: 4 heads, q/k half the value width, proj_factor 1, gates
soft-capped at 15, eps 1e-6) three ways: its prefill (on CPU without autograd the fused prompt kernel), the same layer
with the kernels off (``decode.enabled(False)``: the chunk form, chunk 64) and HF transformers' ``xLSTMLayer`` at the same
shapes (native torch kernels, chunk 64, inference mode), interleaved round by round at B ∈ {1, 4, 8}, T ∈ {512, 2048};
tokens/s (median over rounds) and the ratios to HF.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from rnnlab.bench.peers import _hf_mlstm
from rnnlab.layers.mlstm import MLSTM
from rnnlab.ops import decode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    D = args.d_model
    torch.manual_seed(0)
    ours = MLSTM(D, num_heads=4, proj_factor=1.0, layout="dense", qk_dim_factor=0.5, gate_soft_cap=15.0, eps=1e-6).eval()
    hf = _hf_mlstm(D, "mlstm")
    hf.module.eval()

    def kernel(x):
        return ours(x)[0]

    def chunk(x):
        with decode.enabled(False):
            return ours(x)[0]

    subjects = {"rnnlab (prompt kernel)": kernel, "rnnlab (chunk form)": chunk, "HF xLSTMLayer": hf.prefill}
    print(f"mlstm prefill, d_model {D}, 4 heads, qk 0.5, {args.threads} threads, tokens/s (median of {args.rounds})")
    print("| B | T | " + " | ".join(subjects) + " | kernel / HF | chunk / HF |")
    print("|---|---|" + "---|" * (len(subjects) + 2))
    with torch.inference_mode():
        for B, T in [(1, 512), (4, 512), (4, 2048), (8, 2048)]:
            x = torch.randn(B, T, D)
            for f in subjects.values():  # warm-up (numba compiles on first use)
                f(x)
            times = {n: [] for n in subjects}
            for _ in range(args.rounds):
                for n, f in subjects.items():
                    t0 = time.perf_counter()
                    f(x)
                    times[n].append(time.perf_counter() - t0)
            tps = {n: B * T / statistics.median(v) for n, v in times.items()}
            hf_tps = tps["HF xLSTMLayer"]
            cells = " | ".join(f"{v / 1e3:.0f}k" for v in tps.values())
            print(f"| {B} | {T} | {cells} | {tps['rnnlab (prompt kernel)'] / hf_tps:.2f}x | {tps['rnnlab (chunk form)'] / hf_tps:.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
