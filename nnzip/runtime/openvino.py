"""Run models in OpenVINO behind the ``nn.Module`` interface nnzip measures.

OpenVINO is Intel's inference runtime for exactly this CPU job: it reads ONNX (nnzip's QDQ files
included, which its CPU plugin runs with u8/i8 kernels: :func:`runtime_precisions` shows it) and
its own IR (``.xml`` graph + ``.bin`` weights). :class:`OvModule` wraps a compiled model so that
accuracy and latency are measured by the same code as PyTorch and ONNX Runtime models::

    model = OvModule("model.onnx", threads=1)                 # fp32, precision hint pinned
    model = OvModule("model.xml", precision="bf16")           # bf16 where the CPU has it (AMX)
    model = OvModule("model.onnx", static_shapes=True)        # compiled once per batch shape

Two settings matter for speed and for honest numbers:

- ``INFERENCE_PRECISION_HINT``: on CPUs with AMX/AVX-512 BF16 the CPU plugin *defaults* to bf16
  for float layers, which changes the numbers. nnzip pins it (``f32`` unless ``bf16`` is asked
  for), so an "fp32" candidate is fp32.
- static shapes: a model reshaped to one batch size lets the plugin pick kernels for that shape;
  with ``static_shapes`` :class:`OvModule` compiles such a model the first time it sees a batch
  size and keeps it (``deploy`` times both forms and keeps the faster).

OpenVINO is an optional extra (``pip install nnzip[openvino]``); :func:`openvino_missing` says why
it cannot be used instead of failing.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnzip.bounded import read_capped
from nnzip.errors import NnzipError
from nnzip.models.finite import check_finite

#: Inference precisions an :class:`OvModule` may be compiled with (the CPU plugin's hint values).
PRECISIONS = ("f32", "bf16")
#: Where nnzip keeps, inside a saved IR, how the model is meant to be compiled.
RT_INFO_PRECISION = ["nnzip", "inference_precision"]
RT_INFO_STATIC = ["nnzip", "static_shapes"]
#: Compiled static-shape models an :class:`OvModule` keeps (each holds its own kernels).
MAX_STATIC_SHAPES = 8
#: Largest IR ``.xml`` read: the graph text of a ResNet-50 is ~1 MB; the weights are in the .bin.
MAX_XML_BYTES = 64 << 20
_INSTALL_HINT = "pip install 'nnzip[openvino]' (or pip install openvino)"


def openvino_missing() -> str | None:
    """Why OpenVINO cannot be used here (not installed), or None when it can."""
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"OpenVINO is not installed ({exc}): {_INSTALL_HINT}"
    return None


def _ov():
    try:
        import openvino
    except ImportError as exc:
        raise NnzipError(f"OpenVINO is not installed: {_INSTALL_HINT}") from exc
    return openvino


def openvino_version() -> str | None:
    """The installed OpenVINO release (``2026.4.1``), or None."""
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin can run fast here (``BF16``, ``INT8``, ``FP32``...)."""
    return list(_ov().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _declared_bin_bytes(xml: bytes, source: Path) -> int:
    """The ``.bin`` size an IR ``.xml`` needs: the end of its furthest constant."""
    import xml.etree.ElementTree as ElementTree

    # Entities are the one way a small XML text expands into a huge one ("billion laughs"); IR
    # files written by OpenVINO never declare any, so a document that does is refused unparsed.
    if re.search(rb"<!(DOCTYPE|ENTITY)", xml):
        raise NnzipError(f"{source} declares XML entities, which OpenVINO IR never does: "
                         "save the model again with openvino.save_model")
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise NnzipError(f"{source} is not a readable OpenVINO IR ({exc}): save it again") from None
    if root.tag != "net":
        raise NnzipError(f"{source} is not an OpenVINO IR (its root element is <{root.tag}>, "
                         "not <net>): pass the .xml written by openvino.save_model")
    end = 0
    for data in root.iterfind("./layers/layer[@type='Const']/data"):
        try:
            end = max(end, int(data.get("offset", 0)) + int(data.get("size", 0)))
        except ValueError:
            raise NnzipError(f"{source}: a constant's offset/size is not a number: the file "
                             "is corrupt; save it again") from None
    return end


def check_ir_files(xml_path: Path) -> Path:
    """Check an OpenVINO IR before OpenVINO opens it; returns its ``.bin``.

    The ``.xml`` is read capped (:data:`MAX_XML_BYTES`) and must not declare entities; its
    ``.bin`` must sit beside it and hold every byte the constants declare (a truncated ``.bin``
    would otherwise be read past its end).
    """
    xml_path = Path(xml_path)
    bin_path = xml_path.with_suffix(".bin")
    xml = read_capped(xml_path, MAX_XML_BYTES, "OpenVINO IR", "pass the .xml of a model")
    declared = _declared_bin_bytes(xml, xml_path)
    if not bin_path.is_file():
        raise NnzipError(f"{xml_path} needs its weights file {bin_path.name} beside it: copy the "
                         ".bin written with the .xml into the same folder")
    actual = bin_path.stat().st_size
    if actual < declared:
        raise NnzipError(f"{bin_path} is {actual:,} bytes but {xml_path.name} declares "
                         f"{declared:,}: the weights file is truncated or belongs to another "
                         "model; save the model again")
    return bin_path


def _check_constants_finite(model, source: str) -> None:
    """NaN/Inf in a float constant (a weight) refuses the model, as every nnzip loader does."""
    ov = _ov()
    floating = {ov.Type.f32, ov.Type.f16, ov.Type.f64}
    tensors = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant" and op.get_element_type() in floating:
            tensors[op.get_friendly_name()] = torch.from_numpy(
                np.array(op.get_data(), dtype=np.float32))  # a copy: writable
    check_finite(tensors, source)


def read_ov_model(path: str | os.PathLike, *, allow_nonfinite: bool = False):
    """An ``openvino.Model`` from an ``.onnx`` file or an IR ``.xml`` (its ``.bin`` beside it).

    Reading runs no code from the file (both are graph descriptions). ONNX files go through the
    same external-data and NaN checks as for ONNX Runtime (:mod:`nnzip.models.onnx_file`).
    """
    path = Path(path)
    if not path.is_file():
        raise NnzipError(f"model {path} does not exist: check the path")
    core = _ov().Core()
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from nnzip.models.onnx_file import check_onnx_file

        check_onnx_file(path, allow_nonfinite=allow_nonfinite)
        bin_path = None
    elif suffix == ".xml":
        bin_path = check_ir_files(path)
    else:
        raise NnzipError(f"OpenVINO reads .onnx and .xml (IR) files, not {path.name}: export the "
                         "model to ONNX first (nnzip.runtime.export_onnx)")
    try:
        model = (core.read_model(str(path)) if bin_path is None
                 else core.read_model(str(path), str(bin_path)))
    except Exception as exc:  # OpenVINO raises RuntimeError with its own message
        raise NnzipError(f"OpenVINO cannot read {path} ({type(exc).__name__}: "
                         f"{str(exc).strip()[:300]}): the file may be corrupt; save it again"
                         ) from None
    if bin_path is not None and not allow_nonfinite:
        _check_constants_finite(model, str(path))
    return model


def _rt_info(model, key: list[str], default: str) -> str:
    return model.get_rt_info(key).astype(str) if model.has_rt_info(key) else default


class OvModule(nn.Module):
    """A model run by OpenVINO's CPU plugin, callable like the PyTorch model it came from.

    ``path``: an ``.onnx`` file or an IR ``.xml``. ``precision``: ``"f32"`` (pinned, the default)
    or ``"bf16"``; ``static_shapes``: compile one model per batch size seen (the first call at a
    new batch size compiles). For an IR saved by :func:`save_ir`, ``None`` takes what the file
    records. One input, first output, as :class:`~nnzip.runtime.session.OrtModule`.
    :meth:`from_model` wraps an ``openvino.Model`` already in memory (one NNCF quantized).
    """

    def __init__(self, path: str | os.PathLike, threads: int = 1, precision: str | None = None,
                 static_shapes: bool | None = None, *, allow_nonfinite: bool = False) -> None:
        super().__init__()
        ov_model = read_ov_model(Path(path), allow_nonfinite=allow_nonfinite)
        self._setup(Path(path), ov_model, threads,
                    precision or _rt_info(ov_model, RT_INFO_PRECISION, "f32"),
                    static_shapes if static_shapes is not None
                    else _rt_info(ov_model, RT_INFO_STATIC, "false") == "true")

    @classmethod
    def from_model(cls, model, threads: int = 1, precision: str | None = "f32",
                   static_shapes: bool = True, name: str = "in-memory model") -> OvModule:
        """An OvModule running the ``openvino.Model`` ``model`` (converted or quantized in this
        process: ``nncf.quantize``'s result). ``precision=None`` leaves the CPU plugin its own
        default hint (bf16 on a CPU with AMX), as a user of OpenVINO gets it; ``precision`` then
        records what the plugin resolved it to, after the first compile."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._setup(Path(name), model, threads, precision, static_shapes)
        return module

    def _setup(self, path: Path, ov_model, threads: int, precision: str | None,
               static_shapes: bool) -> None:
        if precision is not None and precision not in PRECISIONS:
            raise NnzipError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.path, self.ov_model, self.threads = path, ov_model, threads
        self.precision, self.static_shapes = precision, static_shapes
        if len(self.ov_model.inputs) != 1:
            raise NnzipError(f"{self.path} has {len(self.ov_model.inputs)} inputs; OvModule runs "
                             "one-input models")
        ov = _ov()
        self.input_dtype = (np.int64 if self.ov_model.input(0).get_element_type() == ov.Type.i64
                            else np.float32)
        self._core = ov.Core()
        self._compiled: dict[tuple[int, ...] | None, object] = {}
        if not self.static_shapes:
            self._compiled[None] = self._compile(self.ov_model)

    def config(self) -> dict[str, object]:
        """The CPU plugin settings: precision pinned, fixed threads, one stream, no pinning
        (timings must not depend on the pool, and other processes share the cores)."""
        config: dict[str, object] = {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1,
                                     "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
        if self.precision is not None:  # None: the plugin's default (from_model only)
            config["INFERENCE_PRECISION_HINT"] = self.precision
        return config

    def _compile(self, model):
        try:
            compiled = self._core.compile_model(model, "CPU", self.config())
        except Exception as exc:
            raise NnzipError(f"OpenVINO cannot compile {self.path} ({type(exc).__name__}: "
                             f"{str(exc).strip()[:300]}): run it with ONNX Runtime instead"
                             ) from None
        if self.precision is None:  # what the plugin's default hint resolved to, pinned from now
            self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        return compiled.create_infer_request()

    def _request(self, shape: tuple[int, ...]):
        if not self.static_shapes:
            return self._compiled[None]
        if shape not in self._compiled:
            if len(self._compiled) >= MAX_STATIC_SHAPES:  # token ids of many lengths, say
                del self._compiled[next(iter(self._compiled))]  # the oldest compiled shape
            model = self.ov_model.clone()
            model.reshape({0: list(shape)})
            self._compiled[shape] = self._compile(model)
        return self._compiled[shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=self.input_dtype)
        request = self._request(array.shape)
        # Zero-copy in and out (the defaults copy both ways, ~15 % of a small model's batch-1
        # latency); the one copy below is needed: the request reuses its output buffer.
        request.infer({0: array}, share_inputs=True, share_outputs=True)
        return torch.from_numpy(np.array(request.get_output_tensor(0).data))

    def runtime_model(self):
        """The graph the CPU plugin executes (of the first compiled shape)."""
        if not self._compiled:
            self._request(tuple(1 if d.is_dynamic else d.get_length()
                                for d in self.ov_model.input(0).get_partial_shape()))
        request = next(iter(self._compiled.values()))
        return request.get_compiled_model().get_runtime_model()

    def extra_repr(self) -> str:
        return (f"{self.path.name}, threads={self.threads}, precision={self.precision}, "
                f"static_shapes={self.static_shapes}")


def runtime_precisions(module: OvModule) -> dict[str, dict[str, int]]:
    """Per executed layer type, how many nodes run at each precision (``{"Convolution":
    {"u8": 9}}``): the execution graph's ``runtimePrecision``, i.e. what really runs as int8."""
    counts: dict[str, dict[str, int]] = {}
    for op in module.runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer, precision = info["layerType"].astype(str), info["runtimePrecision"].astype(str)
        if layer in ("Const", "Input", "Output"):
            continue
        counts.setdefault(layer, {})
        counts[layer][precision] = counts[layer].get(precision, 0) + 1
    return counts


#: Layers whose integer precision shows that the heavy lifting is integer.
_COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul", "Eltwise", "Pooling")


def integer_layer_count(precisions: dict[str, dict[str, int]]) -> int:
    """How many compute layers (convolutions, matmuls, ...) run on u8/i8 inputs."""
    return sum(count for layer, by_precision in precisions.items() if layer in _COMPUTE_LAYERS
               for precision, count in by_precision.items() if precision in ("u8", "i8"))


def save_ir(module: OvModule, path: str | os.PathLike) -> Path:
    """Save ``module``'s model as OpenVINO IR (``path`` = ``.xml``, its ``.bin`` beside it),
    recording the precision and shape mode it runs with, so :class:`OvModule` reloads it as run.

    Weights keep their type (``compress_to_fp16=False``: OpenVINO's default would halve float
    weights to fp16 and change the numbers). Write it inside a staged folder
    (:func:`nnzip.outputs.staged_folder`): the two files appear together only when it is
    swapped in.
    """
    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise NnzipError(f"an OpenVINO IR is saved as .xml (+ .bin), not {path.name}")
    model = module.ov_model.clone()
    model.set_rt_info(module.precision, RT_INFO_PRECISION)
    model.set_rt_info("true" if module.static_shapes else "false", RT_INFO_STATIC)
    _ov().save_model(model, str(path), compress_to_fp16=False)
    return path


__all__ = ["OvModule", "check_ir_files", "cpu_capabilities", "integer_layer_count",
           "openvino_missing", "openvino_version", "read_ov_model", "runtime_precisions",
           "save_ir"]
