"""Fully integer QDQ graphs, and which node runs integer and why.

nnzip's export (:mod:`nnzip.runtime.onnx_export`) quantizes what nnzip quantized: the input and
weight of every Conv/Linear. ONNX Runtime fuses ``DQ → op → Q`` into an integer kernel only when
*every* float input of the op comes out of a DequantizeLinear and its output goes into a
QuantizeLinear; so a residual ``Add``, a pooling, or a layer whose output feeds an add stays float,
and so do the layers around it (a ResNet-8 fused 3 of its 10 layers). ONNX Runtime's own quantizer
(``onnxruntime.quantization.quantize_static``, QDQ format) instead quantizes the inputs and
outputs of every op that has an integer kernel; :func:`integer_chain` does the same to nnzip's
graph, generically (it reads the ONNX graph, not the PyTorch model, so users' own models get it
too):

1. a tensor that several nnzip QuantizeLinear nodes quantize with the same scale is quantized once,
   and its float consumers (the identity branch of a residual add) read that one DequantizeLinear;
2. every float activation input of an op with an integer kernel (:data:`INTEGER_KERNELS`) gets a
   Q/DQ pair, and so does its output, looked for past a Relu/Clip (ONNX Runtime folds those into
   the output quantization when the zero point is the bottom of the range);
3. scales come from nnzip's numbers wherever nnzip has them (the layer input a tensor feeds, the
   input of a MaxPool/Reshape that does not change the values), and otherwise from nnzip's own
   observer run on the calibration batches through nnzip's QDQ graph (ONNX Runtime with the
   tensors as extra outputs, optimizations off: the simulation nnzip measured);
4. a Q/DQ pair on values that come unchanged out of another DequantizeLinear (past a max pool,
   a reshape, a transpose, a Relu of non-negative values) is dropped: they are integers on that
   grid already, and a second quantization is a requantize step OpenVINO runs as is.

``AdaptiveAvgPool2d(1)`` exports as ``ReduceMean`` over H and W, which has no integer kernel; it is
rewritten as the equivalent ``GlobalAveragePool`` (which has: QLinearGlobalAveragePool).

:func:`integer_report` then lists, for the graph ONNX Runtime really runs
(``SessionOptions.optimized_model_filepath``), each compute node, whether it runs integer or
float, and why float.
"""

from __future__ import annotations

import collections
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from nnzip.atomic import atomic_path
from nnzip.errors import NnzipError
from nnzip.quant.affine import QScheme
from nnzip.quant.observers import ObserverKind, make_observer

#: ONNX ops with an integer kernel in ONNX Runtime's CPU provider (the op its QDQ fusion makes),
#: and which inputs are activations (None: all of them). Relu/Clip are not here: they fold into
#: the quantization of the output before them.
INTEGER_KERNELS: dict[str, tuple[str, tuple[int, ...] | None]] = {
    "Conv": ("QLinearConv", (0,)),
    "Gemm": ("QGemm", (0,)),
    "MatMul": ("QLinearMatMul", None),
    "Add": ("QLinearAdd", None),
    "Mul": ("QLinearMul", None),
    "Concat": ("QLinearConcat", None),
    "GlobalAveragePool": ("QLinearGlobalAveragePool", (0,)),
    "AveragePool": ("QLinearAveragePool", (0,)),
    "MaxPool": ("MaxPool (uint8/int8)", (0,)),
    "Sigmoid": ("QLinearSigmoid", (0,)),
    "LeakyRelu": ("QLinearLeakyRelu", (0,)),
}
#: Ops whose output has the values of their input, rearranged or a subset of them: the output
#: takes the input's scale (ONNX Runtime then runs them on the integers, dropping the Q/DQ).
SAME_SCALE = frozenset({"MaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})
#: The :data:`SAME_SCALE` ops ONNX Runtime's QDQ propagation carries a DequantizeLinear past, so
#: the layer after them still fuses with no Q/DQ pair of its own. Not Flatten (measured: a Gemm
#: after ``DQ → Flatten`` stays float; after ``DQ → Reshape`` it is a QGemm).
PROPAGATED = SAME_SCALE - {"Flatten"}
#: Activations ONNX Runtime folds into the QuantizeLinear after them (zero point = range bottom).
FOLDED_ACTIVATIONS = frozenset({"Relu", "Clip"})
#: Ops that only move data: not counted as compute nodes by :func:`integer_report`.
DATA_MOVEMENT = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                           "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity",
                           "Shape", "Gather", "Constant", "Cast", "Slice", "Expand",
                           "ReorderInput", "ReorderOutput"})


