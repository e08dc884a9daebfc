"""Mixed precision: per-layer bit sensitivity, an exact allocation under a budget, the stage."""

import itertools
import random

import pytest
import torch

from nnzip.codec.bitpack import packed_bytes
from nnzip.data import calibration_batches
from nnzip.errors import NnzipError
from nnzip.evaluate.accuracy import accuracy, predict_logits
from nnzip.pipeline import compress
from nnzip.quant import MixedPrecision, QuantConfig, quantized_layers
from nnzip.quant.mixed import (
    allocate_bits,
    bit_sensitivity,
    mean_weight_bits,
    packed_weight_bytes,
    quantize_mixed,
)
from nnzip.recipe import STAGES, parse_recipe
from nnzip.stage import Context


def _brute_force(table, params, cost, capacity):
    """The cheapest feasible choice by trying every combination."""
    names = list(table)
    best = None
    for choice in itertools.product(*(sorted(table[name]) for name in names)):
        if sum(cost(params[n], b) for n, b in zip(names, choice, strict=True)) > capacity:
            continue
        total = sum(table[n][b] for n, b in zip(names, choice, strict=True))
        if best is None or total < best:
            best = total
    return best


def _random_case(rng: random.Random, layers: int = 5):
    params = {f"layer{i}": rng.choice([50, 300, 1_000, 4_096, 20_000]) for i in range(layers)}
    table = {}
    for name in params:
        damage = rng.uniform(0.01, 2.0)  # falls roughly 4x per extra bit, with noise
        table[name] = {bits: damage * 4.0 ** (2 - bits) * rng.uniform(0.5, 1.5)
                       for bits in (2, 3, 4, 8)}
    return table, params


@pytest.mark.parametrize("seed", range(6))
def test_allocation_matches_brute_force_for_average_bits_and_bytes(seed):
    rng = random.Random(seed)
    table, params = _random_case(rng)
    total = sum(params.values())
    for average in (2.0, 2.7, 3.5, 4.0, 5.3, 7.9):
        bits = allocate_bits(table, params, average_bits=average)
        assert mean_weight_bits(bits, params) <= average + 1e-12
        best = _brute_force(table, params, lambda n, b: n * b, average * total)
        assert sum(table[n][b] for n, b in bits.items()) == pytest.approx(best, rel=1e-9)
    for size in (total // 4 + 64, total // 2, total * 5 // 8):
        bits = allocate_bits(table, params, weight_bytes=size)
        assert packed_weight_bytes(bits, params) <= size
        best = _brute_force(table, params, packed_bytes, size)
        assert sum(table[n][b] for n, b in bits.items()) == pytest.approx(best, rel=1e-9)


def test_the_sensitive_small_layer_gets_more_bits_than_the_big_tolerant_one():
    table = {"big": {2: 0.05, 4: 0.01, 8: 0.0}, "small": {2: 3.0, 4: 0.5, 8: 0.001}}
    params = {"big": 10_000, "small": 100}
    assert allocate_bits(table, params, average_bits=2.1) == {"big": 2, "small": 8}


def test_a_budget_of_eight_bits_gives_every_layer_eight_bits():
    table, params = _random_case(random.Random(0))
    assert set(allocate_bits(table, params, average_bits=8).values()) == {8}
    # Ties (equal damage at 4 and 8 bits) still use the budget that is there.
    flat = {"a": {4: 0.0, 8: 0.0}, "b": {4: 0.0, 8: 0.0}}
    assert allocate_bits(flat, {"a": 10, "b": 10}, average_bits=8) == {"a": 8, "b": 8}


def test_a_layer_with_one_candidate_is_pinned_and_counted_in_the_budget():
    table = {"first": {8: 0.0}, "rest": {2: 1.0, 4: 0.1, 8: 0.0}}
    bits = allocate_bits(table, {"first": 100, "rest": 100}, average_bits=6)
    assert bits == {"first": 8, "rest": 4}


def test_an_impossible_budget_names_the_smallest_achievable():
    table = {"a": {2: 1.0, 8: 0.0}, "b": {4: 1.0, 8: 0.0}}
    params = {"a": 100, "b": 300}
    # Every layer at its fewest bits: (100·2 + 300·4) / 400 = 3.5 bits, 25 + 150 = 175 bytes.
    with pytest.raises(NnzipError, match=r"average_bits = 3 is below the smallest achievable, "
                                         r"3\.500 average bits"):
        allocate_bits(table, params, average_bits=3)
    with pytest.raises(NnzipError, match=r"below the smallest achievable, 175 weight bytes"):
        allocate_bits(table, params, weight_bytes=174)
    assert allocate_bits(table, params, weight_bytes=175) == {"a": 2, "b": 4}
    with pytest.raises(NnzipError, match="exactly one budget"):
        allocate_bits(table, params)
    with pytest.raises(NnzipError, match="exactly one budget"):
        allocate_bits(table, params, average_bits=4, weight_bytes=100)


@pytest.fixture(scope="module")
def val_batches(mnist):
    return list(mnist.loader("val", batch_size=250))


def test_sensitivity_on_lenet5_is_larger_at_two_bits_and_leaves_the_model_alone(lenet5,
                                                                              val_batches):
    before = {k: v.clone() for k, v in lenet5.state_dict().items()}
    sensitivity = bit_sensitivity(lenet5, val_batches, (2, 8))
    assert list(sensitivity.kl) == ["conv1", "conv2", "fc1", "fc2"]
    assert sensitivity.params == {"conv1": 500, "conv2": 25_000, "fc1": 400_000, "fc2": 5_000}
    for name, row in sensitivity.kl.items():
        assert row[2] > 100 * row[8] > 0, name
        assert sensitivity.accuracy_drop[name][2] >= sensitivity.accuracy_drop[name][8]
    assert max(drop[2] for drop in sensitivity.accuracy_drop.values()) > 0.01
    assert sensitivity.reference_accuracy > 0.97
    for key, value in lenet5.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} was left changed"


