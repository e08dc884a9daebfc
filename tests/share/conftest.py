import pytest
import torch

from nnzip.models import create_model
from nnzip.train import TrainConfig, fit


@pytest.fixture
def lenet5_fresh():
    torch.manual_seed(0)
    return create_model("lenet5", input_shape=(1, 28, 28), num_classes=10)


@pytest.fixture
def one_thread():
    """One torch thread: the 2 cores are shared (see tests/prune/conftest.py)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def trained_mlp_weights(digits):
    torch.manual_seed(0)
    model = create_model("lenet300", input_shape=digits.input_shape,
                         num_classes=digits.num_classes)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(model, digits, TrainConfig(epochs=6, patience=None), progress=False)
    finally:
        torch.set_num_threads(previous)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def trained_mlp(digits, trained_mlp_weights):
    """A LeNet-300-100 for scikit-learn's 8×8 digits, trained for 6 epochs (fresh copy)."""
    model = create_model("lenet300", input_shape=digits.input_shape,
                         num_classes=digits.num_classes)
    model.load_state_dict(trained_mlp_weights)
    return model
