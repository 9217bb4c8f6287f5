"""rnnlab.allocator is kept for old imports only: the same functions as rnnlab.runtime, where their tests
live (tests/test_runtime.py)."""
import rnnlab.allocator
import rnnlab.runtime


def test_alias_names_the_runtime_functions():
    assert rnnlab.allocator.tune_allocator is rnnlab.runtime.tune_allocator
    assert rnnlab.allocator.allocator_tuned is rnnlab.runtime.allocator_tuned
