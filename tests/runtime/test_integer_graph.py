"""Fully integer QDQ graphs: residual adds, pooling, layer outputs and the classifier quantized
with nnzip's numbers, so ONNX Runtime runs the whole chain in integer kernels; and the per-node
report of what runs integer and why not."""

import collections
import json

import onnx
import pytest
import torch
from torch import nn

from nnzip.data import calibration_batches
from nnzip.evaluate.accuracy import agreement, predict_logits
from nnzip.models import create_model
from nnzip.quant import QuantConfig, quantize_static
from nnzip.runtime import OrtModule, export_onnx, op_counts, to_qoperator
from nnzip.runtime.qdq_graph import integer_report, integer_summary

#: Float ops that must not be left between quantized layers.
FLOAT_COMPUTE = {"Conv", "FusedConv", "Add", "Gemm", "FusedGemm", "MatMul", "ReduceMean"}


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class TinyResNet(nn.Module):
    """Two residual blocks, a max pool, global average pooling and a classifier."""

    def __init__(self, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.activation = activation or nn.Identity()
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.pool(self.relu(self.stem(x))))
        x = self.activation(x).mean(dim=(2, 3), keepdim=True)
        return self.fc(torch.flatten(x, 1))


def trained(model: nn.Module, digits, steps: int = 150) -> nn.Module:
    torch.manual_seed(0)
    inputs, labels = digits.train.tensors
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        index = torch.randint(0, len(inputs), (64,), generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs[index]), labels[index]).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def resnet(digits):
    torch.manual_seed(0)
    return trained(TinyResNet(), digits)


@pytest.fixture(scope="module")
def int8(resnet, digits):
    return quantize_static(resnet, calibration_batches(digits, 4))


@pytest.fixture(scope="module")
def chained(int8, digits, tmp_path_factory):
    example = digits.test.tensors[0][:2]
    return export_onnx(int8, tmp_path_factory.mktemp("chain") / "chain.onnx", example,
                       calibration=calibration_batches(digits, 4))


@pytest.fixture(scope="module")
def plain(int8, digits, tmp_path_factory):
    example = digits.test.tensors[0][:2]
    return export_onnx(int8, tmp_path_factory.mktemp("plain") / "plain.onnx", example)


def test_residual_net_runs_as_one_integer_chain(chained):
    summary = integer_summary(integer_report(chained))
    assert summary["float_nodes"] == 0, summary["float"]
    # 5 convs, the max pool (ORT's uint8 one, NHWC), 2 residual adds, the global pool and the
    # classifier: all integer kernels.
    assert summary["integer_ops"] == {"NhwcMaxPool": 1, "QGemm": 1, "QLinearAdd": 2,
                                      "QLinearConv": 5, "QLinearGlobalAveragePool": 1}
    saved = op_counts(to_qoperator(chained, chained.with_name("qop.onnx")))
    assert not FLOAT_COMPUTE & set(saved), saved


def test_without_calibration_the_adds_stay_float_and_say_why(plain):
    # nnzip quantized each layer's input and weight only: ORT fuses the block's first convs,
    # and the convs feeding a residual add run float (ORT fuses the add into them, in float).
    report = integer_report(plain)
    summary = integer_summary(report)
    assert summary["integer_ops"] == {"QLinearConv": 2}
    reasons = collections.Counter(row["reason"] for row in report if row["runs"] == "float")
    assert reasons["output not quantized: read in float by Add"] == 2
    assert reasons["no quantized kernel for ReduceMean"] == 1


def test_integer_chain_computes_what_the_pytorch_model_computes(int8, chained, digits):
    inputs = digits.test.tensors[0]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs), batch_size=128)
    simulated = predict_logits(int8, loader)
    integer = predict_logits(OrtModule(chained, optimization="all"), loader)
    unfused = predict_logits(OrtModule(chained, optimization="none"), loader)
    # The integer kernels compute the QDQ graph: equal up to a step of the logits' scale.
    logits_scale = max(float(onnx.numpy_helper.to_array(init)) for init in
                       onnx.load(str(chained)).graph.initializer
                       if init.name.startswith("linear_chain_scale"))
    assert (integer - unfused).abs().max() <= 2 * logits_scale + 1e-6
    # The added quantization of adds and outputs moves few predictions of nnzip's simulation.
    assert agreement(integer, simulated) >= 0.98
    assert (integer - simulated).abs().max() < 0.15 * simulated.abs().max()


def test_chain_keeps_nnzips_layer_input_scales(plain, chained):

    def scales(path):
        graph = onnx.load(str(path)).graph
        values = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
        return {round(float(values[node.input[1]]), 9) for node in graph.node
                if node.op_type == "QuantizeLinear" and node.input[1] in values
                and values[node.input[1]].size == 1}

    assert scales(plain) <= scales(chained)  # every nnzip scale is still used, none re-derived


