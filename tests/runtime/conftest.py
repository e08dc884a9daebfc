import pytest

from nnzip.evaluate.latency import fixed_threads


@pytest.fixture(autouse=True)
def one_thread():
    """Runtime tests run on one torch thread (stable and fast on a shared 2-core machine)."""
    with fixed_threads(1):
        yield
