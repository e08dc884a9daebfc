"""Checks on an ONNX file before ONNX Runtime opens it.

An ONNX tensor may keep its data in another file (``external_data``: a location relative to the
model). A location that leaves the model's folder (``../../etc/passwd``, an absolute path, a
symlink out) would make nnzip read a file the model has no business reading, so it is refused
before anything is read. The initializers (and ``Constant`` nodes' tensors) are then checked for
NaN/Inf like every other loader's weights (:mod:`nnzip.models.finite`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from nnzip.errors import NnzipError
from nnzip.models.finite import check_finite


def _tensors(model) -> Iterator:
    """Every TensorProto of the graph and its subgraphs: initializers and Constant values."""
    import onnx

    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        yield from ((tensor.name, tensor) for tensor in graph.initializer)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR:
                    yield f"{node.name or node.op_type}.{attribute.name}", attribute.t
                graphs.extend([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH
                              else list(attribute.graphs))


def _check_location(tensor_name: str, location: str, folder: Path, source: str) -> None:
    target = (folder / location).resolve()
    if Path(location).is_absolute() or not target.is_relative_to(folder.resolve()):
        raise NnzipError(f"{source}: tensor {tensor_name!r} keeps its data in {location!r}, "
                         "outside the model's folder; nnzip reads external data only from "
                         "beside the model: move the data file next to the .onnx and re-save")


def check_onnx_file(path: Path, *, allow_nonfinite: bool = False) -> None:
    """Refuse external data outside the model's folder and, unless allowed, NaN/Inf weights."""
    import onnx
    from onnx import numpy_helper

    source = str(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise NnzipError(f"{source} is not a readable ONNX file ({type(exc).__name__}: "
                         f"{str(exc)[:200]}): export the model again") from None
    folder = path.parent
    tensors = list(_tensors(model))
    for name, tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {entry.key: entry.value for entry in tensor.external_data}
            _check_location(name, entries.get("location", ""), folder, source)
    if allow_nonfinite:
        return
    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}
    for name, tensor in tensors:
        if tensor.data_type not in floating:
            continue  # integer (quantized) tensors cannot hold NaN or Inf
        try:
            array = numpy_helper.to_array(tensor, base_dir=str(folder))
        except Exception as exc:
            raise NnzipError(f"{source}: cannot read tensor {name!r} ({type(exc).__name__}: "
                             f"{str(exc)[:200]}): the file is corrupt; export it again") from None
        # A copy, one tensor at a time: onnx hands out read-only arrays torch would warn about.
        check_finite({name: torch.tensor(array, dtype=torch.float32)}, source)


__all__ = ["check_onnx_file"]
