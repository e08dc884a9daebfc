import copy
import warnings

import pytest
import torch
from torch import nn

from nnzip.errors import NnzipError
from nnzip.evaluate.size import (
    artifact_bytes,
    count_nonzero,
    count_params,
    file_bytes,
    state_tensor_bytes,
    tensor_bytes,
)
from nnzip.models.examples import example_model


def test_counts_see_zeroed_weights_and_ignore_buffers():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        model[0].weight[0] = 0.0  # 4 zeros
        model[0].bias.fill_(1.0)
    # BatchNorm: weight = 1 (3 non-zero), bias = 0 (3 zeros); running_var = 1 is a buffer and
    # would add 3 if buffers were counted.
    assert count_params(model) == 4 * 3 + 3 + 3 + 3
    assert count_nonzero(model) == 21 - 4 - 3


def test_artifact_bytes_is_raw_weights_plus_a_small_header():
    model = nn.Linear(100, 50)
    raw = 4 * count_params(model)
    size = artifact_bytes(model)
    assert raw <= size <= raw + 512


def test_artifact_bytes_counts_a_tied_weight_once():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    model[1].weight = model[0].weight  # safetensors refuses shared tensors: stored once instead
    untied = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    assert count_params(model) == 64 + 2 * 8
    assert artifact_bytes(untied) - artifact_bytes(model) >= 4 * 64 - 64  # header differs a bit


def test_a_tied_language_model_is_counted_once_and_untying_it_grows():
    model, _ = example_model("lstm_lm")
    assert model.decoder.weight is model.embed.weight
    unique = {id(p): p for module in model.modules() for p in module.parameters(recurse=False)}
    assert count_params(model) == sum(p.numel() for p in unique.values())
    assert count_nonzero(model) <= count_params(model)
    raw = 4 * count_params(model)
    assert raw <= artifact_bytes(model) <= raw + 2048
    assert state_tensor_bytes(model) == raw
    untied = copy.deepcopy(model)
    untied.decoder.weight = nn.Parameter(untied.embed.weight.detach().clone())
    table = 4 * model.embed.weight.numel()
    assert count_params(untied) == count_params(model) + model.embed.weight.numel()
    assert artifact_bytes(untied) >= artifact_bytes(model) + table - 256


def test_artifact_bytes_of_dynamically_quantized_model_counts_int8_weights():
    model = nn.Sequential(nn.Linear(256, 256))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    size = artifact_bytes(quantized)
    assert 256 * 256 <= size < artifact_bytes(model) / 3
    # Packed int8 weights are memory too, though they are neither parameters nor buffers.
    assert state_tensor_bytes(quantized) >= 256 * 256


def test_file_bytes_sums_a_folder_and_rejects_a_missing_path(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 5)
    assert file_bytes(tmp_path / "a.bin") == 10
    assert file_bytes(tmp_path) == 15
    with pytest.raises(NnzipError, match="does not exist"):
        file_bytes(tmp_path / "missing.nnz")


def test_tensor_bytes_is_the_artifact_without_its_header():
    model, _ = example_model("lstm_lm")
    assert tensor_bytes(model) == 4 * count_params(model)
    assert 0 < artifact_bytes(model) - tensor_bytes(model) < 2048


def test_weight_sharing_codes_are_weighed_in_the_narrowest_integer_type():
    from nnzip.share import cluster_weights

    model = nn.Sequential(nn.Linear(64, 64, bias=False))
    before = tensor_bytes(model)
    cluster_weights(model, 4)  # 64 x 64 codes of 4 bits: one byte each, as a file holds them
    assert tensor_bytes(model) == 64 * 64 + 4 * 16
    assert tensor_bytes(model) < before / 3
