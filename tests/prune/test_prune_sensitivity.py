"""Sensitivity: one validation curve per layer, and an allocation that meets the global target."""

import pytest
import torch

from nnzip.errors import NnzipError
from nnzip.prune import (
    allocate_sparsity,
    layer_sensitivity,
    preferred_sparsity,
    prune_unstructured,
    sparsity_summary,
    weighted_sparsity,
)


def test_sensitivity_gives_one_validation_curve_per_layer_and_restores_the_model(trained_mlp,
                                                                                 digits):
    before = {k: v.clone() for k, v in trained_mlp.state_dict().items()}
    curves = layer_sensitivity(trained_mlp, digits, [0.5, 0.9, 0.99])
    assert set(curves) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    for curve in curves.values():
        assert list(curve) == [0.0, 0.5, 0.9, 0.99]
        assert all(0.0 <= acc <= 1.0 for acc in curve.values())
        assert curve[0.99] < curve[0.0]  # removing 99 % of any layer must hurt
    for key, value in trained_mlp.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} was left changed"


def test_sensitivity_is_measured_on_the_validation_split_not_the_test_split(trained_mlp, digits):
    from nnzip.prune.sensitivity import split_accuracy

    curves = layer_sensitivity(trained_mlp, digits, [0.5], layers=["fc3"])
    assert curves["fc3.weight"][0.0] == split_accuracy(trained_mlp, digits, "val")


def test_preferred_sparsity_is_the_largest_within_the_tolerance():
    curve = {0.0: 0.98, 0.5: 0.978, 0.8: 0.975, 0.9: 0.95}
    assert preferred_sparsity(curve, 0.005) == 0.8
    assert preferred_sparsity(curve, 0.001) == 0.0
    assert preferred_sparsity(curve, 0.05) == 0.9


def test_allocation_meets_the_global_target_and_spares_the_sensitive_layer():
    tolerant = {0.0: 0.98, 0.5: 0.98, 0.9: 0.975, 0.95: 0.97}
    sensitive = {0.0: 0.98, 0.5: 0.975, 0.9: 0.80, 0.95: 0.5}
    curves = {"big": tolerant, "small": sensitive, "mid": tolerant}
    sizes = {"big": 100_000, "small": 1_000, "mid": 20_000}
    for target in (0.5, 0.9, 0.95):
        allocation = allocate_sparsity(curves, sizes, target, tolerance=0.01)
        assert weighted_sparsity(allocation, sizes) == pytest.approx(target, abs=0.01)
        assert allocation["small"] < allocation["big"]
        assert all(0.0 <= s < 1.0 for s in allocation.values())


def test_sensitivity_guided_pruning_hits_the_global_target_within_one_percent(trained_mlp, digits):
    curves = layer_sensitivity(trained_mlp, digits)
    sizes = {name: p.numel() for name, p in trained_mlp.named_parameters()}
    allocation = allocate_sparsity(curves, sizes, 0.85, tolerance=0.02)
    prune_unstructured(trained_mlp, allocation, scope="layer")
    assert sparsity_summary(trained_mlp)["achieved_sparsity"] == pytest.approx(0.85, abs=0.01)


def test_an_unreachable_allocation_is_a_clear_error():
    curves = {"a": {0.0: 0.9, 0.5: 0.5}, "b": {0.0: 0.9, 0.5: 0.5}}
    with pytest.raises(NnzipError, match="tolerate no pruning"):
        allocate_sparsity(curves, {"a": 10, "b": 10}, 0.5, tolerance=0.01)
