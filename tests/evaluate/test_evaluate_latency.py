import pytest
import torch
from torch import nn

from nnzip.evaluate.latency import compare_latency, measure_latency


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


class _Recorder(nn.Module):
    """Logs its name on every call, to check the order in which models are timed."""

    def __init__(self, name: str, log: list[str]):
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x):
        self.log.append(self.name)
        return x


def test_compared_models_are_timed_interleaved_in_rotating_rounds():
    calls: list[str] = []
    a, b = _Recorder("a", calls), _Recorder("b", calls)
    result = compare_latency([a, b], (3,), batch_size=1, warmup=1, repeats=4, rounds=2)
    assert len(result) == 2 and all(r["p50"] <= r["p95"] for r in result)
    # warm-up a, b; round 1: a a, b b; round 2 starts with b: b b, a a
    assert "".join(calls) == "ab" + "aabb" + "bbaa"


def test_measure_latency_equals_a_comparison_of_one():
    calls: list[str] = []
    measure_latency(_Recorder("a", calls), (3,), warmup=2, repeats=5)
    assert calls == ["a"] * 7
