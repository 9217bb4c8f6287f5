"""Peak memory of the `atlas` mixer's training form (forward + backward), the shape of `rnnlab bench`'s default row.

    python benchmarks/atlas_memory.py --batch 4 --seq-len 2048 --d-model 256

Prints the process's peak resident set (ru_maxrss) after one forward + backward, and the growth over the resident set
before it (the model and the inputs)."""
from __future__ import annotations

import argparse
import resource
import time

import torch

import rnnlab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--mixer", default="atlas")
    a = ap.parse_args()
    torch.manual_seed(0)
    mixer = rnnlab.create_mixer(a.mixer, a.d_model)
    x = torch.randn(a.batch, a.seq_len, a.d_model, requires_grad=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    y, _ = mixer(x)
    y.pow(2).mean().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{a.mixer} B={a.batch} T={a.seq_len} d_model={a.d_model}: peak RSS {peak:.2f} GiB "
          f"(+{peak - before:.2f} GiB over the model and inputs), forward+backward {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
