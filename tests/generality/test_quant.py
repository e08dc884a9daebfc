"""Quantization on every model family: static W8A8, dynamic int8, GPTQ W4, QAT, mixed precision
and int8 ONNX export each give a model close to the float one (relative output error below a
bound) or an NnzipError that says why, with a coverage that accounts for every weight."""

import copy
import functools

import pytest
import torch
from generality_helpers import example, example_splits, relative_error
from torch import nn

from nnzip.core import find_weights
from nnzip.quant import QuantConfig, Quantize, mixed_precision, qat, quantize
from nnzip.runtime import OrtModule, export_onnx
from nnzip.train import TrainConfig

CONV_FAMILIES = ["shufflenet", "densenet", "conv1d", "conv3d"]
ATTENTION_FAMILIES = ["vit", "text_transformer"]
LANGUAGE_MODELS = ["lstm_lm", "gru_lm"]
#: Relative output error bounds (measured worst over the families: W8A8 0.024, dynamic 0.017,
#: GPTQ W4 per-channel 0.12, QAT 0.04, mixed precision at 4 bits on average 0.17).
W8A8_BOUND, DYNAMIC_BOUND, W4_BOUND, QAT_BOUND, MIXED_BOUND = 0.05, 0.05, 0.25, 0.1, 0.35


@functools.cache
def splits(family: str):
    return example_splits(family)


def calibration(family: str) -> list[torch.Tensor]:
    return [splits(family).train.tensors[0]]


def output_error(family: str, quantized: nn.Module) -> float:
    model, _ = example(family)
    inputs = splits(family).test.tensors[0]
    with torch.no_grad():
        return relative_error(quantized(inputs), model(inputs))


@functools.cache
def static_w8a8(family: str):
    return quantize(example(family)[0], Quantize(), calibration=calibration(family))


def assert_every_weight_accounted_for(model: nn.Module, coverage) -> None:
    """Each weight was quantized or is listed with the reason it was not: nothing silent."""
    weights = {weight.name for weight in find_weights(model)}
    assert set(coverage.changed) | set(coverage.skipped) == weights
    assert all(reason for reason in coverage.skipped.values())


def test_static_w8a8_is_close_to_float_and_accounts_for_every_weight(family):
    result = static_w8a8(family)
    assert not result.model.training
    assert output_error(family, result.model) < W8A8_BOUND
    assert_every_weight_accounted_for(example(family)[0], result.coverage)
    assert result.coverage.changed_fraction > 0.8  # all but embeddings left float by default


def test_w8a8_error_of_attention_models_is_that_of_the_conv_models():
    errors = {family: output_error(family, static_w8a8(family).model)
              for family in CONV_FAMILIES + ATTENTION_FAMILIES}
    print("W8A8 relative output error:", {k: round(v, 4) for k, v in errors.items()})
    worst_conv = max(errors[family] for family in CONV_FAMILIES)
    # The text encoder mean-pools its tokens as the conv models pool their positions.
    assert errors["text_transformer"] <= 2 * worst_conv
    # The ViT's head reads one token (the class token), so its rounding noise is not averaged
    # over positions as under global pooling, and it runs 14 quantized layers in series: measured
    # 3.4x the worst conv family (0.024 vs 0.007), with every attention projection quantized.
    assert errors["vit"] <= 4 * worst_conv
    assert max(errors[family] for family in ATTENTION_FAMILIES) < 0.03


def test_w8a8_error_per_layer_of_attention_models_is_that_of_the_conv_models():
    """Layer by layer (each quantized layer on its own input), attention projections and MLPs
    lose what convolutions lose: the ViT's larger model-level error is depth (14 layers against
    3-5) and its one-token readout, not a worse quantizer."""
    import statistics

    from nnzip.quant.layer_error import layer_errors

    medians = {}
    for family in CONV_FAMILIES + ATTENTION_FAMILIES:
        test = splits(family).test
        errors = layer_errors(static_w8a8(family).model, [(test.tensors[0], test.tensors[1])])
        medians[family] = statistics.median(e["output_error"] for e in errors.values())
    print("W8A8 median per-layer output error:", {k: round(v, 4) for k, v in medians.items()})
    worst_conv = max(medians[family] for family in CONV_FAMILIES)
    assert all(medians[family] <= worst_conv for family in ATTENTION_FAMILIES)


@pytest.mark.parametrize("family", ATTENTION_FAMILIES)
def test_w8a8_attention_quantizes_every_projection_weights_and_activations(family):
    coverage = static_w8a8(family).coverage
    notes = {name: record.note for name, record in
             ((r.name, r) for r in coverage.records) if record.changed}
    in_proj = [name for name in notes if name.endswith("in_proj_weight")]
    assert len(in_proj) == 2  # two blocks
    for name in in_proj:
        assert notes[name] == "q, k, v projections: int8 per-channel weights, int8 activations"
        out_proj = name.replace("in_proj_weight", "out_proj.weight")
        assert notes[out_proj] == "int8 per-channel weights, int8 activations"