def _onnx():
    import onnx

    return onnx


class _Graph:
    """Producer and consumer maps of an ONNX graph (top level), rebuilt after each change."""

    def __init__(self, proto) -> None:
        self.proto = proto
        self.refresh()

    def refresh(self) -> None:
        graph = self.proto.graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list] = collections.defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.initializers = {init.name: init for init in graph.initializer}
        self.outputs = {out.name for out in graph.output}

    def constant(self, name: str) -> np.ndarray | None:
        onnx = _onnx()
        if name in self.initializers:
            return onnx.numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return onnx.numpy_helper.to_array(node.attribute[0].t)
        return None

    def is_dequantized(self, name: str) -> bool:
        node = self.producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    def is_activation(self, name: str) -> bool:
        return bool(name) and self.constant(name) is None


def _qparams_key(graph: _Graph, quantize) -> tuple | None:
    scale = graph.constant(quantize.input[1])
    zero_point = graph.constant(quantize.input[2]) if len(quantize.input) > 2 else None
    if scale is None or scale.size != 1:
        return None
    return (float(scale.reshape(-1)[0]),
            None if zero_point is None else (int(zero_point.reshape(-1)[0]),
                                             zero_point.dtype.str))


def _activation_pairs(graph: _Graph) -> dict[str, list[tuple]]:
    """Per float tensor, its per-tensor Q → DQ pairs: ``(Q node, DQ node, qparams key)``."""
    pairs: dict[str, list[tuple]] = collections.defaultdict(list)
    for node in graph.proto.graph.node:
        if node.op_type != "QuantizeLinear" or not graph.is_activation(node.input[0]):
            continue
        key = _qparams_key(graph, node)
        dequantizers = graph.consumers[node.output[0]]
        if key is None or len(dequantizers) != 1 or dequantizers[0].op_type != "DequantizeLinear":
            continue
        pairs[node.input[0]].append((node, dequantizers[0], key))
    return pairs


def _rename_input(graph: _Graph, old: str, new: str, only=None) -> None:
    for node in list(graph.consumers[old]):
        if only is not None and node not in only:
            continue
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new


def _merge_duplicate_pairs(graph: _Graph) -> None:
    """One Q/DQ pair per tensor where nnzip quantized it several times with the same numbers
    (a block input feeding a conv and a shortcut conv, both observing it)."""
    removed = []
    for pairs in _activation_pairs(graph).values():
        first_dq = pairs[0][1]
        for quantize, dequantize, key in pairs[1:]:
            if key != pairs[0][2]:
                continue
            _rename_input(graph, dequantize.output[0], first_dq.output[0])
            removed += [quantize, dequantize]
    for node in removed:
        graph.proto.graph.node.remove(node)
    graph.refresh()


def _rewrite_global_mean(graph: _Graph) -> None:
    """``ReduceMean`` over the last two axes of a 4-d tensor, dims kept → ``GlobalAveragePool``
    (the same numbers; the second has an integer kernel)."""
    onnx = _onnx()
    ranks = _ranks(graph.proto)
    for index, node in enumerate(list(graph.proto.graph.node)):
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axes = (graph.constant(node.input[1]) if len(node.input) > 1 and node.input[1]
                else np.array(attributes.get("axes", [])))
        if attributes.get("keepdims", 1) != 1 or axes is None \
                or sorted(int(a) % 4 for a in np.asarray(axes).reshape(-1)) != [2, 3]:
            continue
        pool = onnx.helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output),
                                     name=node.name or f"global_mean_{index}")
        graph.proto.graph.node.remove(node)
        graph.proto.graph.node.insert(index, pool)
    graph.refresh()


def _inferred(proto) -> list:
    onnx = _onnx()
    inferred = onnx.shape_inference.infer_shapes(proto)
    return [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]


def _ranks(proto) -> dict[str, int]:
    return {info.name: len(info.type.tensor_type.shape.dim) for info in _inferred(proto)
            if info.type.tensor_type.HasField("shape")}


