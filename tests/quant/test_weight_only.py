"""Weight-only quantization by parametrization: LSTM/GRU gates, functional parameters and tied
tensors get integer weights every reader uses, the state dict ships them packed and loads back
exactly, QAT trains through them, and float_view gives plain (still tied) parameters back."""

import pytest
import torch
from torch.nn.utils import parametrize

from nnzip.models.examples import example_model
from nnzip.quant import (
    QuantConfig,
    Quantize,
    WeightQuantizer,
    prepare,
    quantize,
    quantized_weights,
)
from nnzip.runtime.onnx_export import float_view
from nnzip.stage import Context


@pytest.mark.parametrize("family", ["lstm_lm", "gru_lm"])
def test_rnn_gates_are_int8_per_channel_and_the_rnn_still_runs(family):
    model, tokens = example_model(family)
    result = quantize(model, Quantize(mode="dynamic"))
    quantized = result.model
    rnn = quantized.rnn
    for name in ("weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"):
        quantizer, original = quantized_weights(quantized)[f"rnn.{name}"]
        assert quantizer.weight_int.dtype == torch.int8
        assert int(quantizer.weight_int.abs().max()) == 127  # per-channel symmetric range
        weight = getattr(rnn, name)
        assert torch.equal(weight, quantizer.dequantized(original))
        assert not torch.equal(weight, getattr(model.rnn, name))
        assert (weight - getattr(model.rnn, name)).abs().max() <= \
            quantizer.weight_qparams.scale.max() / 2 + 1e-7
        kernel = "LSTM" if family == "lstm_lm" else "GRU"
        record = next(r for r in result.coverage.records if r.name == f"rnn.{name}")
        assert record.note == ("weight-only int8 per-channel (activations float: the "
                               f"{kernel} kernel is fused)")
    with torch.no_grad():
        output, reference = quantized(tokens), model(tokens)
    assert torch.isfinite(output).all()
    assert 0 < float((output - reference).norm() / reference.norm()) < 0.02


def test_packed_state_dict_loads_back_bit_identical_and_is_smaller():
    model, tokens = example_model("lstm_lm")
    quantized = quantize(model, Quantize(), calibration=[tokens]).model
    state = quantized.state_dict()
    assert "rnn.parametrizations.weight_ih_l0.original_packed" in state
    assert not any(key.endswith(".original") for key in state)
    # The tied tensor is one packed tensor under both names.
    assert state["embed.parametrizations.weight.original_packed"] is \
        state["decoder.parametrizations.weight.original_packed"]
    fresh = prepare(model, QuantConfig()).eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh(tokens), quantized(tokens))
    float_bytes = sum(p.numel() * 4 for p in model.parameters())
    packed_bytes = sum(t.numel() * t.element_size() for t in state.values())
    assert packed_bytes < 0.35 * float_bytes


def test_functional_parameters_are_quantized_where_the_user_reads_them():
    model, images = example_model("functional")
    result = quantize(model, Quantize(weight_bits=4), calibration=[images])
    quantized = result.model
    assert parametrize.is_parametrized(quantized, "conv_weight")
    quantizer, _ = quantized_weights(quantized)["conv_weight"]
    assert isinstance(quantizer, WeightQuantizer) and quantizer.weight_int.abs().max() <= 7
    assert result.coverage.changed == ["conv_weight", "fc_weight"]
    with torch.no_grad():
        assert not torch.equal(quantized(images), model(images))


def test_qat_trains_the_weight_only_tensors_through_the_rounding():
    model, images = example_model("functional")
    prepared = prepare(model, QuantConfig(weight_bits=4))
    quantizer, original = quantized_weights(prepared)["fc_weight"]
    quantizer.freeze(original)
    quantizer.set_mode("train", original)
    loss = prepared(images).pow(2).sum()
    loss.backward()
    assert original.grad is not None and original.grad.abs().sum() > 0  # straight through
    with torch.no_grad():
        original.add_(0.05)
    quantizer.set_mode("quantize", original)  # rounds the trained weight again
    assert torch.equal(prepared.fc_weight, quantizer.dequantized(original))
    assert (prepared.fc_weight - original).abs().max() <= quantizer.weight_qparams.scale.max()


def test_float_view_gives_plain_tied_parameters_and_attention_back():
    model, tokens = example_model("lstm_lm")
    quantized = quantize(model, Quantize(), calibration=[tokens]).model
    view = float_view(quantized)
    assert not parametrize.is_parametrized(view.rnn)
    assert view.embed.weight is view.decoder.weight
    with torch.no_grad():
        assert torch.equal(view(tokens), quantized(tokens))
    vit, images = example_model("vit")
    view = float_view(quantize(vit, Quantize(activation_bits=None), calibration=[images]).model)
    assert isinstance(view.blocks[0].attn, torch.nn.MultiheadAttention)
    assert view.state_dict().keys() == vit.state_dict().keys()


def test_quantize_stage_records_the_coverage():
    model, tokens = example_model("lstm_lm")
    context = Context(data=None)
    quantized = Quantize(mode="dynamic").apply(model, context)
    coverage = context.details["coverage"]
    assert coverage["method"] == "quantize_dynamic"
    assert coverage["changed_fraction"] == pytest.approx(
        sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2) /
        sum(p.numel() for p in model.parameters()), abs=1e-6)
    assert "rnn.weight_hh_l1" in context.details["layer_bits"]
    assert not quantized.training