def torch_dynamic_changed_params(model: nn.Module) -> int:
    """Parameters torch.ao.quantization.quantize_dynamic changes: the weights of the modules it
    replaces by dynamically quantized ones (each tensor once)."""
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model))
    originals = dict(model.named_modules())
    changed = {}
    for name, module in quantized.named_modules():
        original = originals.get(name)
        if original is not None and type(module) is not type(original):
            changed.update({id(p): p.numel() for p in original.parameters(recurse=False)
                            if p.dim() >= 2})
    return sum(changed.values())


def test_dynamic_int8_is_close_and_covers_at_least_what_torch_covers(family):
    model, _ = example(family)
    result = quantize(model, Quantize(mode="dynamic"))
    assert output_error(family, result.model) < DYNAMIC_BOUND
    assert_every_weight_accounted_for(model, result.coverage)
    torch_params = torch_dynamic_changed_params(model)
    print(f"{family}: dynamic int8 changes {result.coverage.changed_params} parameters, "
          f"torch.ao quantize_dynamic {torch_params}")
    assert result.coverage.changed_params >= torch_params


@pytest.mark.parametrize("granularity", ["channel", "group"])
def test_gptq_w4_is_close_to_float(family, granularity):
    model, _ = example(family)
    options = {"granularity": "group", "group_size": 8} if granularity == "group" else {}
    result = quantize(model, Quantize(weight_bits=4, rounding="gptq", **options),
                      calibration=calibration(family))
    assert output_error(family, result.model) < W4_BOUND
    assert result.coverage.method == "gptq"
    assert_every_weight_accounted_for(model, result.coverage)
    notes = [record.note for record in result.coverage.records if record.changed]
    # GPTQ needs a layer's inputs: LSTM/GRU gates, functional and tied weights are read by
    # kernels it cannot see into, so they are rounded to nearest, and the coverage says so.
    weight_only = family in LANGUAGE_MODELS + ["functional"]
    assert any("GPTQ rounding" in note for note in notes) == (not weight_only)
    assert all("GPTQ rounding" in note or "rounded to nearest" in note for note in notes)
    assert all("int4" in note for note in notes)
    if granularity == "group":  # rows 8 does not divide fall back to per-channel, and say so
        assert all("group-8" in note or "group_size 8 does not divide" in note
                   for note in notes)


def test_qat_one_epoch_stays_close_on_every_family(family):
    """Language models train on every position (nnzip.core.outputs)."""
    model, _ = example(family)
    data = splits(family)
    config = TrainConfig(epochs=1, patience=None, lr=1e-4)
    result, train = qat(model, data, calibration(family), QuantConfig(), config)
    assert train.epochs_run == 1
    assert not result.model.training  # eval mode, whatever fit() left
    assert output_error(family, result.model) < QAT_BOUND
    assert result.coverage.method == "qat"
    assert_every_weight_accounted_for(model, result.coverage)


def test_mixed_precision_meets_its_budget_and_stays_close(family):
    model, _ = example(family)
    data = splits(family)
    validation = [(data.val.tensors[0], data.val.tensors[1])]
    result = mixed_precision(model, calibration(family), validation, average_bits=4)
    plan = result.details["plan"]
    assert plan.average_bits <= 4 + 1e-9
    assert output_error(family, result.model) < MIXED_BOUND
    assert result.coverage.method == "mixed_precision"
    assert_every_weight_accounted_for(model, result.coverage)


def test_int8_onnx_export_runs_in_onnx_runtime_as_simulated(family, tmp_path):
    quantized = static_w8a8(family).model
    inputs = splits(family).test.tensors[0]
    path = export_onnx(quantized, tmp_path / "int8.onnx", inputs[:2])
    with torch.no_grad():
        simulated = quantized(inputs)
    # Fusions off: ORT runs nnzip's arithmetic in float (as tests/runtime/test_onnx.py checks
    # the conv models), up to summation order.
    exported = OrtModule(path, optimization="none")(inputs)
    assert (exported - simulated).abs().median() < 1e-4
    assert relative_error(exported, simulated) < 1e-4
    fused = OrtModule(path, optimization="all")(inputs)
    assert relative_error(fused, simulated) < 1e-2


@pytest.mark.parametrize("family", LANGUAGE_MODELS)
@pytest.mark.parametrize("method", ["static", "dynamic", "gptq", "mixed"])
def test_tied_embedding_and_decoder_stay_one_tensor(family, method):
    model, _ = example(family)
    if method == "mixed":
        data = splits(family)
        result = mixed_precision(model, calibration(family),
                                 [(data.val.tensors[0], data.val.tensors[1])], average_bits=4)
    else:
        config = {"static": Quantize(), "dynamic": Quantize(mode="dynamic"),
                  "gptq": Quantize(weight_bits=4, rounding="gptq")}[method]
        result = quantize(model, config, calibration=calibration(family))
    quantized = result.model
    embed, decoder = quantized.embed, quantized.decoder
    assert embed.parametrizations.weight.original is decoder.parametrizations.weight.original
    assert embed.parametrizations.weight[0] is decoder.parametrizations.weight[0]
    assert embed.weight is decoder.weight  # both users read the same quantized tensor
    assert not torch.equal(embed.weight, model.embed.weight)  # and it is quantized
    record = next(r for r in result.coverage.records if r.name == "embed.weight")
    assert record.changed and record.aliases == ("decoder.weight",)
    assert "tied to decoder.weight" in record.note