def _float_tensors(proto) -> frozenset[str]:
    """The float32 tensors of the graph (shape inference): only those are quantized, never the
    int64 shape arithmetic a Concat may also join."""
    return frozenset(info.name for info in _inferred(proto)
                     if info.type.tensor_type.elem_type == _onnx().TensorProto.FLOAT)


def _output_to_quantize(graph: _Graph, name: str) -> str | None:
    """The tensor to quantize for the output ``name`` of an integer-kernel op: past a Relu/Clip
    that is its only consumer. A model output is quantized too (the classifier's logits, as
    ONNX Runtime's quantizer does: QGemm fuses only with a quantized output)."""
    while True:
        users = graph.consumers[name]
        if name in graph.outputs:
            return name
        if not users:
            return None
        if len(users) == 1 and users[0].op_type in FOLDED_ACTIVATIONS:
            name = users[0].output[0]
            continue
        return name


def _float_weight(graph: _Graph, node) -> str | None:
    """The float weight of a Conv/Gemm nnzip left float (excluded, or not quantizable): its
    inputs and output stay float too, so ONNX Runtime runs it as the user asked."""
    positions = INTEGER_KERNELS.get(node.op_type, ("", None))[1]
    if positions is None or len(node.input) < 2 or 1 in positions:
        return None
    weight = node.input[1]
    return weight if weight in graph.initializers else None


def _is_dequantized_constant(graph: _Graph, name: str) -> bool:
    node = graph.producer.get(name)
    return node is not None and node.op_type == "DequantizeLinear" \
        and graph.constant(node.input[0]) is not None


def _chained(graph: _Graph, node, floats: frozenset[str]) -> bool:
    """Whether the chain quantizes around ``node``. Not around a layer nnzip left float or
    weight-only (its weight, or its input, has no Q/DQ: what the user asked for stays), nor an
    elementwise op with a constant operand (a bias add, a scaling Mul: the float parts of
    LayerNorm and GELU in a transformer); Mul only between two quantized tensors, attention's
    activation-by-activation MatMul not at all (ORT's quantizer would: accuracy first)."""
    op = node.op_type
    if op not in INTEGER_KERNELS or _float_weight(graph, node) \
            or not all(name in floats for name in [*node.input[:1], *node.output]):
        return False
    if op in ("Conv", "Gemm"):
        return graph.is_dequantized(node.input[0])
    if op == "MatMul":
        weights = [_is_dequantized_constant(graph, name) for name in node.input]
        return any(weights) and all(graph.is_dequantized(name) for name in node.input)
    if op == "Mul":
        return all(graph.is_dequantized(name) for name in node.input)
    return all(graph.is_activation(name) for name in node.input)


def _tensors_to_quantize(graph: _Graph) -> list[str]:
    """Float tensors around integer-kernel ops that have no Q/DQ pair yet, in graph order."""
    wanted: dict[str, None] = {}
    floats = _float_tensors(graph.proto)
    for node in graph.proto.graph.node:
        if not _chained(graph, node, floats):
            continue
        positions = INTEGER_KERNELS[node.op_type][1]
        for position, name in enumerate(node.input):
            if (positions is None or position in positions) and graph.is_activation(name) \
                    and not graph.is_dequantized(name):
                wanted[name] = None
        for name in node.output:
            target = _output_to_quantize(graph, name)
            if target is not None:
                wanted[target] = None
    return list(wanted)


def _share_existing_pairs(graph: _Graph, tensors: list[str]) -> list[str]:
    """Let every float consumer of an already-quantized tensor read its DequantizeLinear; the
    tensors left need a new pair."""
    pairs = _activation_pairs(graph)
    left = []
    for name in tensors:
        if name not in pairs:
            left.append(name)
            continue
        quantize, dequantize, _ = pairs[name][0]
        others = [node for node in graph.consumers[name] if node.op_type != "QuantizeLinear"]
        _rename_input(graph, name, dequantize.output[0], only=others)
    graph.refresh()
    return left


