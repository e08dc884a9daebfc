"""Group-wise int4 exports as ONNX Runtime's MatMulNBits and dynamic int8 as DynamicQuantizeLinear
+ MatMulInteger, each carrying nnzip's own integers: the file is int-sized, ORT computes what
nnzip's PyTorch model computes, and the pipeline saves that file (issue 16, "int4 that runs as
int4"). A tiny token model (embedding, two Linears, a LayerNorm) keeps each export under a second.
"""

import logging

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import nnzip
from nnzip.errors import NnzipError
from nnzip.models import create_model
from nnzip.quant import QuantConfig, quantize_static
from nnzip.quant.modules import quantized_layers
from nnzip.quant.schemes import quantize_scheme
from nnzip.runtime import OrtModule, export_onnx, op_counts
from nnzip.runtime.onnx_lowbit import pack_nbits, unpack_nbits
from nnzip.runtime.session import session_options

VOCAB, HIDDEN, INNER = 50, 128, 256


class TinyEncoder(nn.Module):
    """Token ids → embeddings → Linear → LayerNorm → GELU → Linear, like a BERT block's FFN."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.up = nn.Linear(HIDDEN, INNER)
        self.norm = nn.LayerNorm(INNER)
        self.down = nn.Linear(INNER, HIDDEN)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.gelu(self.norm(self.up(self.embed(ids)))))


@pytest.fixture(scope="module")
def encoder() -> TinyEncoder:
    torch.manual_seed(0)
    return TinyEncoder().eval()


def token_ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def initializers(path) -> dict[str, np.ndarray]:
    return {tensor.name: numpy_helper.to_array(tensor)
            for tensor in onnx.load(str(path)).graph.initializer}


def node_inputs(path, op_type: str) -> list[list[str]]:
    return [list(node.input) for node in onnx.load(str(path)).graph.node
            if node.op_type == op_type]


def test_int4_codes_pack_two_per_byte_low_nibble_first():
    codes = torch.tensor([[0, 1, -7, 7] * 4], dtype=torch.int8)  # one row, one block of 16
    packed = pack_nbits(codes, 16)
    assert packed.shape == (1, 1, 8) and packed.dtype == torch.uint8
    # code + 8: 0 → 8, 1 → 9 (high nibble), −7 → 1, 7 → 15 (high nibble).
    assert packed[0, 0, :2].tolist() == [0x98, 0xF1]
    assert torch.equal(unpack_nbits(packed), codes)


def test_int4_gptq_exports_as_matmulnbits_with_nnzips_codes(encoder, tmp_path):
    calibration = [token_ids(4, 6, seed) for seed in range(2)]
    quantized = quantize_scheme(encoder, "weight-int4-gptq", calibration, group_size=64).model
    path = export_onnx(quantized, tmp_path / "int4.onnx", calibration[0], sequence_dim=1)
    ops = op_counts(path)
    assert ops.get("MatMulNBits") == 2 and "MatMul" not in ops and "Gemm" not in ops
    # The file holds nnzip's codes and scales, bit for bit (GPTQ's codes are not ORT's RTN).
    weights = initializers(path)
    layers = quantized_layers(quantized)
    by_shape = {tuple(layer.weight_int.shape): layer for name, layer in layers.items()
                if name != "embed"}
    for _, packed_name, scales_name in node_inputs(path, "MatMulNBits"):
        packed = torch.from_numpy(weights[packed_name].copy())
        layer = by_shape[(packed.shape[0], packed.shape[1] * packed.shape[2] * 2)]
        assert torch.equal(unpack_nbits(packed), layer.weight_int)
        assert np.array_equal(weights[scales_name],
                              layer.weight_qparams.scale.float().reshape(-1).numpy())
    # int4 size: half a byte per Linear weight, a fp32 scale per 64, an int8 embedding table.
    linear_bytes = sum(n * k // 2 + n * k // 64 * 4 for n, k in [(INNER, HIDDEN),
                                                                   (HIDDEN, INNER)])
    embedding_bytes = VOCAB * HIDDEN + VOCAB * 4
    float_bytes = 4 * sum(p.numel() for p in encoder.parameters())
    vector_bytes = 4 * sum(p.numel() for p in encoder.parameters() if p.dim() == 1)
    assert path.stat().st_size < linear_bytes + embedding_bytes + vector_bytes + 8_000
    assert path.stat().st_size < 0.22 * float_bytes
    # ORT computes what nnzip measured, at another batch size and sequence length.
    ids = token_ids(3, 9, seed=7)
    with torch.no_grad():
        expected = quantized(ids)
    got = OrtModule(path)(ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-5


def test_dynamic_int8_exports_as_matmulinteger_with_nnzips_weights(encoder, tmp_path):
    # dynamic-int8-emb8: the int8 embedding table (QDQ Gather) beside the dynamic Linears.
    quantized = quantize_scheme(encoder, "dynamic-int8-emb8").model
    example = token_ids(2, 5, seed=0)
    path = export_onnx(quantized, tmp_path / "dynamic.onnx", example, sequence_dim=1)
    ops = op_counts(path)
    assert ops.get("MatMulInteger") == 2 and ops.get("DynamicQuantizeLinear") == 2
    assert "MatMul" not in ops and "Gemm" not in ops
    weights = initializers(path)
    expected_weights = sorted(layer.weight_int.t().numpy().tobytes()
                              for name, layer in quantized_layers(quantized).items()
                              if name != "embed")
    stored = sorted(weights[inputs[1]].tobytes()
                    for inputs in node_inputs(path, "MatMulInteger"))
    assert stored == expected_weights
    float_bytes = 4 * sum(p.numel() for p in encoder.parameters())
    assert path.stat().st_size < 0.3 * float_bytes
    ids = token_ids(3, 9, seed=7)
    with torch.no_grad():
        expected = quantized(ids)
    got = OrtModule(path)(ids)
    assert (got - expected).abs().max() < 1e-4 * expected.abs().max()


def test_ort_runs_the_dynamic_int8_graph_on_its_fused_integer_kernel(encoder, tmp_path):
    quantized = quantize_scheme(encoder, "dynamic-int8").model
    path = export_onnx(quantized, tmp_path / "dynamic.onnx", token_ids(2, 5, seed=0),
                       sequence_dim=1)
    options = session_options(1, "extended")
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    import onnxruntime

    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused = op_counts(tmp_path / "optimized.onnx")
    assert fused.get("DynamicQuantizeMatMul", 0) + fused.get("MatMulIntegerToFloat", 0) == 2
    assert "MatMulInteger" not in fused


def test_a_group_size_matmulnbits_cannot_hold_is_refused_by_name(encoder, tmp_path):
    quantized = quantize_static(encoder, [token_ids(2, 5, seed=0)],
                                QuantConfig(weight_bits=4, activation_bits=None,
                                            weight_granularity="group", group_size=8))
    with pytest.raises(NnzipError, match=r"'up'.*group_size 8.*powers of two"):
        export_onnx(quantized, tmp_path / "int4.onnx", token_ids(2, 5, seed=0), sequence_dim=1)
    assert not (tmp_path / "int4.onnx").exists()


def _digits_mlp(digits, **quantize):
    torch.manual_seed(0)
    model = create_model("lenet300", input_shape=digits.input_shape,
                         num_classes=digits.num_classes)
    return nnzip.apply(model, "quantize", digits, **quantize).model


@pytest.mark.parametrize(("quantize", "op"), [
    ({"weight_bits": 4, "granularity": "group", "group_size": 64, "activation_bits": None,
      "layers": ["fc1"]}, "MatMulNBits"),
    ({"mode": "dynamic"}, "MatMulInteger")])
def test_save_final_model_saves_int4_and_dynamic_int8_as_the_onnx_ort_runs(
        digits, tmp_path, quantize, op):
    from nnzip.pipeline import save_final_model

    model = _digits_mlp(digits, **quantize)
    path = save_final_model(model, tmp_path, digits)
    assert path == tmp_path / "model.onnx" and op in op_counts(path)
    assert not (tmp_path / "model.nnz").exists() and not (tmp_path / "model.pt2").exists()
    inputs = digits.test.tensors[0][:16]
    with torch.no_grad():
        expected = model(inputs)
    assert (OrtModule(path)(inputs) - expected).abs().max() < 1e-4 * expected.abs().max()


def test_save_final_model_keeps_the_nnz_when_matmulnbits_cannot_hold_the_groups(
        digits, tmp_path, caplog):
    from nnzip.pipeline import save_final_model

    model = _digits_mlp(digits, weight_bits=4, granularity="group", group_size=4,
                        activation_bits=None)
    with caplog.at_level(logging.INFO, logger="nnzip.pipeline"):
        path = save_final_model(model, tmp_path, digits)
    assert path.suffix == ".nnz" and not (tmp_path / "model.onnx").exists()
    assert "group_size 4" in caplog.text


def test_deploy_offers_the_dynamic_int8_onnx_as_a_candidate(digits, trained_mlp, tmp_path):
    from nnzip.runtime import deploy

    model = nnzip.apply(trained_mlp, "quantize", digits, mode="dynamic").model
    deployment = deploy(model, digits, tmp_path, batch_sizes=(1,), repeats=3, samples=200)
    runtimes = {runtime.name: runtime for runtime in deployment.runtimes}
    candidate = runtimes["onnxruntime-int8-dynamic"]
    assert candidate.correct and candidate.agreement >= 0.995
    assert candidate.integer_ops == 3  # three MatMulInteger
    assert "onnxruntime-int8-qdq" not in runtimes


def test_openvino_reads_the_int4_file_as_u4_weights_and_computes_the_same(encoder, tmp_path):
    openvino = pytest.importorskip("openvino")
    calibration = [token_ids(4, 6, seed) for seed in range(2)]
    quantized = quantize_scheme(encoder, "weight-int4-rtn", calibration, group_size=64).model
    path = export_onnx(quantized, tmp_path / "int4.onnx", calibration[0], sequence_dim=1)
    # The CPU plugin rounds activations to int8 by default for compressed weights: off, to
    # compute what nnzip measured.
    compiled = openvino.Core().compile_model(
        str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "1",
                           "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"})
    kernels = [(op.get_rt_info()["layerType"].astype(str),
                op.get_rt_info()["runtimePrecision"].astype(str))
               for op in compiled.get_runtime_model().get_ops()]
    assert kernels.count(("FullyConnected", "u4")) == 2
    ids = token_ids(3, 9, seed=7)
    with torch.no_grad():
        expected = quantized(ids)
    got = torch.from_numpy(compiled({0: ids.numpy()})[0])
    assert (got - expected).abs().max() < 1e-5
