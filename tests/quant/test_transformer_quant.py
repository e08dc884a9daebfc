"""nnzip.quant on a real transformer (the shipped MiniLM): dynamic int8 keeps the embeddings,
int8 embedding tables shrink the artifact, SmoothQuant leaves the float function unchanged,
GPTQ works on attention Linears, and the per-layer error table says where the loss is."""

import pytest
import torch
from torch import nn

from nnzip.errors import NnzipError
from nnzip.evaluate import artifact_bytes
from nnzip.quant import (
    QuantConfig,
    prepare,
    quantize_dynamic,
    quantize_static,
    quantized_layers,
    static_ptq,
)
from nnzip.quant.layer_error import layer_errors
from nnzip.quant.smooth import smooth_quant, smoothing_factors

SENTENCES = ["A man is playing a guitar.", "A woman is slicing an onion with a knife.",
             "Three dogs are running through the snow.", "The stock market fell sharply today.",
             "A child rides a horse on the beach.", "Kids are playing football in a park."]
LAYER0 = "transformer.encoder.layer.0"


@pytest.fixture(scope="module")
def token_ids(minilm):
    return minilm.tokenize(SENTENCES)[0]


@pytest.fixture(scope="module")
def calibration(minilm):
    return [minilm.tokenize(SENTENCES[:3])[0], minilm.tokenize(SENTENCES[3:])[0]]


@pytest.fixture(scope="module")
def reference(minilm, token_ids):
    with torch.no_grad():
        return minilm(token_ids)


def cosine(model, token_ids, reference) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.cosine_similarity(model(token_ids), reference).min())


def test_dynamic_int8_per_channel_stays_close_to_fp32(minilm, token_ids, reference):
    dynamic = quantize_dynamic(minilm)
    assert len(quantized_layers(dynamic)) == 36  # every Linear, embeddings untouched
    assert cosine(dynamic, token_ids, reference) > 0.98


def test_int8_embeddings_cut_the_artifact_below_30_percent(minilm, token_ids, reference):
    dynamic = quantize_dynamic(minilm, embedding_bits=8)
    state = dynamic.state_dict()
    assert "transformer.embeddings.word_embeddings.weight_packed" in state
    assert state["transformer.embeddings.word_embeddings.weight_packed"].dtype == torch.uint8
    assert artifact_bytes(dynamic) < 0.30 * artifact_bytes(minilm)
    assert cosine(dynamic, token_ids, reference) > 0.98


def test_smoothing_leaves_the_float_function_unchanged(minilm, token_ids, reference, calibration):
    prepared = prepare(minilm, QuantConfig())
    smoothed = smooth_quant(prepared, calibration, alpha=0.5)
    assert f"{LAYER0}.attention.self.query" in smoothed
    with torch.no_grad():
        assert torch.allclose(prepared(token_ids), reference, atol=1e-4)  # observe = float
    query = prepared.get_submodule(f"{LAYER0}.attention.self.query")
    assert query.smoothing is not None and query.smoothing.shape == (384,)


def test_smoothing_factors_balance_activation_and_weight_ranges():
    activation_max = torch.tensor([100.0, 1.0, 0.0])
    weight = torch.tensor([[1.0, 1.0, 2.0], [-1.0, 0.5, 1.0]])
    factors = smoothing_factors(activation_max, weight, alpha=0.5)
    assert torch.allclose(factors[:2], torch.tensor([10.0, 1.0]))
    assert factors[2] == 1.0  # a channel never active keeps its scale
    # After smoothing, max|X_j| / s_j == max|W_j| · s_j for the active channels.
    assert torch.allclose(activation_max[:2] / factors[:2],
                          weight.abs().amax(0)[:2] * factors[:2])


def test_smoothquant_state_dict_round_trips(minilm, token_ids, calibration):
    config = QuantConfig(embedding_bits=8, smoothquant_alpha=0.5)
    quantized = quantize_static(minilm, calibration, config)
    restored = prepare(minilm, config)
    restored.load_state_dict(quantized.state_dict())
    with torch.no_grad():
        assert torch.allclose(restored(token_ids), quantized(token_ids), atol=1e-5)


def test_smoothquant_layers_limits_smoothing_to_the_named_ones(minilm, calibration):
    query = f"{LAYER0}.attention.self.query"
    _, details = static_ptq(minilm, calibration, QuantConfig(smoothquant_alpha=0.5,
                                                              smoothquant_layers=[query]))
    assert details["smoothed_layers"] == [query]


def test_smoothquant_needs_quantized_activations():
    with pytest.raises(NnzipError, match="activation_bits"):
        QuantConfig(activation_bits=None, smoothquant_alpha=0.5)
    with pytest.raises(NnzipError, match="between 0 and 1"):
        QuantConfig(smoothquant_alpha=1.5)


def test_gptq_on_attention_linears_beats_rounding_to_nearest(minilm, calibration):
    layers = [f"{LAYER0}.attention.self.value", f"{LAYER0}.output.dense"]
    def int4(rounding):
        return QuantConfig(weight_bits=4, activation_bits=None, weight_granularity="group",
                           group_size=64, rounding=rounding, layers=layers)
    rtn = layer_errors(quantize_static(minilm, calibration, int4("nearest")), calibration)
    gptq = layer_errors(quantize_static(minilm, calibration, int4("gptq")), calibration)
    for layer in layers:
        # GPTQ trades weight error for output error on the calibration inputs.
        assert gptq[layer]["output_error"] < rtn[layer]["output_error"]


def test_layer_error_table_covers_every_layer(minilm, calibration):
    quantized = quantize_static(minilm, calibration, QuantConfig(embedding_bits=8))
    table = layer_errors(quantized, calibration[:1], reference=minilm)
    assert len(table) == 36 + 3  # Linears and the three embedding tables
    row = table[f"{LAYER0}.attention.self.query"]
    assert 0 < row["weight_error"] < 0.02
    assert 0 < row["output_error"] < 0.1
    assert row["accumulated_error"] >= 0
    with pytest.raises(NnzipError, match="reference"):
        layer_errors(quantized, calibration[:1], reference=nn.Linear(2, 2))
