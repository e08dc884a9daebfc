"""ONNX export (float and QDQ with nnzip's scales) and ONNX Runtime execution on real MNIST."""

import onnx
import pytest
import torch
from torch import nn

from nnzip.data import calibration_batches
from nnzip.errors import NnzipError
from nnzip.evaluate.accuracy import accuracy, agreement, predict_logits
from nnzip.evaluate.machine import int8_weights_saturate
from nnzip.models.fold import fold_batchnorm
from nnzip.quant import QuantConfig, quantize_static  # noqa: F401
from nnzip.quant.modules import quantized_layers
from nnzip.runtime import OrtModule, export_onnx, op_counts, to_qoperator
from nnzip.runtime.onnx_export import float_view


@pytest.fixture(scope="module")
def example(mnist):
    return mnist.test.tensors[0][:2]


@pytest.fixture(scope="module")
def int8(lenet5, mnist):
    return quantize_static(lenet5, calibration_batches(mnist, 4))


@pytest.fixture(scope="module")
def qdq_path(int8, example, tmp_path_factory):
    # weight_dtype "auto": uint8 on AVX2 CPUs without VNNI (ORT's s8 kernels saturate there).
    return export_onnx(int8, tmp_path_factory.mktemp("onnx") / "qdq.onnx", example)


def test_float_export_reproduces_torch_outputs(lenet5, example, mnist, tmp_path):
    path = export_onnx(fold_batchnorm(lenet5), tmp_path / "fp32.onnx", example)
    batch = mnist.test.tensors[0][:300]  # a batch size other than the example's: dynamic axis
    with torch.no_grad():
        expected = lenet5.eval()(batch)
    assert torch.allclose(OrtModule(path)(batch), expected, atol=1e-4)
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, no leftovers


def test_exported_files_carry_no_exporter_debug_metadata(tmp_path):
    # torch.onnx tags every node with its stack trace and module path: a third of a small
    # transformer's file, read by no runtime.
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    batch = torch.rand(3, 4)
    path = export_onnx(model, tmp_path / "mlp.onnx", batch[:2])
    nodes = onnx.load(str(path)).graph.node
    assert nodes and not any(node.metadata_props for node in nodes)
    with torch.no_grad():
        torch.testing.assert_close(OrtModule(path)(batch), model(batch))


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_qdq_file_stores_8bit_weights_with_nnzip_scales(int8, example, tmp_path, dtype):
    qdq_path = export_onnx(int8, tmp_path / "qdq.onnx", example, weight_dtype=dtype)
    graph = onnx.load(str(qdq_path)).graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    layers = quantized_layers(int8)
    shift = {"int8": 0, "uint8": 128}[dtype]
    for name, layer in layers.items():
        tensor = initializers[f"{name}.weight_int"]
        assert tensor.data_type == getattr(onnx.TensorProto, dtype.upper())
        stored = torch.from_numpy(onnx.numpy_helper.to_array(tensor).astype("int16"))
        assert torch.equal(stored - shift, layer.weight_int.to(torch.int16))
    counts = op_counts(qdq_path)
    assert counts["DequantizeLinear"] >= len(layers)
    assert counts["QuantizeLinear"] == len(layers)  # one per quantized layer input
    scales = [onnx.numpy_helper.to_array(initializers[node.input[1]]).item()
              for node in graph.node if node.op_type == "QuantizeLinear"]
    expected = [float(layer.input_qparams.scale) for layer in layers.values()]
    assert scales == pytest.approx(expected, rel=1e-6)


def test_qdq_file_is_about_a_quarter_of_fp32(lenet5, qdq_path, example, tmp_path):
    fp32 = export_onnx(fold_batchnorm(lenet5), tmp_path / "fp32.onnx", example)
    assert qdq_path.stat().st_size < 0.27 * fp32.stat().st_size


