"""Run ONNX models in ONNX Runtime behind the ``nn.Module`` interface nnzip measures.

:class:`OrtModule` wraps an ``onnxruntime.InferenceSession`` so that accuracy, agreement and
latency are measured by the very same code as PyTorch models (tensors in, tensors out).

ONNX Runtime turns a QDQ model into integer kernels itself when it builds the session (its
graph optimizer fuses ``DequantizeLinear → Conv → QuantizeLinear`` into ``QLinearConv`` and so
on). :func:`to_qoperator` saves that optimized graph: the integer-operator ("QOperator") form of
the same model, whose node counts (:func:`op_counts`) show how much of it really runs in integers.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnzip.atomic import atomic_path
from nnzip.errors import NnzipError

#: Operators that compute on integers (ONNX standard and ONNX Runtime contrib ops).
INTEGER_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                         "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearAdd",
                         "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool",
                         "QLinearLeakyRelu", "QLinearSigmoid", "QLinearConcat",
                         "QGemm", "QLinearSoftmax", "QAttention", "MatMulNBits"})


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:  # a dependency of nnzip; only a broken install lacks it
        raise NnzipError("onnxruntime is not installed: pip install onnxruntime") from exc
    return onnxruntime


def session_options(threads: int = 1, optimization: str = "all"):
    """Session options with a fixed thread count (timings must not depend on the pool)."""
    ort = _ort()
    levels = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if optimization not in levels:
        raise NnzipError(f"optimization must be one of {sorted(levels)}, got {optimization!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = levels[optimization]
    options.log_severity_level = 3
    # ORT's optimizer fuses a weight-only QDQ MatMul (int8 weight → DequantizeLinear → MatMul
    # with float inputs) into MatMulNBits at accuracy level 4 by default, which quantizes the
    # *activations* to int8 as well: a weights-only model would compute something else than
    # nnzip measured (max |Δ| 4e-5 instead of 3e-8 on a unit-norm sentence embedding). Level 1
    # keeps the activations in fp32.
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return options


def _open(path: Path, options):
    ort = _ort()
    if not path.is_file():
        raise NnzipError(f"ONNX model {path} does not exist: export it first "
                         "(nnzip.runtime.export_onnx)")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise NnzipError(f"ONNX Runtime cannot load {path} ({type(exc).__name__}: "
                         f"{str(exc).strip()[:300]}); the file may be corrupt or use an operator "
                         "this ONNX Runtime lacks: re-export it") from exc


class OrtModule(nn.Module):
    """An ONNX model run by ONNX Runtime, callable like the PyTorch model it came from."""

    def __init__(self, path: str | os.PathLike, threads: int = 1,
                 optimization: str = "all") -> None:
        super().__init__()
        self.path = Path(path)
        self.threads = threads
        self.optimization = optimization
        self.session = _open(self.path, session_options(threads, optimization))
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise NnzipError(f"{self.path} has {len(inputs)} inputs; OrtModule runs one-input "
                             "models")
        self.input_name = inputs[0].name
        # Token ids stay integers (a transformer's input_ids); everything else is float32.
        self.input_dtype = np.int64 if inputs[0].type == "tensor(int64)" else np.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=self.input_dtype)
        (output, *_) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(output)

    def extra_repr(self) -> str:
        return f"{self.path.name}, threads={self.threads}"


def to_qoperator(qdq_path: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Save the QDQ model as ONNX Runtime optimizes it: fused integer operators (QOperator form).

    Uses ORT's ``extended`` level, whose QDQ transformers produce QLinearConv/QLinearMatMul...;
    the ``all`` level would add layout transforms tied to this CPU, so the file stays portable
    across ONNX Runtime CPU builds of the same version.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        options = session_options(1, "extended")
        options.optimized_model_filepath = str(tmp)
        _open(Path(qdq_path), options)
    return path


def op_counts(path: str | os.PathLike) -> dict[str, int]:
    """How many nodes of each operator type the ONNX file holds."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(collections.Counter(node.op_type for node in model.graph.node))


def integer_op_count(counts: dict[str, int]) -> int:
    return sum(count for op, count in counts.items() if op in INTEGER_OPS)