def _borrowed_qparams(graph: _Graph, name: str) -> tuple | None:
    """nnzip's own qparams for ``name`` where a value-preserving op links it to a quantized
    tensor: the input of the MaxPool/Reshape that made it, or the output of the MaxPool/Reshape
    it feeds (a pooled tensor flattened into a classifier's quantized input). A max pool with
    windows covering its input keeps its input's maximum, and values below its output's minimum
    are never picked, so the output's range serves its input exactly."""
    producer = graph.producer.get(name)
    pairs = _activation_pairs(graph)
    if producer is not None and producer.op_type in SAME_SCALE:
        source = graph.producer.get(producer.input[0])
        if source is not None and source.op_type == "DequantizeLinear":
            return tuple(source.input[1:3])
    following = name
    while True:  # down a run of value-preserving ops (a max pool, then a flatten) to nnzip's Q
        users = graph.consumers[following]
        if len(users) != 1 or users[0].op_type not in SAME_SCALE:
            return None
        following = users[0].output[0]
        if following in pairs:
            return tuple(pairs[following][0][0].input[1:3])


def _observe(proto, tensors: list[str], batches: Iterable, scheme: QScheme,
             observer: ObserverKind, observer_options: dict | None) -> dict[str, object]:
    """nnzip's observer on each tensor, fed by ONNX Runtime running ``proto`` (optimizations
    off: the float simulation of nnzip's QDQ graph) with the tensors as extra outputs."""
    onnx = _onnx()
    from nnzip.runtime.session import _open, session_options

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    for name in tensors:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    observers = {name: make_observer(observer, scheme, **(observer_options or {}))
                 for name in tensors}
    with tempfile.TemporaryDirectory(prefix="nnzip-chain-") as folder:
        path = Path(folder) / "probe.onnx"
        onnx.save(probe, str(path))
        session = _open(path, session_options(1, "none"))
        input_meta = session.get_inputs()[0]
        dtype = np.int64 if input_meta.type == "tensor(int64)" else np.float32
        seen = 0
        for batch in batches:
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            array = np.ascontiguousarray(torch.as_tensor(inputs).numpy(), dtype=dtype)
            values = session.run(tensors, {input_meta.name: array})
            for name, value in zip(tensors, values, strict=True):
                observers[name].update(torch.from_numpy(np.asarray(value, dtype=np.float32)))
            seen += len(array)
    if seen == 0:
        raise NnzipError("integer_chain needs calibration batches to observe the added "
                         "activations: pass at least one batch of training inputs")
    return {name: observer.qparams() for name, observer in observers.items()}


def _add_pair(graph: _Graph, name: str, scale_name: str, zero_point_name: str) -> None:
    """Insert ``name → QuantizeLinear → DequantizeLinear`` and let every consumer read the DQ."""
    onnx = _onnx()
    quantized, dequantized = f"{name}_chain_q", f"{name}_chain_dq"
    users = list(graph.consumers[name])
    producer = graph.producer.get(name)
    source = name
    if name in graph.outputs:  # the model output keeps its name: it is the DQ's output now
        source, dequantized = f"{name}_chain_float", name
        producer.output[list(producer.output).index(name)] = source
    nodes = [onnx.helper.make_node("QuantizeLinear", [source, scale_name, zero_point_name],
                                   [quantized], name=f"{name}_chain_Q"),
             onnx.helper.make_node("DequantizeLinear", [quantized, scale_name, zero_point_name],
                                   [dequantized], name=f"{name}_chain_DQ")]
    node_list = list(graph.proto.graph.node)
    index = node_list.index(producer) + 1 if producer is not None else 0
    for offset, node in enumerate(nodes):
        graph.proto.graph.node.insert(index + offset, node)
    graph.refresh()
    if source == name:
        _rename_input(graph, name, dequantized, only=users)
    else:  # users of a model output that feeds further nodes read the float value, as before
        _rename_input(graph, name, source, only=users)
    graph.refresh()


def _add_qparams(graph: _Graph, name: str, qparams) -> tuple[str, str]:
    onnx = _onnx()
    scheme = qparams.scheme
    dtype = np.int8 if scheme.qmin < 0 else np.uint8
    scale = onnx.numpy_helper.from_array(
        np.array(float(qparams.scale.reshape(-1)[0]), dtype=np.float32), f"{name}_chain_scale")
    zero_point = onnx.numpy_helper.from_array(
        np.array(int(qparams.zero_point.reshape(-1)[0]), dtype=dtype),
        f"{name}_chain_zero_point")
    graph.proto.graph.initializer.extend([scale, zero_point])
    return scale.name, zero_point.name


