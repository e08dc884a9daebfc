import copy
import json

import pytest
import torch
from torch import nn

from nnzip.errors import NnzipError
from nnzip.evaluate import REPORT_MODEL_KEYS, EvalConfig, artifact_bytes, evaluate


def test_evaluate_returns_exactly_the_stable_keys(tiny_model, tiny_data, fast_config):
    entry = evaluate(tiny_model, tiny_data, name="tiny", config=fast_config)
    assert tuple(entry) == REPORT_MODEL_KEYS
    assert entry["name"] == "tiny" and entry["stage"] == "baseline"
    assert entry["params"] == 36 * 16 + 16 + 16 * 10 + 10
    assert entry["compression_ratio"] == 1.0 and entry["agreement"] == 1.0
    assert entry["flops"] == 2 * (36 * 16 + 16 * 10)
    assert set(entry["latency_ms"]) == {"batch1", "batch8"}
    assert entry["speedup"] == {"batch1": 1.0, "batch8": 1.0}  # its own reference
    p50 = entry["latency_ms"]["batch8"]["p50"]
    assert entry["throughput_per_s"] == pytest.approx(8 / (p50 / 1000))
    assert set(entry["robustness"]["gaussian"]) == {"0.1", "0.2", "0.3"}
    assert set(entry["robustness"]["fgsm"]) == {"0.05", "0.1", "0.2"}
    assert 0.0 <= entry["accuracy"] <= entry["top5"] <= 1.0
    assert entry["peak_memory_bytes"] >= 4 * entry["params"]
    assert isinstance(entry["energy_note"], str) and entry["energy_note"]
    json.dumps(entry, allow_nan=False)  # the entry goes straight into report.json


def test_reference_sets_ratio_and_agreement(tiny_model, tiny_data, fast_config):
    reference = nn.Sequential(nn.Flatten(), nn.Linear(36, 64), nn.ReLU(), nn.Linear(64, 10))
    entry = evaluate(tiny_model, tiny_data, reference=reference, config=fast_config)
    assert entry["compression_ratio"] == pytest.approx(
        artifact_bytes(reference) / artifact_bytes(tiny_model))
    twin = evaluate(tiny_model, tiny_data, reference=copy.deepcopy(tiny_model),
                    reference_size_bytes=123_456, config=fast_config)
    assert twin["agreement"] == 1.0
    assert set(twin["speedup"]) == {"batch1", "batch8"}
    assert all(value > 0 for value in twin["speedup"].values())
    assert twin["compression_ratio"] == pytest.approx(123_456 / twin["size_bytes"])


def test_artifact_path_is_weighed_instead_of_the_state_dict(tiny_model, tiny_data, fast_config,
                                                            tmp_path):
    artifact = tmp_path / "model.nnz"
    artifact.write_bytes(b"z" * 1000)
    entry = evaluate(tiny_model, tiny_data, artifact_path=artifact, config=fast_config)
    assert entry["size_bytes"] == 1000


def test_timing_off_gives_none_not_zero(tiny_model, tiny_data):
    config = EvalConfig(measure_latency=False, robustness_samples=5, batch_sizes=(1, 8))
    entry = evaluate(tiny_model, tiny_data, config=config)
    assert entry["latency_ms"] == {"batch1": {"p50": None, "p95": None},
                                   "batch8": {"p50": None, "p95": None}}
    assert entry["throughput_per_s"] is None and entry["energy_j"] is None
    assert "not measured" in entry["energy_note"]


def test_training_mode_and_thread_count_are_left_as_they_were(tiny_model, tiny_data,
                                                             fast_config):
    tiny_model.train()
    threads = torch.get_num_threads()
    evaluate(tiny_model, tiny_data, config=fast_config)
    assert tiny_model.training and tiny_model[3].training
    assert torch.get_num_threads() == threads


def test_shape_mismatch_is_a_clear_user_error(tiny_data, fast_config):
    model = nn.Linear(784, 10)
    with pytest.raises(NnzipError) as caught:
        evaluate(model, tiny_data, name="mlp784", config=fast_config)
    message = str(caught.value)
    assert "mlp784" in message and "(1, 6, 6)" in message
    assert "pass data matching the model's input" in message


def test_wrong_number_of_outputs_is_a_clear_user_error(tiny_data, fast_config):
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    with pytest.raises(NnzipError, match=r"expected logits of shape \(1, 10\)"):
        evaluate(model, tiny_data, config=fast_config)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_exported_and_scripted_modules_are_measured(tiny_model, tiny_data, fast_config):
    tiny_model.eval()
    batch = torch.export.Dim("batch")
    exported = torch.export.export(tiny_model, (torch.rand(2, 1, 6, 6),),
                                   dynamic_shapes=({0: batch},)).module()
    scripted = torch.jit.script(tiny_model)
    eager = evaluate(tiny_model, tiny_data, config=fast_config)
    for model in (exported, scripted):
        entry = evaluate(model, tiny_data, reference=tiny_model, config=fast_config)
        assert entry["flops"] == eager["flops"]
        assert entry["accuracy"] == eager["accuracy"]
        assert entry["agreement"] == 1.0


class _BatchOfOne(nn.Module):
    """Like a model traced or exported with a static batch size of 1."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(36, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(1, -1))


def test_fixed_batch_model_is_a_clear_user_error(tiny_data, fast_config):
    with pytest.raises(NnzipError, match="dynamic batch dimension"):
        evaluate(_BatchOfOne(), tiny_data, config=fast_config)
