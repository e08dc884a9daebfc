"""Schedules: the cubic curve, iterative steps, masks kept through fit, gradual reaching target."""

import copy

import pytest
import torch

from nnzip.errors import NnzipError
from nnzip.prune import (
    cubic_sparsity,
    finetune_masked,
    fold_masks,
    gradual_prune,
    iterative_prune,
    iterative_sparsities,
    layer_sparsity,
    magnitude_prune,
    mask_hook,
    oneshot_prune,
    prune_unstructured,
    sparsity_summary,
)
from nnzip.prune.sensitivity import split_accuracy
from nnzip.train import TrainConfig, fit


def test_cubic_schedule_starts_at_initial_ends_at_final_and_is_cubic_in_between():
    assert cubic_sparsity(0, 0.9, end_step=100) == 0.0
    assert cubic_sparsity(100, 0.9, end_step=100) == pytest.approx(0.9)
    assert cubic_sparsity(500, 0.9, end_step=100) == pytest.approx(0.9)
    # Midpoint: s_f + (s_i − s_f)(1 − ½)³ = 0.9 − 0.9/8.
    assert cubic_sparsity(50, 0.9, end_step=100) == pytest.approx(0.9 - 0.9 / 8)
    assert cubic_sparsity(60, 0.8, initial_sparsity=0.2, begin_step=20, end_step=100) == \
        pytest.approx(0.8 + (0.2 - 0.8) * 0.5 ** 3)


def test_cubic_schedule_only_changes_every_delta_t_steps():
    values = [cubic_sparsity(t, 0.9, end_step=100, frequency=10) for t in range(101)]
    assert values[55] == values[50] and values[59] == values[50] < values[60]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_iterative_sparsities_end_at_target_linearly_or_geometrically():
    assert iterative_sparsities(0.8, 4, "linear") == pytest.approx([0.2, 0.4, 0.6, 0.8])
    geometric = iterative_sparsities(0.99, 2, "geometric")
    assert geometric == pytest.approx([0.9, 0.99])  # each step keeps 10 % of what is left


def test_masks_stay_zero_through_fine_tuning_and_the_folded_model_is_plain(trained_mlp, digits):
    masks = magnitude_prune(trained_mlp, 0.8)
    before = {k: v.clone() for k, v in trained_mlp.state_dict().items()}
    fit(trained_mlp, digits, TrainConfig(epochs=2, patience=None), step_hook=mask_hook(masks),
        progress=False)
    fold_masks(trained_mlp, masks)
    state = trained_mlp.state_dict()
    assert set(state) == set(before), "no weight_orig / weight_mask left behind"
    for name, mask in masks.items():
        assert torch.all(state[name][~mask] == 0)
        assert not torch.equal(state[name][mask], before[name][mask]), "kept weights trained"
    assert all(isinstance(p, torch.nn.Parameter) for p in trained_mlp.parameters())
    assert sparsity_summary(trained_mlp)["achieved_sparsity"] == pytest.approx(0.8, abs=1e-4)


def test_without_the_hook_the_optimizer_revives_pruned_weights(trained_mlp, digits):
    # The reason mask_hook exists: Adam moves zeroed weights away from zero.
    magnitude_prune(trained_mlp, 0.8)
    fit(trained_mlp, digits, TrainConfig(epochs=1, patience=None), progress=False)
    assert sparsity_summary(trained_mlp)["achieved_sparsity"] < 0.4


def test_oneshot_prune_then_finetune_recovers_accuracy(trained_mlp, digits):
    dense = split_accuracy(trained_mlp, digits, "test")
    masks = oneshot_prune(trained_mlp, digits, 0.8, TrainConfig(epochs=3, patience=None))
    assert sparsity_summary(trained_mlp)["achieved_sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert all(torch.all(p[~masks[n]] == 0) for n, p in trained_mlp.named_parameters()
               if n in masks)
    assert split_accuracy(trained_mlp, digits, "test") > dense - 0.05


def test_iterative_prune_reaches_the_final_sparsity_in_steps(trained_mlp, digits):
    seen = []

    def pruner(model, sparsity, keep):
        seen.append(round(sparsity, 4))
        return prune_unstructured(model, sparsity, keep=keep)

    iterative_prune(trained_mlp, digits, 0.9, TrainConfig(epochs=1, patience=None), steps=3,
                    spacing="linear", pruner=pruner)
    assert seen == [0.3, 0.6, 0.9]
    assert sparsity_summary(trained_mlp)["achieved_sparsity"] == pytest.approx(0.9, abs=1e-4)


def test_gradual_prune_moves_masks_inside_fit_and_ends_at_the_target(trained_mlp, digits):
    targets = []

    def pruner(model, sparsity, keep):
        targets.append(sparsity)
        return prune_unstructured(model, sparsity, keep=keep)

    masks = gradual_prune(trained_mlp, digits, 0.8, TrainConfig(epochs=4, patience=None),
                          pruner=pruner, updates=5, ramp_fraction=0.5)
    assert targets[0] == 0.0 and targets[-1] == pytest.approx(0.8) and len(targets) == 6
    assert targets == sorted(targets)
    assert sparsity_summary(trained_mlp)["achieved_sparsity"] == pytest.approx(0.8, abs=1e-4)
    for name, fraction in layer_sparsity(trained_mlp).items():
        assert fraction == pytest.approx(1 - masks[name].float().mean().item(), abs=1e-6)
    assert split_accuracy(trained_mlp, digits, "val") > 0.8


def test_gradual_prune_needs_training_epochs(mlp, digits):
    with pytest.raises(NnzipError, match="at least 1 epoch"):
        gradual_prune(mlp, digits, 0.5, TrainConfig(epochs=0))


def test_real_mnist_lenet300_pruned_90_percent_keeps_95_percent_accuracy(lenet300, mnist):
    model = copy.deepcopy(lenet300)  # the session fixture stays untouched
    masks = magnitude_prune(model, 0.9)
    finetune_masked(model, mnist, masks, TrainConfig(epochs=2, lr=2e-3, patience=None,
                                                     augment=False))
    fold_masks(model, masks)
    assert sparsity_summary(model)["weight_sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert split_accuracy(model, mnist, "test") >= 0.95
