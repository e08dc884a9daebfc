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


def test_compared_models_are_timed_interleaved_each_block_after_an_untimed_call():
    calls: list[str] = []
    a, b, c = (_Recorder(name, calls) for name in "abc")
    result = compare_latency([a, b, c], (3,), batch_size=1, warmup=1, repeats=6, rounds=3)
    assert len(result) == 3 and all(r["p50"] <= r["p95"] for r in result)
    # warm-up a, b, c; then 3 rounds, each model once per round as a block of 1 settling call
    # and 2 timed ones, in an order shuffled per round (seeded: the same every run).
    assert "".join(calls[:3]) == "abc"
    blocks = ["".join(calls[i:i + 3]) for i in range(3, len(calls), 3)]
    assert len(calls) == 3 + 3 * 3 * 3 and set(blocks) == {"aaa", "bbb", "ccc"}
    rounds = ["".join(block[0] for block in blocks[i:i + 3]) for i in range(0, 9, 3)]
    assert all(sorted(order) == ["a", "b", "c"] for order in rounds)
    assert len(set(rounds)) > 1  # not one fixed order: each model meets other neighbours
    again: list[str] = []
    compare_latency([_Recorder(name, again) for name in "abc"], (3,), warmup=1, repeats=6,
                    rounds=3)
    assert again == calls


def test_measure_latency_equals_a_comparison_of_one():
    calls: list[str] = []
    measure_latency(_Recorder("a", calls), (3,), warmup=2, repeats=5)
    assert calls == ["a"] * 7  # no settling call: each call follows one of the same model
