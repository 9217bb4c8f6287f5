"""Where a Mamba trained on induction heads stops extrapolating: accuracy by the trigger's distance from the query.

    python examples/induction_head_distance.py RUN_DIR [--lengths 1024,2048] [--batches 8] [--scale-layer 1]

RUN_DIR: an ``rnnlab train --task induction_head --mixer mamba ...`` run. Prints, per test length, the accuracy of
the final query binned by the distance back to the first trigger (the task draws its position uniformly); per Mamba
layer, the Δ of the channel that writes the answer hardest (its largest Δ at the answer token) there and on the
filler tokens between the answer and the query; and how far the parallel form's last logits are from the step
form's (token by token) at the first length. With ``--scale-layer i`` it also rescales layer i's Δ on those fillers (x 0.5, 0.25) and reports the accuracy again.
The analysis of docs/reproductions.md ("The induction-head rows at the same budget")."""
from __future__ import annotations

import argparse

import numpy as np
import torch

from rnnlab.layers.mamba import Mamba
from rnnlab.train.diagnose import load_run

BINS = [0, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--batches", type=int, default=8, help="batches of 64 examples per length")
    ap.add_argument("--scale-layer", type=int, default=None)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    _, task, model = load_run(args.run_dir)
    layers = [m for m in model.modules() if isinstance(m, Mamba)]
    if not layers:
        raise SystemExit(f"{args.run_dir}: no Mamba layer in this run's model")
    seen, ctl = {}, {"layer": None, "scale": 1.0, "fillers": None}
    for i, layer in enumerate(layers):  # record (and optionally rescale) each layer's Δ
        def inputs(x, state, _orig=layer._inputs, _i=i):
            xi, dt, *rest = _orig(x, state)
            if ctl["layer"] == _i and ctl["fillers"] is not None:
                dt = torch.where(ctl["fillers"][..., None], dt * ctl["scale"], dt)
            seen[_i] = dt
            return (xi, dt, *rest)
        layer._inputs = inputs

    lengths = [int(v) for v in args.lengths.split(",")]
    for n, L in enumerate(lengths):
        batches = [task.sample(64, L, np.random.default_rng(1000 + i), "test") for i in range(args.batches)]
        scales = [1.0] + ([0.5, 0.25] if args.scale_layer is not None else [])
        for s in scales:
            ctl.update(layer=args.scale_layer if s != 1.0 else None, scale=s)
            hits, dists, dt_fill, dt_ans = [], [], {i: [] for i in range(len(layers))}, {i: [] for i in range(len(layers))}
            for b in batches:
                trig = (b.inputs[:, :-1] == 0).float().argmax(-1)  # the first trigger; the answer follows it
                t = torch.arange(L)[None]
                ctl["fillers"] = (t > trig[:, None] + 1) & (t < L - 1)
                logits, _ = model(b.inputs)
                hits.append((logits[:, -1].argmax(-1) == b.targets[:, -1]).numpy())
                dists.append((L - 1 - trig).numpy())
                for i, dt in (seen.items() if s == 1.0 else ()):  # the channel that writes the answer hardest, per row:
                    # its Δ there and after (read on the unscaled pass only)
                    at = dt[torch.arange(dt.shape[0]), trig + 1]  # (B, d_inner)
                    c = at.argmax(-1)
                    dt_ans[i].append(at.max(-1).values.median().item())
                    dt_fill[i].append(torch.stack([dt[r, ctl["fillers"][r], c[r]].median() for r in range(dt.shape[0])
                                                   if ctl["fillers"][r].any()]).median().item())
            hit, dist = np.concatenate(hits), np.concatenate(dists)
            cells = [f"({lo},{hi}] {hit[(dist > lo) & (dist <= hi)].mean():.3f}" for lo, hi in zip(BINS, BINS[1:])
                     if ((dist > lo) & (dist <= hi)).any()]
            tag = "" if s == 1.0 else f"  [layer {args.scale_layer}'s filler Δ x {s}]"
            print(f"L={L}: acc {hit.mean():.3f}; by distance " + ", ".join(cells) + tag)
            if s == 1.0:
                for i in range(len(layers)):
                    print(f"  layer {i}: the channel with the largest Δ at the answer: Δ {np.median(dt_ans[i]):.2e} there, "
                          f"{np.median(dt_fill[i]):.2e} on the fillers after it (medians over rows)")
        if n == 0:
            ctl.update(layer=None, fillers=None)
            b = batches[0].rows(slice(0, 8))
            par, _ = model(b.inputs)
            state = None
            for t in range(L):
                out, state = model(b.inputs[:, t:t + 1], state)
            print(f"  parallel vs step at L={L}: max |Δ logit| {(par[:, -1] - out[:, -1]).abs().max().item():.2e} "
                  f"(logits up to {par[:, -1].abs().max().item():.1f}), same argmax {(par[:, -1].argmax(-1) == out[:, -1].argmax(-1)).float().mean().item():.2f}")


if __name__ == "__main__":
    main()
