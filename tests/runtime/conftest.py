import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Quantization tests run on one torch thread (stable and fast on a shared 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