def test_ort_matches_nnzip_simulation_on_real_data(int8, qdq_path, mnist, tmp_path):
    loader = mnist.loader("test", batch_size=1000)
    labels = mnist.test.tensors[1]
    simulated = accuracy(predict_logits(int8, loader), labels)
    integer = accuracy(predict_logits(OrtModule(qdq_path, optimization="all"), loader), labels)
    dequantized_logits = predict_logits(OrtModule(qdq_path, optimization="none"), loader)
    assert abs(integer - simulated) <= 0.002  # the bound: 0.2 points
    if int8_weights_saturate():  # uint8 weights take the exact u8u8 kernels: identical results
        assert integer == simulated
    # Without fusions ORT runs nnzip's arithmetic in float: the same logits up to summation
    # order (which can flip a rare activation to the next integer level).
    simulated_logits = predict_logits(int8, loader)
    assert (dequantized_logits - simulated_logits).abs().median() < 1e-4
    assert agreement(dequantized_logits, simulated_logits) >= 0.999
    qoperator = to_qoperator(qdq_path, tmp_path / "qop.onnx")
    counts = op_counts(qoperator)
    assert counts.get("QLinearConv", 0) == 2  # both LeNet-5 convolutions run on integers
    assert accuracy(predict_logits(OrtModule(qoperator), loader), labels) == integer


def test_float_view_keeps_the_rounded_weights(int8):
    view = float_view(int8)
    assert not quantized_layers(view)
    for name, layer in quantized_layers(int8).items():
        assert torch.equal(view.get_submodule(name).weight, layer.dequantized_weight())


@pytest.mark.parametrize("weight_format, bits", [("binary", 1), ("ternary", 2), ("pow2", 4)])
def test_low_bit_weights_export_exactly(lenet5, mnist, example, tmp_path, weight_format, bits):
    quantized = quantize_static(lenet5, calibration_batches(mnist, 1),
                                QuantConfig(weight_format=weight_format, weight_bits=bits))
    path = export_onnx(quantized, tmp_path / "low.onnx", example, weight_dtype="int8")
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph
                    .initializer}
    levels = set(initializers["fc1.weight_int"].ravel().tolist())
    assert levels <= ({-1, 0, 1} if bits <= 2 else {0, *(s * 2**k for s in (-1, 1)
                                                          for k in range(7))})
    batch = mnist.test.tensors[0][:200]
    with torch.no_grad():
        simulated = quantized(batch)
    # Unfused (float) execution of the exported integers and scales: nnzip's arithmetic, up to
    # summation order (which can move a rare activation to the next integer level).
    exported = OrtModule(path, optimization="none")(batch)
    assert (exported - simulated).abs().median() < 1e-5
    assert agreement(exported, simulated) >= 0.99


def test_wide_pow2_weights_are_not_exported(lenet5, mnist, example, tmp_path):
    quantized = quantize_static(lenet5, calibration_batches(mnist, 1),
                                QuantConfig(weight_format="pow2", weight_bits=5))
    with pytest.raises(NnzipError, match="pow2 weights of 5 bits span 2\\^14"):
        export_onnx(quantized, tmp_path / "p.onnx", example)


def test_group_wise_weights_cannot_be_exported_yet(lenet5, mnist, example, tmp_path):
    grouped = quantize_static(lenet5, calibration_batches(mnist, 1),
                              QuantConfig(weight_granularity="group", group_size=25,
                                          layers=["conv2"]))
    with pytest.raises(NnzipError, match="group-wise"):
        export_onnx(grouped, tmp_path / "g.onnx", example)
    assert not (tmp_path / "g.onnx").exists()


def test_untraceable_model_gives_a_clear_error(tmp_path):
    class DataDependent(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(NnzipError, match="cannot export DataDependent to ONNX"):
        export_onnx(DataDependent(), tmp_path / "m.onnx", torch.ones(1, 3))
    assert not list(tmp_path.iterdir())


def test_missing_or_corrupt_onnx_file_gives_clear_errors(qdq_path, tmp_path):
    with pytest.raises(NnzipError, match="does not exist"):
        OrtModule(tmp_path / "nope.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(qdq_path.read_bytes()[: qdq_path.stat().st_size // 3])
    with pytest.raises(NnzipError, match="cannot load"):
        OrtModule(broken)
