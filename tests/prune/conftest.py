"""Small models on scikit-learn's digits: real data that trains in a second."""

import contextlib

import pytest
import torch

from nnzip.models import create_model
from nnzip.train import TrainConfig, fit


def make_mlp(digits, seed: int = 0):
    torch.manual_seed(seed)
    return create_model("lenet300", input_shape=digits.input_shape,
                        num_classes=digits.num_classes)


@contextlib.contextmanager
def _single_thread():
    # The models here are tiny and the 2 cores are shared: two threads per process contend and
    # run several times slower than one.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (the previous count is restored afterwards)."""
    with _single_thread():
        yield


@pytest.fixture
def mlp(digits):
    """An untrained LeNet-300-100 sized for 8×8 digits (fresh for every test)."""
    return make_mlp(digits)


@pytest.fixture(scope="session")
def trained_mlp_state(digits):
    """Weights of a LeNet-300-100 trained for 6 epochs on digits."""
    model = make_mlp(digits)
    with _single_thread():
        fit(model, digits, TrainConfig(epochs=6, patience=None), progress=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def trained_mlp(digits, trained_mlp_state):
    model = make_mlp(digits)
    model.load_state_dict(trained_mlp_state)
    return model
