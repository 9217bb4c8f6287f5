"""Kept for old imports: the allocator setting lives in :mod:`rnnlab.runtime` (``tune_allocator``,
``allocator_tuned``), with the thread counts, documented there."""
from rnnlab.runtime import allocator_tuned, tune_allocator

__all__ = ["tune_allocator", "allocator_tuned"]
