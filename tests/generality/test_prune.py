"""Pruning on every user-style family: exact sparsity over every weight it covers, tied weights
pruned once and still tied, N:M groups exact, calibrated pruning skipping (and naming) what it
cannot handle, and a coverage that accounts for every weight."""

import copy

import pytest
import torch
from torch.nn.utils import prune as torch_prune

from nnzip.core import find_weights
from nnzip.core.weights import Kind
from nnzip.errors import NnzipError
from nnzip.prune import (
    Prune,
    apply_masks,
    layer_sizes,
    magnitude_prune,
    prune,
    sparsity_summary,
)
from nnzip.stage import Context
from tests.generality.conftest import example, example_splits

TIED = {"lstm_lm": ("decoder", "embed"), "gru_lm": ("decoder", "embed")}


def _weights(model):
    return {weight.name: weight for weight in find_weights(model)}


def _zeros(tensor: torch.Tensor) -> int:
    return int((tensor == 0).sum())


def _assert_still_tied(family, model):
    if family in TIED:
        output, embedding = TIED[family]
        assert getattr(model, output).weight is getattr(model, embedding).weight


def _assert_runs(model, inputs, reference_shape):
    with torch.no_grad():
        output = model(inputs)
    assert output.shape == reference_shape and torch.isfinite(output).all()


def _assert_every_weight_accounted_for(model, coverage):
    """Each weight was changed, or is listed as skipped with a reason."""
    for name in _weights(model):
        assert name in coverage.changed or coverage.skipped.get(name), name


def test_magnitude_half_global_reaches_exactly_half_of_every_weight_like_torch(family):
    model, inputs = example(family)
    reference_shape = model(inputs).shape
    theirs = copy.deepcopy(model)
    weights = _weights(model)
    assert sum(_zeros(w.param) for w in weights.values()) == 0  # so zeros == pruned

    result = prune(model, Prune(sparsity=0.5, finetune_epochs=0))

    total = sum(weight.numel for weight in weights.values())
    assert set(result.coverage.changed) == set(weights)  # every weight, tied ones once
    assert result.coverage.changed_params == total
    assert sum(_zeros(w.param) for w in weights.values()) == round(0.5 * total)
    assert sparsity_summary(model)["weight_sparsity"] == pytest.approx(round(0.5 * total) / total)
    # torch's own global pruning over the same tensors: same count, and (magnitudes of random
    # weights have no ties) the very same mask.
    their_weights = find_weights(theirs)
    torch_prune.global_unstructured([(w.module, w.attr) for w in their_weights],
                                     torch_prune.L1Unstructured, amount=0.5)
    assert result.coverage.changed_params >= sum(w.numel for w in their_weights)
    for weight in their_weights:
        their_mask = getattr(weight.module, f"{weight.attr}_mask").bool()
        assert torch.equal(weights[weight.name].param != 0, their_mask), weight.name
    _assert_still_tied(family, model)
    _assert_runs(model, inputs, reference_shape)
    assert not model.training


def test_tied_weight_is_pruned_once_and_named_by_any_of_its_names():
    model, inputs = example("lstm_lm")
    sizes = layer_sizes(model)
    assert "decoder.weight" not in sizes and sizes["embed.weight"] == 100 * 32
    masks = magnitude_prune(model, 0.5, layers=["decoder"])  # the alias selects the one tensor
    assert list(masks) == ["embed.weight"]
    assert _zeros(model.embed.weight) == round(0.5 * 100 * 32)
    assert model.decoder.weight is model.embed.weight
    apply_masks(model, {"decoder.weight": torch.zeros(100, 32, dtype=torch.bool)})
    assert _zeros(model.embed.weight) == 100 * 32
    untouched, _ = example("lstm_lm")
    masks = magnitude_prune(untouched, 0.5, exclude=["decoder"])  # excludes the tied tensor
    assert "embed.weight" not in masks and _zeros(untouched.embed.weight) == 0


