"""``@njit(pipeline_class=NoAliasCompiler)``: numba's pipeline with LLVM ``noalias`` on the pointer arguments.

For kernels whose array arguments never overlap (each output its own buffer, scratch included). Without
the attribute LLVM must assume an output row may alias an input row and vectorizes worse or not at all:
measured at (B, T, D) = (4, 2048, 512), one thread, a linear scan's forward 2.2-3.3 ms plain vs 2.0-2.3 ms
with it, the same as numba's ``parallel=True`` (whose parfors pass sets this flag itself). Used by the
selective-scan kernels. Never use it on a kernel that may receive the same buffer twice with one written.
"""
from __future__ import annotations

from numba.core.compiler import Compiler

__all__ = ["NoAliasCompiler"]


class NoAliasCompiler(Compiler):
    def define_pipelines(self):
        self.state.flags.noalias = True
        return super().define_pipelines()
