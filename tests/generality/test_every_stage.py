"""Every recipe stage on every example family, through the one call shape ``nnzip.apply``.

Each pair ends in a working model (outputs of the same shape, finite) whose coverage accounts for
every parameter, or in an NnzipError that names what it could not handle: never an exception from
inside torch, never a silent no-op reported as done.
"""

import copy

import pytest
import torch
from generality_helpers import FAMILIES, example, example_splits

from nnzip import NnzipError, apply
from nnzip.core import unique_parameters

#: Each stage with options small enough for a test (one short epoch where it trains).
STAGE_OPTIONS = {
    "finetune": {"epochs": 1, "batch_size": 8},
    "prune": {"sparsity": 0.5, "finetune_epochs": 0},
    "prune_channels": {"finetune_epochs": 0, "calibration_batches": 1},
    "sensitivity": {"sparsities": [0.5]},
    "fold_batchnorm": {},
    "quantize": {"calibration_batches": 2},
    "qat": {"finetune_epochs": 1, "batch_size": 8, "calibration_batches": 2},
    "mixed_precision": {"average_bits": 6, "calibration_batches": 2},
    "distill": {"finetune_epochs": 1, "batch_size": 8},
    "svd": {"finetune_epochs": 0, "energy": 0.9},
    "tucker": {"finetune_epochs": 0},
    "cluster": {"finetune_epochs": 0, "bits": 4},
    "product_quantize": {"finetune_epochs": 0},
    "encode": {},
}

#: The only (stage, family) pairs that may refuse, with what the refusal must say: everything
#: else must work. Product quantization's default codebook (256 codewords) outgrows these tiny
#: weights; channel pruning has nothing to shrink in a recurrent LM or in bare parameters.
REFUSALS = {
    ("product_quantize", "shufflenet"): "would grow",
    ("product_quantize", "functional"): "would grow",
    ("product_quantize", "shared_layer"): "would grow",
    ("prune_channels", "lstm_lm"): "cannot shrink recurrent layers",
    ("prune_channels", "gru_lm"): "cannot shrink recurrent layers",
    ("prune_channels", "functional"): "uses its own parameters",
}

#: Stages that exist for Hugging Face encoders only, and say so on other models.
HF_ONLY = ("prune_heads", "drop_layers")


def test_every_stage_is_in_the_suite():
    from nnzip.recipe import STAGES

    assert set(STAGES) == set(STAGE_OPTIONS) | set(HF_ONLY)


@pytest.mark.parametrize("stage", list(STAGE_OPTIONS))
@pytest.mark.parametrize("family", FAMILIES)
def test_a_stage_works_or_names_what_it_cannot_handle(stage, family):
    model, inputs = example(family)
    data = example_splits(family)
    with torch.no_grad():
        reference = model(inputs)
    params = sum(p.numel() for p in unique_parameters(model).values())
    refusal = REFUSALS.get((stage, family))
    if refusal is not None:
        with pytest.raises(NnzipError, match=refusal):
            apply(copy.deepcopy(model), stage, data, **STAGE_OPTIONS[stage])
        return
    result = apply(copy.deepcopy(model), stage, data, **STAGE_OPTIONS[stage])
    with torch.no_grad():
        output = result.model(inputs)
    assert output.shape == reference.shape
    assert torch.isfinite(output).all()
    assert not result.model.training
    coverage = result.coverage
    assert 0.0 <= coverage.changed_fraction <= 1.0
    # Every parameter is accounted for: of the model as given, or as returned (layers rebuilt).
    after = sum(p.numel() for p in unique_parameters(result.model).values())
    assert coverage.total_params in (params, after)


@pytest.mark.parametrize("stage", HF_ONLY)
@pytest.mark.parametrize("family", ["vit", "text_transformer", "lstm_lm"])
def test_encoder_only_stages_refuse_other_models_by_name(stage, family):
    model, _ = example(family)
    with pytest.raises(NnzipError, match="Hugging Face|BERT|encoder"):
        apply(model, stage, example_splits(family))


@pytest.mark.parametrize("family", ["vit", "conv1d", "shared_layer"])
def test_a_torch_export_program_is_compressed_like_the_model_it_came_from(family):
    """A user model loaded from a .pt2 is a graph of aten operators over plain holders: its
    weights are still found (as functional weights), pruned and quantized."""
    from nnzip.core import find_weights

    model, inputs = example(family)
    program = torch.export.export(model, (inputs,)).module()
    assert sum(w.numel for w in find_weights(program)) == sum(
        w.numel for w in find_weights(model))
    pruned = apply(program, "prune", sparsity=0.5, finetune_epochs=0)
    weights = [w.param for w in find_weights(pruned.model)]
    zeros = sum(int((p == 0).sum()) for p in weights)
    assert zeros == round(0.5 * sum(p.numel() for p in weights))
    quantized = apply(torch.export.export(model, (inputs,)).module(), "quantize", mode="dynamic")
    assert quantized.coverage.changed_params == sum(w.numel for w in find_weights(model))
    with torch.no_grad():
        reference, output = model(inputs), quantized.model(inputs)
    assert float((output - reference).norm() / reference.norm()) < 0.05