def _bottom_zero_point(graph: _Graph, dequantize) -> bool:
    """Whether ``dequantize`` maps every integer to a value ≥ 0 (its zero point is the bottom of
    its integer type): a Relu after it changes nothing."""
    zero_point = graph.constant(dequantize.input[2]) if len(dequantize.input) > 2 else None
    if zero_point is None:
        return True  # ONNX's default zero point: 0 of uint8
    return zero_point.size == 1 and int(zero_point.reshape(-1)[0]) == np.iinfo(
        zero_point.dtype).min


def _pass_through_source(graph: _Graph, name: str):
    """The activation DequantizeLinear whose values reach ``name`` unchanged, through a run of
    :data:`PROPAGATED` ops and Relus it makes no difference to (its zero point at the bottom of
    the range); or None."""
    node = graph.producer.get(name)
    relu = False
    while node is not None and (node.op_type in PROPAGATED or node.op_type == "Relu"):
        relu |= node.op_type == "Relu"
        node = graph.producer.get(node.input[0])
    if node is None or node.op_type != "DequantizeLinear" or not graph.is_activation(
            node.input[0]) or _qparams_key(graph, node) is None:
        return None
    return None if relu and not _bottom_zero_point(graph, node) else node


def _drop_requantization(graph: _Graph) -> list[dict]:
    """Remove each activation Q/DQ pair whose input comes unchanged out of another
    DequantizeLinear (through max pools, reshapes, transposes, Relus of non-negative values),
    and each such Relu: those values are already integers on the upstream grid, so
    re-quantizing them either changes nothing (the same scale: the chain borrows it) or
    only rounds them again onto another grid. ONNX Runtime needs no pair there: its QDQ
    propagation carries the upstream DQ past the max pool or reshape and still fuses the next
    layer, and runs the max pool on the integers. OpenVINO keeps every pair as a u8→u8
    requantize Subgraph (3 on LeNet-5, whose NNCF int8 graph has none: NNCF puts no quantizer
    after a max pool). Returns one record per pair dropped."""
    dropped = []
    for relu in [node for node in graph.proto.graph.node if node.op_type == "Relu"]:
        source = _pass_through_source(graph, relu.input[0])
        if source is not None and _bottom_zero_point(graph, source) \
                and relu.output[0] not in graph.outputs:
            _rename_input(graph, relu.output[0], relu.input[0])
            graph.proto.graph.node.remove(relu)
            graph.refresh()
    for quantize in [node for node in graph.proto.graph.node
                     if node.op_type == "QuantizeLinear"]:
        source = _pass_through_source(graph, quantize.input[0])
        users = graph.consumers[quantize.output[0]]
        key = _qparams_key(graph, quantize)
        if source is None or key is None or len(users) != 1 \
                or users[0].op_type != "DequantizeLinear" or users[0].output[0] in graph.outputs:
            continue
        _rename_input(graph, users[0].output[0], quantize.input[0])
        graph.proto.graph.node.remove(quantize)
        graph.proto.graph.node.remove(users[0])
        graph.refresh()
        same = key == _qparams_key(graph, source)
        dropped.append({"tensor": quantize.input[0], "scale": key[0],
                        "zero_point": key[1][0] if key[1] else 0,
                        "source": f"dropped: already on the grid of {source.output[0]!r} "
                                  f"({'the same' if same else 'another'} scale)"})
    return dropped


