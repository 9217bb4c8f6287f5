"""Registry of op benchmarks: each op family declares its forms once, and
``rnnlab bench`` times every form against the family's baseline form.

    register_op_bench(OpBench(
        name="chunk_gla", family="matrix",
        make_inputs=lambda B, T, dtype, device: dict(q=..., k=..., v=..., g=...),  # leaf tensors, requires_grad=True
        forms={"reference": naive_recurrent_gla, "chunk": chunk_gla},             # fn(**inputs) -> Tensor or tuple (first = output)
        flops=lambda B, T: ...,                                                    # forward FLOPs of the fast form (roofline), or None
    ))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

__all__ = ["OpBench", "register_op_bench", "available_op_benches", "get_op_bench"]


@dataclass(frozen=True)
class OpBench:
    name: str
    family: str
    make_inputs: Callable[..., dict]
    forms: dict[str, Callable]
    flops: Callable[[int, int], float] | None = None
    baseline: str = "reference"
    max_baseline_len: int = 2048  # reference loops are slow: skip them above this T
    # form -> L: that form's train rows above T = L run segment by segment (L tokens each, from the previous segment's
    # final state, detached; the op takes initial_state and output_final_state): a token loop's graph holds whole
    # memories per token, O(T) memory copies, which the backward of one segment bounds. Work per token is unchanged.
    segments: dict = field(default_factory=dict)


_OPS: dict[str, OpBench] = {}


def register_op_bench(bench: OpBench) -> OpBench:
    if bench.baseline not in bench.forms:
        raise ValueError(f"{bench.name}: baseline form {bench.baseline!r} not in forms {sorted(bench.forms)}")
    _OPS[bench.name] = bench
    return bench


def _ensure_loaded() -> None:
    import importlib
    import pkgutil

    import rnnlab.bench as pkg

    for m in pkgutil.iter_modules(pkg.__path__):
        if m.name.startswith("ops_"):
            importlib.import_module(f"rnnlab.bench.{m.name}")


def available_op_benches() -> list[str]:
    _ensure_loaded()
    return sorted(_OPS)


def get_op_bench(name: str) -> OpBench:
    _ensure_loaded()
    if name not in _OPS:
        raise ValueError(f"unknown op benchmark {name!r}; valid choices: {', '.join(sorted(_OPS))}")
    return _OPS[name]
