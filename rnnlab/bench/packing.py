"""The packing benchmark: training tokens/s on variable-length sequences, packed vs padded to the longest.

N sequences with lengths drawn uniformly in [16, 2048] (``--quick``: [16, 512]) go through one training
step of a mixer (forward + backward, the mixer rows' convention) in two layouts, timed in turns in
one process: packed back to back (1, T_total, D) with ``cu_seqlens`` (the mixer contract), and padded
(N, L_max, D) with zero cotangents on the padding, the way an unpacked batch is trained. Both count
real tokens only, so the packed row's ``ratio`` (vs the padded row) is the speed-up a packed training
job sees. The padded layout computes the padding's tokens too: with uniform lengths about half of them.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["PACKING_MIXERS", "packing_lengths", "bench_packing"]

PACKING_MIXERS = ("attention", "mamba", "gla", "gated_deltanet", "lstm")


def packing_lengths(n: int, lo: int, hi: int, seed: int) -> list[int]:
    """n lengths drawn uniformly in [lo, hi] (seeded)."""
    return [int(v) for v in np.random.default_rng(seed).integers(lo, hi + 1, size=n)]


def bench_packing(cfg, log, mixers=None) -> list[dict]:
    """Rows kind="packing" (forms "packed" and "padded", mode "train") for every mixer of PACKING_MIXERS
    selected by ``cfg.mixers`` (all when None), in every dtype of ``cfg.dtypes``."""
    from rnnlab.bench.runner import DTYPES, _err, _free_grads, _measure, _row
    from rnnlab.layers.registry import create_mixer, mixer_info
    from rnnlab.ops.varlen import cu_seqlens_from_lengths

    names = [m for m in PACKING_MIXERS if mixers is None or m in mixers]
    n, hi = (4, 512) if cfg.quick else (8, 2048)
    lengths = packing_lengths(n, 16, hi, cfg.seed)
    L, total, D = max(lengths), sum(lengths), cfg.d_model
    note = f"N={n} lengths U[16,{hi}] (seed {cfg.seed}): {total} real tokens, padded {n * L}"
    rows = []
    for name in names:
        for dname in cfg.dtypes:
            dtype = DTYPES[dname]
            base = dict(kind="packing", name=name, family=mixer_info(name).family, mode="train", dtype=dname, d_model=D, note=note)
            try:
                torch.manual_seed(cfg.seed)
                m = create_mixer(name, D).to(device=cfg.device, dtype=dtype).train()
                params = list(m.parameters())
                g = torch.Generator().manual_seed(cfg.seed)
                seqs = [torch.randn(t, D, generator=g) for t in lengths]
                cots = [torch.randn(t, D, generator=g) for t in lengths]
                packed_x = torch.cat(seqs)[None].to(cfg.device, dtype).requires_grad_()
                packed_cot = torch.cat(cots)[None].to(cfg.device, dtype)
                cu = cu_seqlens_from_lengths(lengths, device=cfg.device)
                padded_x = torch.zeros(n, L, D)
                padded_cot = torch.zeros(n, L, D)
                for i, (s, c) in enumerate(zip(seqs, cots)):
                    padded_x[i, : len(s)], padded_cot[i, : len(c)] = s, c
                padded_x = padded_x.to(cfg.device, dtype).requires_grad_()
                padded_cot = padded_cot.to(cfg.device, dtype)

                def packed():
                    _free_grads(params)
                    packed_x.grad = None
                    m(packed_x, cu_seqlens=cu)[0].backward(packed_cot)

                def padded():
                    _free_grads(params)
                    padded_x.grad = None
                    m(padded_x)[0].backward(padded_cot)

                times = {}
                for form, fn in (("padded", padded), ("packed", packed), ("padded", padded), ("packed", packed)):  # in turns
                    t, _ = _measure(fn, cfg, memory=False)
                    times[form] = min(times.get(form, t), t, key=lambda v: v.median)
                _free_grads(params)
                pad_tps = total / times["padded"].median
                for form, batch, T in (("padded", n, L), ("packed", 1, total)):
                    tps = total / times[form].median
                    rows.append(_row(**base, form=form, batch=batch, seq_len=T, tokens_per_s=tps, time_s=times[form].to_dict(),
                                     params=sum(p.numel() for p in params),
                                     **({"ratio": tps / pad_tps, "vs": "padded"} if form == "packed" else {})))
                log(f"  packing {name:16s} {dname}: packed {total / times['packed'].median:,.0f} tok/s, "
                    f"padded {pad_tps:,.0f} tok/s ({pad_tps and total / times['packed'].median / pad_tps:.2f}x)")
            except Exception as e:  # one mixer's failure must not stop the run
                rows.append(_row(**base, form="packed", batch=1, seq_len=total, error=_err(e)))
                log(f"  packing {name} {dname}: {_err(e)}")
    return rows