def integer_chain_proto(proto, batches: Iterable, scheme: QScheme,
                        observer: ObserverKind = "minmax",
                        observer_options: dict | None = None) -> tuple[object, list[dict]]:
    """``proto`` (nnzip's QDQ export) with the Q/DQ pairs its integer kernels need and no
    requantization of already-quantized values (:func:`_drop_requantization`), and one record per
    pair added or dropped (tensor, scale, zero point, whence the numbers or why dropped)."""
    onnx = _onnx()
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = _Graph(model)
    _merge_duplicate_pairs(graph)
    _rewrite_global_mean(graph)
    tensors = _share_existing_pairs(graph, _tensors_to_quantize(graph))
    borrowed = {name: _borrowed_qparams(graph, name) for name in tensors}
    observed_names = [name for name in tensors if borrowed[name] is None]
    observed = (_observe(model, observed_names, batches, scheme, observer, observer_options)
                if observed_names else {})
    added = []
    for name in tensors:
        if borrowed[name] is not None:
            scale_name, zero_point_name = borrowed[name]
            source = "borrowed from a value-preserving neighbour (nnzip's scale)"
        else:
            scale_name, zero_point_name = _add_qparams(graph, name, observed[name])
            source = f"observed by nnzip ({observer}) on the calibration batches"
        _add_pair(graph, name, scale_name, zero_point_name)
        added.append({"tensor": name, "scale": float(graph.constant(scale_name).reshape(-1)[0]),
                      "zero_point": int(graph.constant(zero_point_name).reshape(-1)[0]),
                      "source": source})
    added += _drop_requantization(graph)
    onnx.checker.check_model(model)
    return model, added


def integer_chain(path: str | os.PathLike, batches: Iterable, scheme: QScheme,
                  observer: ObserverKind = "minmax", observer_options: dict | None = None
                  ) -> list[dict]:
    """Rewrite nnzip's QDQ file at ``path`` in place (atomically) as a fully integer chain
    (:func:`integer_chain_proto`); returns the pairs added and dropped."""
    onnx = _onnx()
    path = Path(path)
    chained, added = integer_chain_proto(onnx.load(str(path)), batches, scheme, observer,
                                         observer_options)
    with atomic_path(path) as tmp:
        onnx.save(chained, str(tmp))
    return added


def _through_data_movement(graph: _Graph, name: str) -> str:
    """The op that computed ``name``, looked for up a run of data-movement ops (the head
    split's Reshape / Transpose); its output name's producer type, or '' for a graph input."""
    while True:
        producer = graph.producer.get(name)
        if producer is None:
            return ""
        if producer.op_type not in DATA_MOVEMENT or not producer.input:
            return producer.op_type
        name = producer.input[0]


def attention_score_inputs(graph: _Graph) -> list[str]:
    """The float inputs of attention's score MatMul (query × keyᵀ): a MatMul of two
    activations, neither quantized yet nor computed by a Softmax (the probabilities × values
    MatMul keeps its float probabilities, as NNCF's transformer preset leaves it)."""
    floats = _float_tensors(graph.proto)
    wanted: dict[str, None] = {}
    for node in graph.proto.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        inputs = list(node.input)
        if not all(graph.is_activation(name) and name in floats
                   and not graph.is_dequantized(name) for name in inputs):
            continue
        if any(_through_data_movement(graph, name) == "Softmax" for name in inputs):
            continue
        wanted.update(dict.fromkeys(inputs))
    return list(wanted)


def _smoothing_as_multiply(graph: _Graph) -> None:
    """SmoothQuant's ``x / s`` before a QuantizeLinear as ``x · (1/s)``: OpenVINO folds a
    constant Multiply into the FakeQuantize after it (per-channel input ranges), but not a
    Divide, which compiled to 30 extra reorders and float subgraphs in MiniLM (NNCF's own
    SmoothQuant inserts a Multiply)."""
    onnx = _onnx()
    for node in list(graph.proto.graph.node):
        if node.op_type != "Div" or len(node.input) != 2:
            continue
        divisor = graph.constant(node.input[1])
        users = graph.consumers[node.output[0]]
        if divisor is None or divisor.dtype != np.float32 or not users \
                or any(user.op_type != "QuantizeLinear" for user in users) \
                or node.output[0] in graph.outputs:
            continue
        reciprocal = onnx.numpy_helper.from_array((1.0 / divisor).astype(np.float32),
                                                  f"{node.output[0]}_reciprocal")
        graph.proto.graph.initializer.append(reciprocal)
        node.op_type = "Mul"
        node.input[1] = reciprocal.name
    graph.refresh()


