import pytest
import torch
from torch import nn

from nnzip.evaluate.latency import measure_latency


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_latency_percentiles_are_ordered_and_threads_restored(two_threads):
    model = nn.Linear(64, 64)
    result = measure_latency(model, (64,), batch_size=4, threads=1, warmup=1, repeats=10)
    assert set(result) == {"p50", "p95"}
    assert 0 < result["p50"] <= result["p95"]
    assert torch.get_num_threads() == 2


class _Failing(nn.Module):
    def forward(self, x):
        raise ValueError("boom")


def test_threads_are_restored_when_the_model_fails(two_threads):
    with pytest.raises(ValueError):
        measure_latency(_Failing(), (3,), threads=1, warmup=1, repeats=1)
    assert torch.get_num_threads() == 2


def test_training_mode_is_restored():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    measure_latency(model, (4,), warmup=0, repeats=2)
    assert model.training
