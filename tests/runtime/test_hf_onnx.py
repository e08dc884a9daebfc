"""A quantized transformer encoder exports to ONNX (dynamic batch and sequence, int64 token ids)
and ONNX Runtime computes what nnzip simulated. A one-layer BERT with MiniLM's tokenizer keeps
the export fast; the shipped MiniLM goes through the same code in benchmarks/hf_quant.py."""

import torch

from nnzip.quant import QuantConfig, quantize_static
from nnzip.runtime import OrtModule, export_onnx, op_counts

SENTENCES = ["A man is playing a guitar.", "Two dogs run.", "A woman slices an onion quickly.",
             "The market fell today."]


def test_smoothquant_w8a8_encoder_runs_in_onnx_runtime(tiny_encoder, tmp_path):
    ids = tiny_encoder.tokenize(SENTENCES)[0]
    quantized = quantize_static(tiny_encoder, [ids[:2], ids[2:]],
                                QuantConfig(embedding_bits=8, smoothquant_alpha=0.5))
    float_path = export_onnx(tiny_encoder, tmp_path / "fp32.onnx", ids, sequence_dim=1)
    path = export_onnx(quantized, tmp_path / "w8a8.onnx", ids, sequence_dim=1)
    ops = op_counts(path)
    assert ops["QuantizeLinear"] >= 4 and ops["DequantizeLinear"] >= 9
    # int8 embedding table and weights: the file is far smaller than the float one.
    assert path.stat().st_size < 0.4 * float_path.stat().st_size
    runtime = OrtModule(path)
    # Another batch size and sequence length than the example: both dimensions are dynamic.
    other = tiny_encoder.tokenize(SENTENCES[:3] + ["A much longer sentence with many more words "
                                                    "than any of the others in this batch."])[0]
    with torch.no_grad():
        expected = quantized(other)
    got = runtime(other)
    assert got.shape == expected.shape
    assert torch.nn.functional.cosine_similarity(got, expected).min() > 0.99


def test_weight_only_int8_encoder_keeps_float_activations_in_onnx_runtime(tiny_encoder, tmp_path):
    # ORT fuses DequantizeLinear → MatMul into MatMulNBits, which by default also rounds the
    # activations to int8; nnzip's sessions ask it not to, so ORT computes what nnzip measured.
    ids = tiny_encoder.tokenize(SENTENCES)[0]
    quantized = quantize_static(tiny_encoder, [ids], QuantConfig(activation_bits=None,
                                                                 embedding_bits=8))
    path = export_onnx(quantized, tmp_path / "w8.onnx", ids, sequence_dim=1)
    with torch.no_grad():
        expected = quantized(ids)
    for optimization in ("all", "basic"):
        got = OrtModule(path, optimization=optimization)(ids)
        assert (got - expected).abs().max() < 1e-6, optimization