def transformer_placement_proto(proto, batches: Iterable, scheme: QScheme,
                                observer: ObserverKind = "minmax",
                                observer_options: dict | None = None
                                ) -> tuple[object, list[dict]]:
    """``proto`` (nnzip's QDQ export of a transformer) with quantization placed where NNCF's
    transformer preset (``nncf.quantize(..., model_type=TRANSFORMER)``) puts it for OpenVINO:
    every Linear's input and weight (nnzip's own, already there) *and* the query and key entering
    attention's score MatMul, per tensor, ranged by nnzip's observer on ``batches``; nothing
    on residual adds, LayerNorm, GELU or Softmax.

    ``scheme`` quantizes query and key: signed symmetric int8 is what OpenVINO's fused
    attention runs integer (NNCF's choice; an unsigned scheme left the attention in bf16).
    SmoothQuant's divisions become multiplications (:func:`_smoothing_as_multiply`).

    Why: compiled by OpenVINO, NNCF's MiniLM ran its 6 attention blocks as i8 fused subgraphs
    and had 1 reorder, while nnzip's file, with only the Linears quantized, ran attention in
    bf16 and, with SmoothQuant, had 31 reorders (``runtime_precisions``; measured on
    all-MiniLM-L6-v2, see benchmarks/results/deploy_peers.md); and the chain ONNX Runtime
    wants (:func:`integer_chain_proto`: residual adds, outputs) compiled in OpenVINO to an
    encoder whose embeddings had cosine 0.30 to fp32 under bf16.
    """
    onnx = _onnx()
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = _Graph(model)
    _merge_duplicate_pairs(graph)
    _smoothing_as_multiply(graph)
    tensors = attention_score_inputs(graph)
    observed = _observe(model, tensors, batches, scheme, observer, observer_options) \
        if tensors else {}
    added = []
    for name in tensors:
        scale_name, zero_point_name = _add_qparams(graph, name, observed[name])
        _add_pair(graph, name, scale_name, zero_point_name)
        added.append({"tensor": name, "scale": float(graph.constant(scale_name).reshape(-1)[0]),
                      "zero_point": int(graph.constant(zero_point_name).reshape(-1)[0]),
                      "source": f"observed by nnzip ({observer}) on the calibration batches"})
    onnx.checker.check_model(model)
    return model, added


def transformer_placement(path: str | os.PathLike, out: str | os.PathLike, batches: Iterable,
                          scheme: QScheme, observer: ObserverKind = "minmax",
                          observer_options: dict | None = None) -> list[dict]:
    """Write nnzip's QDQ file at ``path`` with NNCF's transformer placement to ``out``
    (atomically; :func:`transformer_placement_proto`); returns the pairs added."""
    onnx = _onnx()
    placed, added = transformer_placement_proto(onnx.load(str(path)), batches, scheme,
                                                observer, observer_options)
    with atomic_path(Path(out)) as tmp:
        onnx.save(placed, str(tmp))
    return added


def observer_kind(observer) -> ObserverKind:
    """The name :func:`~nnzip.quant.observers.make_observer` knows an observer by."""
    from nnzip.quant import observers

    names = {observers.MinMaxObserver: "minmax", observers.MovingAverageObserver:
             "moving_average", observers.PercentileObserver: "percentile",
             observers.MSEObserver: "mse", observers.KLObserver: "kl"}
    return names.get(type(observer), "minmax")


# -- which node runs integer, and why ----------------------------------------------------------

def _base_op(node) -> str:
    """The ONNX op a node of ORT's optimized graph computes (FusedConv is a Conv with its
    activation, NCHWc Conv a Conv in a blocked layout)."""
    return {"FusedConv": "Conv", "FusedGemm": "Gemm", "FusedMatMul": "MatMul",
            "NhwcMaxPool": "MaxPool"}.get(
        node.op_type, node.op_type)


def _optimized_graph(path: Path, optimization: str):
    onnx = _onnx()
    from nnzip.runtime.session import _open, session_options

    with tempfile.TemporaryDirectory(prefix="nnzip-report-") as folder:
        options = session_options(1, optimization)
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        _open(path, options)
        return onnx.load(options.optimized_model_filepath)