def test_quantize_mixed_meets_the_budget_and_quantizes_each_layer_at_its_bits(lenet5, mnist,
                                                                            val_batches):
    calibration = calibration_batches(mnist, 2)
    config = QuantConfig(layer_bits={"conv1": 8})
    quantized, plan = quantize_mixed(lenet5, calibration, val_batches, average_bits=3.0,
                                     candidate_bits=(2, 4, 8), config=config)
    assert plan.average_bits <= 3.0 and plan.layer_bits["conv1"] == 8
    assert plan.layer_bits["fc1"] == 2  # 400k of the 431k weights: the budget forces it down
    layers = quantized_layers(quantized)
    assert {name: layer.weight_scheme.bits for name, layer in layers.items()} == plan.layer_bits
    assert all(layer.input_scheme.bits == 8 for layer in layers.values())
    val = mnist.loader("val", batch_size=500)
    dense = accuracy(predict_logits(lenet5, val), mnist.val.tensors[1])
    assert dense - accuracy(predict_logits(quantized, val), mnist.val.tensors[1]) < 0.02


def _recipe(**options):
    return parse_recipe({"name": "mixed", "stages": [{"mixed_precision": options}]})


def test_mixed_precision_is_a_registered_stage_with_checked_options():
    assert STAGES["mixed_precision"] is MixedPrecision
    with pytest.raises(NnzipError, match="exactly one budget"):
        _recipe()
    with pytest.raises(NnzipError, match="exactly one budget"):
        _recipe(average_bits=4, weight_bytes=1000)
    with pytest.raises(NnzipError, match="drop weight_bits"):
        _recipe(average_bits=4, weight_bits=4)
    with pytest.raises(NnzipError, match=r"candidate bits \[1, 16\] are not integers from 2 "
                                         r"to 8"):
        _recipe(average_bits=4, candidate_bits=[1, 4, 16])
    assert _recipe(weight_bytes=4096).steps[0].stage.weight_bytes == 4096


def test_mixed_precision_stage_records_bits_within_budget_and_the_table(lenet5, mnist):
    context = Context(data=mnist, progress=False)
    stage = MixedPrecision(average_bits=3.5, candidate_bits=[2, 4, 8], calibration_batches=2)
    quantized = stage.apply(lenet5, context)
    details = context.details
    params = details["layer_params"]
    assert mean_weight_bits(details["layer_bits"], params) <= 3.5
    assert details["achieved_average_bits"] == pytest.approx(
        mean_weight_bits(details["layer_bits"], params), abs=1e-4)
    assert details["budget"] == {"average_bits": 3.5}
    assert set(details["bit_sensitivity"]["fc1"]) == {"2", "4", "8"}
    assert set(details["weight_error"]) == set(details["layer_bits"]) == set(params)
    assert {n: layer.weight_scheme.bits for n, layer in quantized_layers(quantized).items()} \
        == details["layer_bits"]


def test_mixed_precision_runs_in_a_recipe(lenet5, mnist, tmp_path):
    from nnzip.evaluate import EvalConfig

    fast = EvalConfig(warmup=1, repeats=3, robustness_samples=200, batch_sizes=(1,))
    result = compress(lenet5, _recipe(average_bits=4, candidate_bits=[2, 4, 8],
                                      calibration_batches=2),
                      mnist, name="lenet5", out_dir=tmp_path, eval_config=fast, progress=False)
    baseline, mixed = result.report["models"]
    details = result.report["stages"][0]["details"]
    assert details["achieved_average_bits"] <= 4
    assert mixed["size_bytes"] < 0.2 * baseline["size_bytes"]
    assert baseline["accuracy"] - mixed["accuracy"] < 0.01
    assert "Per-layer mixed precision" in (tmp_path / "report.md").read_text()
