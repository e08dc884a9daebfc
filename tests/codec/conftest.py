import pytest
import torch


@pytest.fixture
def one_thread_here():
    """One torch thread: the 2 cores are shared (see tests/prune/conftest.py)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
