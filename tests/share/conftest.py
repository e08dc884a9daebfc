import pytest
import torch

from nnzip.models import create_model


@pytest.fixture
def lenet5_fresh():
    torch.manual_seed(0)
    return create_model("lenet5", input_shape=(1, 28, 28), num_classes=10)
