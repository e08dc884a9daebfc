"""Masks: exact sparsity (global and per layer, ties included), N:M groups, folding, errors."""

import pytest
import torch
from torch.nn.utils import prune as torch_prune

from nnzip.errors import NnzipError
from nnzip.models import create_model
from nnzip.prune import (
    apply_masks,
    fold_masks,
    global_masks,
    layer_masks,
    layer_sparsity,
    magnitude_prune,
    nm_masks,
    nm_prune,
    prunable_names,
    prune_unstructured,
    select_parameters,
    sparsity_summary,
)


def _pruned_count(masks) -> int:
    return sum(int((~mask).sum()) for mask in masks.values())


def _total(masks) -> int:
    return sum(mask.numel() for mask in masks.values())


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.97])
def test_global_magnitude_prune_removes_exactly_the_target_fraction(mlp, sparsity):
    masks = magnitude_prune(mlp, sparsity)
    assert set(masks) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert _pruned_count(masks) == round(sparsity * _total(masks))
    assert sparsity_summary(mlp)["achieved_sparsity"] == pytest.approx(sparsity, abs=1e-5)


def test_global_threshold_gives_small_weight_layers_more_sparsity(mlp):
    with torch.no_grad():
        mlp.fc3.weight.mul_(1e-3)  # fc3's 1 000 weights are now the smallest in the model
    magnitude_prune(mlp, 0.3)
    sparsity = layer_sparsity(mlp)
    assert sparsity["fc3.weight"] == 1.0  # one threshold for all: the tiny layer goes first
    assert sparsity["fc1.weight"] < 0.3


def test_layer_scope_prunes_every_layer_to_the_target(mlp):
    masks = magnitude_prune(mlp, 0.75, scope="layer")
    for name, mask in masks.items():
        assert int((~mask).sum()) == round(0.75 * mask.numel()), name


def test_per_layer_sparsities_are_each_met(mlp):
    wanted = {"fc1.weight": 0.9, "fc2.weight": 0.5, "fc3.weight": 0.1}
    prune_unstructured(mlp, wanted, scope="layer")
    for name, fraction in layer_sparsity(mlp).items():
        assert fraction == pytest.approx(wanted[name], abs=1 / 1000)


def test_ties_at_the_threshold_do_not_overshoot_the_target():
    scores = {"a": torch.ones(10, 10), "b": torch.zeros(7, 3)}  # nothing but ties
    masks = global_masks(scores, 0.5)
    assert _pruned_count(masks) == round(0.5 * 121)
    assert int((~layer_masks({"a": torch.ones(33)}, 0.5)["a"]).sum()) == round(0.5 * 33)


def test_masks_only_grow_when_earlier_masks_are_kept(mlp):
    first = prune_unstructured(mlp, 0.5, criterion="random", seed=1)
    second = prune_unstructured(mlp, 0.8, criterion="random", seed=2, keep=first)
    for name in first:
        assert not torch.any(second[name] & ~first[name]), "a pruned weight came back"
    assert _pruned_count(second) == round(0.8 * _total(second))


def test_nm_mask_keeps_exactly_n_of_every_m_consecutive_inputs():
    torch.manual_seed(0)
    model = create_model("lenet5", input_shape=(1, 28, 28), num_classes=10)
    before_conv1 = model.conv1.weight.detach().clone()
    masks = nm_prune(model, 2, 4)
    assert "conv1.weight" not in masks  # 1·5·5 = 25 inputs: not a multiple of 4, left dense
    assert torch.equal(model.conv1.weight, before_conv1)
    for name in ("conv2.weight", "fc1.weight", "fc2.weight"):
        weight = dict(model.named_parameters())[name]
        groups = (weight != 0).reshape(weight.shape[0], -1, 4).sum(dim=2)
        assert torch.all(groups == 2), name
    scores = {"w": torch.rand(8, 24)}
    assert torch.all(nm_masks(scores, 1, 8)["w"].reshape(8, 3, 8).sum(dim=2) == 1)


def test_nm_keeps_the_largest_weights_of_each_group():
    scores = {"w": torch.tensor([[0.1, 0.9, 0.5, 0.2, 4.0, 3.0, 2.0, 1.0]])}
    assert nm_masks(scores, 2, 4)["w"].tolist() == [[False, True, True, False,
                                                     True, True, False, False]]


def test_nm_with_n_greater_than_m_is_a_clear_error(mlp):
    with pytest.raises(NnzipError, match="N <= M"):
        nm_prune(mlp, 4, 2)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_sparsity_outside_zero_to_one_is_a_clear_error(mlp, bad):
    with pytest.raises(NnzipError, match=r"sparsity must be a fraction .* in \[0, 1\)"):
        magnitude_prune(mlp, bad)


def test_unknown_layer_name_is_an_error_naming_it_and_the_valid_layers(mlp):
    with pytest.raises(NnzipError, match="layers: 'fc9' matches no weights.*fc1, fc2, fc3"):
        select_parameters(mlp, layers=["fc1", "fc9"])
    with pytest.raises(NnzipError, match="exclude: 'conv1' matches no weights"):
        select_parameters(mlp, exclude=["conv1"])
    with pytest.raises(NnzipError, match="'fc1.bias' names only what this method does not"):
        select_parameters(mlp, layers=["fc1.bias"])


def test_layers_and_exclude_select_weights_by_layer_or_weight_name(mlp):
    assert prunable_names(mlp) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert select_parameters(mlp, layers=["fc1", "fc3.weight"]) == ["fc1.weight", "fc3.weight"]
    assert select_parameters(mlp, exclude=["fc3"]) == ["fc1.weight", "fc2.weight"]
    masks = magnitude_prune(mlp, 0.5, exclude=["fc3"])
    assert "fc3.weight" not in masks and layer_sparsity(mlp)["fc3.weight"] == 0.0


def test_fold_masks_turns_torch_prune_reparametrization_into_plain_zeros(mlp):
    torch_prune.l1_unstructured(mlp.fc1, "weight", amount=0.6)
    assert "fc1.weight_orig" in mlp.state_dict()
    fold_masks(mlp)
    keys = set(mlp.state_dict())
    assert not any(key.endswith(("_orig", "_mask")) for key in keys)
    assert isinstance(mlp.fc1.weight, torch.nn.Parameter)
    assert layer_sparsity(mlp)["fc1.weight"] == pytest.approx(0.6, abs=1e-4)
    assert not mlp.fc1._forward_pre_hooks


def test_apply_masks_rejects_masks_of_another_model(mlp):
    with pytest.raises(NnzipError, match="conv9.weight"):
        apply_masks(mlp, {"conv9.weight": torch.ones(3, dtype=torch.bool)})
