"""Peak memory of the `atlas` mixer's training form (forward + backward), the shape of `rnnlab bench`'s default row.

    python benchmarks/atlas_memory.py --batch 4 --seq-len 2048 --d-model 256
    python benchmarks/atlas_memory.py --op --batch 1 --seq-len 2048 --head-dim 16   # chunk_atlas alone (bench's inputs)

Prints the process's peak resident set (ru_maxrss) after one forward + backward, and the growth over the resident set
before it (the model and the inputs). One shape per process: ru_maxrss never falls."""
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
    ap.add_argument("--op", action="store_true", help="time chunk_atlas on rnnlab.bench.ops_ttt.atlas_inputs (H 4) instead")
    ap.add_argument("--head-dim", type=int, default=64, help="--op: K (4161 features at 64)")
    ap.add_argument("--newton-schulz", default=None, help="override the Newton-Schulz variant (none: a cheaper run)")
    a = ap.parse_args()
    torch.manual_seed(0)
    ns = {} if a.newton_schulz is None else {"newton_schulz": a.newton_schulz}
    if a.op:
        from rnnlab.bench.ops_ttt import atlas_inputs
        from rnnlab.ops.atlas import chunk_atlas

        inputs = dict(atlas_inputs(a.batch, a.seq_len, head_dim=a.head_dim), **ns)
        run, what = (lambda: chunk_atlas(**inputs)[0]), f"chunk_atlas H=4 K={a.head_dim}"
    else:
        mixer = rnnlab.create_mixer(a.mixer, a.d_model, **ns)
        x = torch.randn(a.batch, a.seq_len, a.d_model, requires_grad=True)
        run, what = (lambda: mixer(x)[0]), f"{a.mixer} d_model={a.d_model}"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    run().pow(2).mean().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{what} {ns} B={a.batch} T={a.seq_len}: peak RSS {peak:.2f} GiB "
          f"(+{peak - before:.2f} GiB over the model and inputs), forward+backward {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