def _float_reason(original: _Graph, node, excluded: frozenset[str]) -> str:
    """Why ``node`` of ORT's optimized graph runs float, read in the file as written (ORT folds
    the weights' DequantizeLinear into float constants, which hides what was quantized)."""
    op = _base_op(node)
    if op not in INTEGER_KERNELS:
        return f"no quantized kernel for {op}"
    if not any(n.op_type in ("QuantizeLinear", "DequantizeLinear")
               for n in original.proto.graph.node):
        return "float model: nothing in it is quantized"
    written = next((n for n in original.proto.graph.node if n.name == node.name), None)
    if written is None:
        return "ONNX Runtime did not fuse it (a node it made: see the optimized graph)"
    positions = INTEGER_KERNELS[op][1]
    weight = _float_weight(original, written)
    if weight:  # a float weight: the layer was left float
        module = weight.rsplit(".", 1)[0]
        if module in excluded:
            return f"excluded by the user ({module})"
        return f"weight not quantized ({module} kept float)"
    for position, name in enumerate(written.input):
        if (positions is None or position in positions) and original.is_activation(name) \
                and not original.is_dequantized(name):
            return f"input {name!r} not quantized"
    for out in written.output:
        target = _output_to_quantize(original, out) or out
        floats = sorted({user.op_type for user in original.consumers[target]
                         if user.op_type != "QuantizeLinear"})
        if floats or target in original.outputs:
            read_by = f": read in float by {', '.join(floats)}" if floats else ""
            return f"output not quantized{read_by}"
    return "ONNX Runtime did not fuse it"


def _holds_integers(graph: _Graph, name: str, integer_ops: frozenset[str]) -> bool:
    """Whether tensor ``name`` is int8/uint8: made by an integer kernel or a QuantizeLinear,
    possibly through layout changes (ORT's NHWC transposes around its uint8 MaxPool)."""
    source = graph.producer.get(name)
    while source is not None and source.op_type in ("Transpose", "Reshape", "Flatten",
                                                     "Squeeze", "Unsqueeze"):
        source = graph.producer.get(source.input[0])
    return source is not None and (source.op_type in integer_ops
                                   or source.op_type == "QuantizeLinear")


def _is_integer(graph: _Graph, node, integer_ops: frozenset[str]) -> bool:
    if node.op_type in integer_ops:
        return True
    if node.op_type in ("MaxPool", "NhwcMaxPool"):  # ORT's uint8/int8 MaxPool
        return _holds_integers(graph, node.input[0], integer_ops)
    return False


def integer_report(path: str | os.PathLike, excluded: Iterable[str] = (),
                   optimization: str = "all") -> list[dict]:
    """Each compute node of the graph ONNX Runtime builds from the ONNX file at ``path``
    (``optimization`` level, as :class:`~nnzip.runtime.OrtModule` runs it): its name, op, whether
    it runs ``integer`` or ``float``, and why float ("no quantized kernel for X", "input ... not
    quantized", "excluded by the user (module)", ...). Data movement (Q/DQ, Reshape, layout
    reorders) and nodes computing no float tensor (shapes, masks) are left out. ``excluded``:
    the layers the user kept float (``QuantConfig.exclude``).
    """
    from nnzip.runtime.session import INTEGER_OPS

    graph = _Graph(_optimized_graph(Path(path), optimization))
    original = _Graph(_onnx().load(str(path)))
    excluded = frozenset(excluded)
    floats = _float_tensors(original.proto)
    written = {node.name: node for node in original.proto.graph.node}
    rows = []
    for node in graph.proto.graph.node:
        if node.op_type in DATA_MOVEMENT:
            continue
        integer = _is_integer(graph, node, INTEGER_OPS)
        if not integer and node.name in written \
                and not any(out in floats for out in written[node.name].output):
            continue  # shape arithmetic and masks (int64, bool): not the model's compute
        row = {"node": node.name, "op": node.op_type,
               "runs": "integer" if integer else "float"}
        if not integer:
            row["reason"] = _float_reason(original, node, excluded)
        rows.append(row)
    return rows


def integer_summary(report: list[dict], names_shown: int = 3) -> dict:
    """A compact form of :func:`integer_report` for deploy.json and the report: counts, the
    integer ops, and the float nodes grouped by op and reason (count, first few names)."""
    integer = collections.Counter(row["op"] for row in report if row["runs"] == "integer")
    groups: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for row in report:
        if row["runs"] == "float":
            groups[(row["op"], row["reason"])].append(row["node"])
    return {"integer_nodes": sum(integer.values()),
            "float_nodes": sum(1 for row in report if row["runs"] == "float"),
            "integer_ops": dict(sorted(integer.items())),
            "float": [{"op": op, "reason": reason, "count": len(nodes),
                       "nodes": nodes[:names_shown]}
                      for (op, reason), nodes in groups.items()]}
