"""Op benchmarks of the nonlinear RNN cells (rnnlab.ops.rnn): the fused numba kernel against the
reference loop, for lstm, gru, elman (dense recurrence, H = 256) and slstm (4 heads, block-diagonal).

Inputs are the cell's input pre-activations gx (B, T, G*H) (the projection of x, hoisted out of the
loop, is not part of the op) and the recurrent weights. FLOPs: the recurrent matmul, 2*G*H*H/NH per
token (gate non-linearities not counted).
"""
from __future__ import annotations

import functools

import torch

from rnnlab.bench.registry import OpBench, register_op_bench
from rnnlab.ops import rnn as R

H = 256
# op name -> (cell, number of heads, extra keyword arguments)
CELLS = {"lstm": ("lstm", 1, {}), "gru": ("gru", 1, {}), "elman": ("elman", 1, {}), "slstm": ("slstm", 4, {})}


def _inputs(cell, NH, B, T, dtype, device):
    G = R.CELLS[cell][0]
    Kh = H // NH
    g = torch.Generator().manual_seed(0)
    w = torch.randn(G * H, H, generator=g) if NH == 1 else torch.randn(NH, G * Kh, Kh, generator=g)
    ins = dict(gx=torch.randn(B, T, G * H, generator=g).to(device=device, dtype=dtype).requires_grad_(),
               weight_hh=(w * Kh**-0.5).to(device=device, dtype=dtype).requires_grad_())
    if cell == "gru":
        ins["bias_hh"] = torch.zeros(G * H, device=device, dtype=dtype).requires_grad_()
    return ins


for _name, (_cell, _nh, _kw) in CELLS.items():
    register_op_bench(OpBench(
        name=f"rnn_{_name}", family="nonlinear",
        make_inputs=functools.partial(_inputs, _cell, _nh),
        forms={backend: functools.partial(R.rnn, _cell, backend=backend, **_kw) for backend in ("reference", "kernel")},
        flops=functools.partial(lambda B, T, G, nh: 2.0 * B * T * G * H * H / nh, G=R.CELLS[_cell][0], nh=_nh),
        max_baseline_len=2048,
    ))
