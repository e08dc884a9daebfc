"""The integer chain never quantizes again what is already quantized: a Q/DQ pair after a max
pool, a flatten or a Relu of non-negative values, fed by another DequantizeLinear, is dropped
(OpenVINO ran each such pair as a u8→u8 requantize step), and ONNX Runtime still runs every
layer integer."""

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from test_integer_graph import trained  # the same short training on the 8×8 digits
from torch import nn

from nnzip.data import calibration_batches
from nnzip.evaluate.accuracy import agreement, predict_logits
from nnzip.quant import QuantConfig, quantize_static
from nnzip.quant.affine import QScheme
from nnzip.runtime import OrtModule, export_onnx, qdq_graph
from nnzip.runtime.qdq_graph import integer_chain_proto, integer_report, integer_summary

PASS_THROUGH = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Relu"}


class PoolNet(nn.Module):
    """conv → relu → max pool → relu (a no-op on those values) → conv → flatten → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.pool(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(self.conv2(x)), 1))


class ForkNet(nn.Module):
    """One ReLU'd tensor read by a conv and, through a max pool, by another conv: nnzip
    quantizes both layer inputs, each with its own observer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv1(x))
        return self.fc(torch.flatten(self.conv2(a) + self.conv3(self.pool(a)), 1))


def _requantizations(path) -> list[tuple[str, str]]:
    """(QuantizeLinear, DequantizeLinear) pairs where the Q reads, through pass-through ops only,
    the output of an activation DequantizeLinear."""
    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    constants = {init.name for init in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        source = producer.get(node.input[0])
        while source is not None and source.op_type in PASS_THROUGH:
            source = producer.get(source.input[0])
        if source is not None and source.op_type == "DequantizeLinear" \
                and source.input[0] not in constants:
            found.append((node.name, source.name))
    return found


@pytest.fixture(scope="module")
def pool_net(digits):
    torch.manual_seed(0)
    return quantize_static(trained(PoolNet(), digits, steps=80), calibration_batches(digits, 4))


def _export(int8, digits, path):
    return export_onnx(int8, path, digits.test.tensors[0][:2],
                       calibration=calibration_batches(digits, 4))


def _without_dropping(monkeypatch):
    monkeypatch.setattr(qdq_graph, "_drop_requantization", lambda graph: [])


def test_no_requantization_after_a_max_pool_flatten_or_redundant_relu(pool_net, digits,
                                                                       tmp_path, monkeypatch):
    path = _export(pool_net, digits, tmp_path / "chain.onnx")
    assert _requantizations(path) == []
    graph = onnx.load(str(path)).graph
    # The second layer reads the first one's integers through the max pool: one grid, no Relu
    # left on non-negative values (the first Relu folds into the quantization after it).
    assert [node.op_type for node in graph.node].count("Relu") == 1
    summary = integer_summary(integer_report(path))
    assert summary["float_nodes"] == 0, summary["float"]
    assert summary["integer_ops"] == {"NhwcMaxPool": 2, "QGemm": 1, "QLinearConv": 2}
    # Before the change, the same chain requantized after each max pool, the flatten and Relu.
    _without_dropping(monkeypatch)
    before = _export(pool_net, digits, tmp_path / "before.onnx")
    assert len(_requantizations(before)) == 3


def test_the_chain_without_requantization_predicts_what_nnzip_simulated(pool_net, digits,
                                                                       tmp_path):
    path = _export(pool_net, digits, tmp_path / "chain.onnx")
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(digits.test.tensors[0]), batch_size=128)
    simulated = predict_logits(pool_net, loader)
    integer = predict_logits(OrtModule(path), loader)
    assert agreement(integer, simulated) >= 0.98
    assert (integer - simulated).abs().max() < 0.15 * simulated.abs().max()


def test_a_layer_input_quantized_with_another_scale_reuses_the_upstream_one(digits, tmp_path,
                                                                            monkeypatch):
    # Percentile ranges of the ReLU'd tensor and of its max pool differ: nnzip's second
    # quantization re-rounded the pooled integers onto another grid, and ONNX Runtime ran the
    # max pool in float. Reusing the upstream scale loses nothing (the values are on it).
    torch.manual_seed(0)
    int8 = quantize_static(ForkNet().eval(), calibration_batches(digits, 2),
                           QuantConfig(observer="percentile"))
    after = _export(int8, digits, tmp_path / "after.onnx")
    _without_dropping(monkeypatch)
    before = _export(int8, digits, tmp_path / "before.onnx")
    graph = onnx.load(str(before)).graph
    values = {init.name: float(onnx.numpy_helper.to_array(init).reshape(-1)[0])
              for init in graph.initializer if list(init.dims) == []}
    nodes = {node.name: node for node in graph.node}
    # After the max pool, another scale; after the flatten before the classifier, the same.
    other_scale = [values[nodes[quantize].input[1]] != values[nodes[dequantize].input[1]]
                   for quantize, dequantize in _requantizations(before)]
    assert sorted(other_scale) == [False, True]
    assert _requantizations(after) == []
    before_summary = integer_summary(integer_report(before))
    after_summary = integer_summary(integer_report(after))
    assert (before_summary["integer_nodes"], before_summary["float_nodes"]) == (5, 1)
    assert (after_summary["integer_nodes"], after_summary["float_nodes"]) == (6, 0)
    assert after_summary["integer_ops"]["NhwcMaxPool"] == 1


def _hand_graph(between: str, path):
    """x → Q → DQ → ``between`` → Q → DQ → Gemm (int8 weight) → Q → DQ, written to ``path``."""
    rng = np.random.default_rng(0)
    initializers = [numpy_helper.from_array(array, name) for name, array in {
        "scale": np.array(0.02, np.float32), "zero": np.array(0, np.uint8),
        "w": rng.integers(-100, 100, (10, 16)).astype(np.int8),
        "w_scale": np.full(10, 0.01, np.float32), "w_zero": np.zeros(10, np.int8),
        "out_scale": np.array(0.05, np.float32), "out_zero": np.array(128, np.uint8),
        "shape": np.array([2, 16], np.int64)}.items()]
    middle = (helper.make_node("Flatten", ["xd"], ["f"], axis=1) if between == "Flatten"
              else helper.make_node("Reshape", ["xd", "shape"], ["f"]))
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xd"]), middle,
             helper.make_node("QuantizeLinear", ["f", "scale", "zero"], ["fq"]),
             helper.make_node("DequantizeLinear", ["fq", "scale", "zero"], ["fd"]),
             helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], axis=0),
             helper.make_node("Gemm", ["fd", "wd"], ["y0"], transB=1),
             helper.make_node("QuantizeLinear", ["y0", "out_scale", "out_zero"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "out_scale", "out_zero"], ["y"])]
    graph = helper.make_graph(
        nodes, "hand", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 1, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 10])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    chained, changes = integer_chain_proto(model, [], QScheme())
    onnx.save(chained, str(path))
    return changes


@pytest.mark.parametrize(("between", "dropped"), [("Reshape", 1), ("Flatten", 0)])
def test_a_pair_after_a_flatten_stays_because_onnx_runtime_does_not_propagate_past_it(
        tmp_path, between, dropped):
    path = tmp_path / f"{between}.onnx"
    changes = _hand_graph(between, path)
    assert [change["source"] for change in changes] == [
        "dropped: already on the grid of 'xd' (the same scale)"] * dropped
    assert len(_requantizations(path)) == 1 - dropped
    assert [(row["op"], row["runs"]) for row in integer_report(path)] == [("QGemm", "integer")]
