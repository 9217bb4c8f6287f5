"""Shared test settings."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Seeded, one thread. Tests use tiny tensors: one thread, since OpenMP barriers cost more than they save there.
    A test that needs more threads sets them itself (the fixture restores the count after it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # a test's random inputs do not depend on which tests ran before it
    yield
    torch.set_num_threads(n)
