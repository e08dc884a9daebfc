import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from nnzip.data.splits import DataSplits
from nnzip.evaluate.config import EvalConfig


def _dataset(n: int, generator: torch.Generator) -> TensorDataset:
    return TensorDataset(torch.rand(n, 1, 6, 6, generator=generator),
                         torch.randint(0, 10, (n,), generator=generator))


@pytest.fixture
def tiny_data() -> DataSplits:
    """Ten classes of 1x6x6 'images' in [0, 1]: enough to run every measurement in milliseconds."""
    generator = torch.Generator().manual_seed(0)
    return DataSplits("tiny", _dataset(32, generator), _dataset(16, generator),
                      _dataset(40, generator), num_classes=10, input_shape=(1, 6, 6))


@pytest.fixture
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(16, 10))


@pytest.fixture
def fast_config() -> EvalConfig:
    return EvalConfig(warmup=1, repeats=3, batch_sizes=(1, 8), eval_batch_size=16)