def test_op_without_integer_kernel_and_excluded_layer_are_listed_with_reasons(digits, tmp_path):
    torch.manual_seed(0)
    model = TinyResNet(activation=nn.Tanh()).eval()
    int8 = quantize_static(model, calibration_batches(digits, 2), QuantConfig(exclude=["fc"]))
    path = export_onnx(int8, tmp_path / "m.onnx", digits.test.tensors[0][:2],
                       calibration=calibration_batches(digits, 2))
    float_rows = {row["op"]: row["reason"] for row in integer_report(path, excluded=["fc"])
                  if row["runs"] == "float"}
    assert float_rows["Tanh"] == "no quantized kernel for Tanh"
    assert float_rows["Gemm"] == "excluded by the user (fc)"
    # The excluded layer computes in float on float inputs, as asked: no Q/DQ around it.
    graph = onnx.load(str(path)).graph
    gemm = next(node for node in graph.node if node.op_type == "Gemm")
    producers = {out: node.op_type for node in graph.node for out in node.output}
    assert producers[gemm.input[0]] != "DequantizeLinear"


@pytest.mark.parametrize(("arch", "convs", "adds"), [("resnet8", 9, 3)])
def test_zoo_residual_models_export_fully_integer(digits, tmp_path, arch, convs, adds):
    # MobileNetV2 (depthwise convs, ReLU6 folded as a Clip, adds) too: 22 QLinearConv, 4
    # QLinearAdd, no float node (benchmarks/integer_graph.py; 12 s here, so not in CI).
    torch.manual_seed(0)
    model = create_model(arch, input_shape=(1, 8, 8), num_classes=10).eval()
    int8 = quantize_static(model, calibration_batches(digits, 2))
    path = export_onnx(int8, tmp_path / f"{arch}.onnx", digits.test.tensors[0][:2],
                       calibration=calibration_batches(digits, 2))
    summary = integer_summary(integer_report(path))
    assert summary["float_nodes"] == 0, summary["float"]
    assert summary["integer_ops"] == {"QGemm": 1, "QLinearAdd": adds, "QLinearConv": convs,
                                      "QLinearGlobalAveragePool": 1}


def test_a_float_model_is_reported_as_such(tmp_path):
    helper = onnx.helper  # a float Conv → Relu → Add graph, built directly (no export: fast)
    weight = onnx.numpy_helper.from_array(torch.randn(4, 4, 3, 3).numpy(), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("Add", ["r", "x"], ["y"], name="add")], "float",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])], [weight])
    path = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    report = integer_report(path)
    assert report and all(row["runs"] == "float" for row in report)
    assert {row["reason"] for row in report} == {"float model: nothing in it is quantized"}


def test_deploy_runs_the_integer_chain_and_records_it(int8, digits, tmp_path):
    from nnzip.runtime import deploy

    deployment = deploy(int8, digits, tmp_path / "out", batch_sizes=(1,), repeats=2,
                        samples=200)
    by_name = {runtime.name: runtime for runtime in deployment.runtimes}
    assert by_name["onnxruntime-int8-qdq"].integer_nodes["float_nodes"] == 0
    # The "dequantized" runtime stays nnzip's simulation: the file as nnzip quantized it.
    assert by_name["onnxruntime-dequantized"].path.name == "qdq-simulation.onnx"
    assert by_name["onnxruntime-dequantized"].accuracy == by_name["pytorch-eager"].accuracy
    summary = json.loads((tmp_path / "out" / "deploy.json").read_text())
    runtimes = {runtime["name"]: runtime for runtime in summary["runtimes"]}
    assert runtimes["onnxruntime-int8-qdq"]["integer_nodes"]["integer_ops"]["QLinearAdd"] == 2


class Branches(nn.Module):
    """Two conv branches concatenated, then a conv and a classifier on a flattened view whose
    batch size is read from the shape (int64 shape arithmetic the chain must leave alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1)
        self.merge = nn.Conv2d(8, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.merge(torch.cat([torch.relu(self.left(x)), self.right(x)], dim=1))
        return self.fc(x.reshape(x.shape[0], -1))


def test_concatenation_runs_integer(digits, tmp_path):
    torch.manual_seed(0)
    int8 = quantize_static(Branches().eval(), calibration_batches(digits, 2))
    path = export_onnx(int8, tmp_path / "cat.onnx", digits.test.tensors[0][:2],
                       calibration=calibration_batches(digits, 2))
    summary = integer_summary(integer_report(path))
    assert summary["integer_ops"] == {"QGemm": 1, "QLinearConcat": 1, "QLinearConv": 3}
    assert summary["float_nodes"] == 0, summary["float"]


def test_the_saved_integer_operator_form_reports_the_same_integer_nodes(chained):
    qoperator = to_qoperator(chained, chained.with_name("qoperator-report.onnx"))
    assert integer_summary(integer_report(qoperator)) == integer_summary(integer_report(chained))