def test_nm_2_of_4_in_every_covered_group_and_skipped_weights_listed(family):
    model, inputs = example(family)
    reference_shape = model(inputs).shape
    result = prune(model, Prune(pattern="n:m", n=2, m=4, finetune_epochs=0))

    weights = _weights(model)
    assert result.coverage.changed, "N:M pruned nothing"
    for name in result.coverage.changed:
        weight = weights[name].param.detach()
        groups = weight.reshape(weight.shape[0], -1, 4)
        assert ((groups != 0).sum(dim=-1) == 2).all(), name
    for name, reason in result.coverage.skipped.items():
        weight = weights[name]
        if weight.input_length % 4:
            assert f"{weight.input_length} inputs per output" in reason
        else:
            assert "embedding table" in reason and weight.kind == "embedding"
        assert _zeros(weight.param) == 0  # skipped means left dense
    assert result.details["skipped_layers"] == list(result.coverage.skipped)
    _assert_every_weight_accounted_for(model, result.coverage)
    _assert_still_tied(family, model)
    _assert_runs(model, inputs, reference_shape)


def _calibrated_kind(weight) -> bool:
    """Weights Wanda/SparseGPT must cover: Linear, attention, groups=1 convolutions, untied."""
    return (weight.kind in (Kind.LINEAR, Kind.ATTENTION_IN, Kind.ATTENTION_OUT)
            or (weight.kind == Kind.CONV and weight.groups == 1)) and not weight.tied


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_calibrated_half_prunes_every_row_it_covers_or_names_why_nothing_is_left(family,
                                                                                  criterion):
    model, inputs = example(family, batch=16)
    reference_shape = model(inputs).shape
    weights = _weights(model)
    expected = [name for name, weight in weights.items() if _calibrated_kind(weight)]
    config = Prune(sparsity=0.5, criterion=criterion, finetune_epochs=0)
    if not expected:
        with pytest.raises(NnzipError, match="nothing left to prune") as error:
            prune(model, config, calibration=[inputs[:8], inputs[8:]])
        for name in weights:
            assert name in str(error.value)
        return
    result = prune(model, config, calibration=[inputs[:8], inputs[8:]])
    assert result.coverage.changed == expected
    for name in expected:
        matrix = weights[name].param.detach().reshape(weights[name].shape[0], -1)
        zeros_per_row = (matrix == 0).sum(dim=1)
        assert (zeros_per_row == round(0.5 * matrix.shape[1])).all(), name
    for name, reason in result.coverage.skipped.items():
        assert reason and _zeros(weights[name].param) == 0
    _assert_every_weight_accounted_for(model, result.coverage)
    _assert_still_tied(family, model)
    _assert_runs(model, inputs, reference_shape)


@pytest.mark.parametrize("family_name", ["vit", "lstm_lm"])
@pytest.mark.parametrize("criterion", ["taylor", "hessian"])
def test_gradient_criteria_work_on_attention_and_language_models(family_name, criterion):
    model, inputs = example(family_name, batch=16)
    with torch.no_grad():
        labels = model(inputs).argmax(dim=-1)  # (N,) for the ViT, (N, L) for the LM
    result = prune(model, Prune(sparsity=0.5, criterion=criterion, finetune_epochs=0),
                   calibration=[(inputs, labels)])
    total = sum(weight.numel for weight in find_weights(model))
    assert result.coverage.changed_params == total
    assert sum(_zeros(weight.param) for weight in find_weights(model)) == round(0.5 * total)
    _assert_still_tied(family_name, model)


def test_gradient_criterion_with_labels_of_the_wrong_shape_is_a_clear_error():
    model, inputs = example("lstm_lm")
    with pytest.raises(NnzipError, match=r"integer labels of shape \(8, 12\).*\(8,\)"):
        prune(model, Prune(sparsity=0.5, criterion="taylor"),
              calibration=[(inputs, torch.zeros(8, dtype=torch.long))])


def test_prune_stage_records_the_coverage_in_the_report_details(caplog):
    model, _ = example("text_transformer")
    context = Context(data=example_splits("text_transformer"), progress=False)
    with caplog.at_level("WARNING"):
        Prune(pattern="n:m", finetune_epochs=0).apply(model, context)
    coverage = context.details["coverage"]
    assert list(coverage["skipped"]) == ["embed.weight"]
    assert "embedding table" in coverage["skipped"]["embed.weight"]
    assert "embed.weight" in caplog.text
    record = coverage["params"]["encoder.layers.0.self_attn.in_proj_weight"]
    assert record["changed"] and record["note"] == "pruned to 50.0 % zeros (magnitude, 2:4)"
    assert coverage["params"]["head.bias"]["changed"] is False
