"""Export to ONNX: float models as they are, quantized models in the QDQ form with nnzip's scales.

A model quantized by nnzip holds :class:`~nnzip.quant.modules.QuantizedLayer` modules whose
integer weights, scales and zero points were chosen by nnzip (observers, GPTQ, QAT...). The export
must carry exactly those numbers, not re-derive them, or the exported model is not the one nnzip
measured. So each QuantizedLayer is swapped, for the export only, for a small module that
expresses the layer with PyTorch's ``quantized_decomposed`` ops, which the ONNX exporter turns into
``QuantizeLinear`` / ``DequantizeLinear`` nodes (the QDQ format, ONNX opset ≥ 13):

    x ─ QuantizeLinear(s_x, z_x) ─ DequantizeLinear ─┐
    W_int8 (initializer) ─ DequantizeLinear(s_w[c]) ─┴─ Conv / Gemm ─ ...

The weight initializer is stored as 8-bit integers with its per-channel scales, so the ``.onnx``
file holds one byte per weight. ONNX Runtime fuses DQ → Conv → Q patterns into integer kernels
(QLinearConv, QGemm...); see :mod:`nnzip.runtime.session`.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Registers torch.ops.quantized_decomposed, which torch.onnx maps to QuantizeLinear and
# DequantizeLinear. It must happen at import: the exporter builds its op registry on first use,
# and a registry built before this import lacks these ops for the rest of the process.
from torch.ao.quantization.fx import _decomposed  # noqa: F401
from torch.nn.utils import parametrize

from nnzip.atomic import atomic_path
from nnzip.errors import NnzipError
from nnzip.evaluate.machine import int8_weights_saturate
from nnzip.models.surgery import set_module
from nnzip.quant.affine import QScheme
from nnzip.quant.attention import fuse_attention
from nnzip.quant.lowbit import LowBitParams
from nnzip.quant.modules import QuantizedLayer, quantized_layers
from nnzip.quant.parametrized import WeightQuantizer, quantized_weights, remove_quantizers
from nnzip.runtime.qdq_graph import integer_chain, observer_kind, transformer_placement

log = logging.getLogger(__name__)

#: Opset 18: per-channel QuantizeLinear/DequantizeLinear and all ops of the zoo and HF models.
OPSET = 18
#: Query and key entering attention's score MatMul, for OpenVINO: signed symmetric int8 per
#: tensor, which its fused attention runs on i8 (as NNCF quantizes them); unsigned did not fuse.
ATTENTION_SCHEME = QScheme(bits=8, symmetric=True, signed=True)


def affine_weight(quantized: QuantizedLayer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A frozen layer's weight as affine int8 ``(integers, scale, zero_point)``, which ONNX's
    DequantizeLinear reads: affine weights as they are; binary and ternary codes (±1, 0) with
    their channel scale; pow2 codes as the integers ±2^(|code| − 1) on the scale
    ``scale · 2^(1 − top code)``, exact up to 4 bits (2^6 = 64 fits int8, 2^14 does not).
    """
    params = quantized.weight_qparams
    codes = quantized.weight_int
    if not isinstance(params, LowBitParams):
        return codes, params.scale, params.zero_point
    zero_point = torch.zeros_like(params.scale, dtype=torch.int32)
    scheme = params.scheme
    if scheme.format != "pow2":
        return codes, params.scale, zero_point
    top_code = scheme.qmax
    if 2 ** (top_code - 1) > 127:
        raise NnzipError(f"pow2 weights of {scheme.bits} bits span 2^{top_code - 1}, more than "
                         "int8 holds, so they have no exact ONNX QDQ export: use 2 to 4 bits, "
                         "or export float_view(model)")
    magnitudes = torch.where(codes == 0, 0, 2 ** (codes.abs().to(torch.int32) - 1).clamp(min=0))
    return (torch.sign(codes) * magnitudes).to(torch.int8), params.scale * 2.0 ** (1 - top_code), \
        zero_point


class QDQWeight(nn.Module):
    """An integer weight with its scales, read back through DequantizeLinear when exported."""

    def _store_weight(self, quantized: QuantizedLayer | WeightQuantizer, weight_dtype: str,
                      name: str) -> None:
        if quantized.weight_int is None or quantized.mode != "quantize":
            raise NnzipError("export needs a converted model: call nnzip.quant.convert() (or "
                             f"finish QAT) before exporting; {name!r} is still in mode "
                             f"{quantized.mode!r}")
        weight_int, scale, zero_point = affine_weight(quantized)
        scheme = quantized.weight_qparams.scheme
        if scheme.granularity == "group":
            raise NnzipError(f"{name!r} has group-wise weight scales, which have no QDQ export "
                             "yet: quantize with granularity 'channel' or 'tensor' to export to "
                             "ONNX, or export float_view(model) (the dequantized weights, float "
                             "size)")
        if getattr(scheme, "axis", 0) != 0 and scheme.granularity == "channel":
            raise NnzipError(f"per-channel weights along axis {scheme.axis} cannot be exported: "
                             "ONNX Conv/Gemm weights are per output channel (axis 0)")
        self.per_channel = scheme.granularity == "channel"
        if weight_dtype not in ("int8", "uint8"):
            raise NnzipError(f"weight_dtype must be 'int8' or 'uint8', got {weight_dtype!r}")
        # uint8 stores q + 128 with zero point + 128: the same integers, shifted.
        shift = 128 if weight_dtype == "uint8" else 0
        self.weight_range = (0, 255, torch.uint8) if shift else (-128, 127, torch.int8)
        self.register_buffer("weight_int", (weight_int.to(torch.int16) + shift)
                             .to(self.weight_range[2]))
        channels = weight_int.shape[0]
        scale = scale.float().reshape(-1)
        zero_point = zero_point.reshape(-1).to(torch.int64) + shift
        if self.per_channel:
            scale, zero_point = scale.expand(channels), zero_point.expand(channels)
        self.register_buffer("weight_scale", scale.contiguous())
        self.register_buffer("weight_zero_point", zero_point.contiguous())

    def dequantized_weight(self) -> torch.Tensor:
        ops = torch.ops.quantized_decomposed
        if self.per_channel:
            return ops.dequantize_per_channel(self.weight_int, self.weight_scale,
                                              self.weight_zero_point, 0, *self.weight_range)
        return ops.dequantize_per_tensor(self.weight_int, float(self.weight_scale[0]),
                                         int(self.weight_zero_point[0]), *self.weight_range)


class QDQTensor(QDQWeight):
    """Export view of a weight-only quantized tensor (an LSTM gate matrix, a functional or tied
    weight): the parametrization returns the int8 weight through DequantizeLinear."""

    def __init__(self, quantizer: WeightQuantizer, weight_dtype: str = "int8",
                 name: str = "") -> None:
        super().__init__()
        self._store_weight(quantizer, weight_dtype, name)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        del original  # the integers are the weight
        return self.dequantized_weight()


class QDQLayer(QDQWeight):
    """Export view of a frozen QuantizedLayer: int8 weight + scales, input quantize/dequantize."""

    def __init__(self, quantized: QuantizedLayer, weight_dtype: str = "int8",
                 name: str = "") -> None:
        super().__init__()
        self._store_weight(quantized, weight_dtype, name)
        self.layer = quantized.layer
        # SmoothQuant's input division (a Mul/Div before QuantizeLinear), if the layer has one.
        self.register_buffer("smoothing", None if quantized.smoothing is None
                             else quantized.smoothing.detach().float().clone())
        inputs = quantized.input_qparams
        self.input = None
        if inputs is not None:
            input_scheme = inputs.scheme
            # Python numbers: the exporter makes them scalar initializers of QuantizeLinear.
            self.input = (float(inputs.scale.reshape(-1)[0]), int(inputs.zero_point.reshape(-1)[0]),
                          input_scheme.qmin, input_scheme.qmax,
                          torch.int8 if input_scheme.qmin < 0 else torch.uint8)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight, for parents that read ``.weight`` instead of calling the layer
        (transformers' ViT reads its patch projection's ``weight.dtype``), as QuantizedLayer
        offers it; what nothing uses is dropped from the exported graph."""
        return self.dequantized_weight()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.layer.bias

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding rows gathered as integers, then dequantized: dequantizing the whole table
        at every call would cost more than the rest of a small encoder at batch 1."""
        codes = self.weight_int[ids].to(torch.float32)
        if self.per_channel:
            scale = self.weight_scale[ids].unsqueeze(-1)
            zero_point = self.weight_zero_point[ids].unsqueeze(-1).to(torch.float32)
        else:
            scale, zero_point = self.weight_scale[0], self.weight_zero_point[0].float()
        return (codes - zero_point) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = torch.ops.quantized_decomposed
        if isinstance(self.layer, nn.Embedding):  # Gather of int8 rows, then their scales
            return self._lookup(x)
        if self.smoothing is not None:
            x = x / self.smoothing
        if self.input is not None:
            scale, zero_point, qmin, qmax, dtype = self.input
            x = ops.dequantize_per_tensor(ops.quantize_per_tensor(x, scale, zero_point, qmin, qmax,
                                                                  dtype),
                                          scale, zero_point, qmin, qmax, dtype)
        weight = self.dequantized_weight()
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, layer.bias)
        return layer._conv_forward(x, weight, layer.bias)


def export_view(model: nn.Module, weight_dtype: str = "int8") -> nn.Module:
    """A copy of ``model`` with every QuantizedLayer replaced by its :class:`QDQLayer`."""
    view = copy.deepcopy(model).eval()
    for name, layer in quantized_layers(view).items():
        if layer.mode == "dynamic":
            raise NnzipError(f"layer {name!r} is dynamically quantized; ONNX export of dynamic "
                             "quantization is done by ONNX Runtime itself: export the float model "
                             "and use onnxruntime.quantization.quantize_dynamic")
        set_module(view, name, QDQLayer(layer, weight_dtype, name))
    exported = {id(quantizer): QDQTensor(quantizer, weight_dtype, name)
                for name, (quantizer, _) in quantized_weights(view).items()}
    for module in view.modules():  # every user of a tied tensor reads the one QDQTensor
        if parametrize.is_parametrized(module):
            for plist in module.parametrizations.values():
                if id(plist[0]) in exported:
                    plist[0] = exported[id(plist[0])]
    return view


def float_view(model: nn.Module) -> nn.Module:
    """A float copy of a quantized model: each layer back to nn.Conv/Linear holding its
    dequantized weight, weight-only quantized tensors plain parameters holding theirs (tied ones
    still one tensor), attention back to ``nn.MultiheadAttention``, activations unquantized
    (weights-only quantization, run by float kernels).
    """
    view = copy.deepcopy(model).eval()
    for name, layer in quantized_layers(view).items():
        float_layer = layer.layer
        with torch.no_grad():
            float_layer.weight.copy_(layer.dequantized_weight())
        set_module(view, name, float_layer)
    return fuse_attention(remove_quantizers(view))


def is_quantized(model: nn.Module) -> bool:
    return bool(quantized_layers(model)) or bool(quantized_weights(model))


def _nodes(graph) -> list:
    """Every node of an ONNX graph, those of its subgraphs (If / Loop bodies) included."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            subgraphs = [*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])]
            for subgraph in subgraphs:
                nodes.extend(_nodes(subgraph))
    return nodes


def _strip_debug_metadata(path: str | os.PathLike) -> None:
    """Drop the exporter's per-node debug metadata (stack trace, module path and class, fx node
    name): nothing a runtime reads, and 29 % of the zoo ViT's fp32 file (258 of 895 KB)."""
    import onnx

    proto = onnx.load(str(path))
    for node in _nodes(proto.graph) + [n for f in proto.functions for n in f.node]:
        del node.metadata_props[:]
    onnx.save(proto, str(path))


def _activation_quantization(model: nn.Module):
    """The scheme and observer nnzip calibrated the layer inputs with (the first layer's), or
    None for a model without quantized activations (weight-only)."""
    for layer in quantized_layers(model).values():
        if layer.input_qparams is not None and layer.mode == "quantize":
            return layer.input_scheme, observer_kind(layer.observer)
    return None


def chain_quantized(model: nn.Module, path: str | os.PathLike, calibration: Iterable,
                    out: str | os.PathLike | None = None) -> Path:
    """Make ``model``'s exported QDQ file at ``path`` a fully integer chain (in place, or
    written to ``out``), with the activation scheme and observer nnzip calibrated ``model``
    with (:func:`nnzip.runtime.qdq_graph.integer_chain`). A model without quantized
    activations (weight-only, dynamic) is left as it is."""
    out = Path(out) if out is not None else Path(path)
    if Path(path) != out:
        with atomic_path(out) as tmp:
            shutil.copyfile(path, tmp)
    quantization = _activation_quantization(model)
    if quantization is not None:
        changes = integer_chain(out, calibration, *quantization)
        dropped = sum(change["source"].startswith("dropped") for change in changes)
        log.info("integer chain: %d Q/DQ pairs added, %d requantizations dropped",
                 len(changes) - dropped, dropped)
    return out


def openvino_placed(model: nn.Module, path: str | os.PathLike, calibration: Iterable,
                    out: str | os.PathLike) -> Path | None:
    """``model``'s exported QDQ file at ``path``, written to ``out`` with quantization placed
    for OpenVINO as NNCF places it in a transformer: the query and key of attention's score
    MatMul quantized too (signed symmetric int8, ranged by the observer nnzip calibrated
    ``model`` with, on ``calibration``), nothing on residual adds
    (:func:`nnzip.runtime.qdq_graph.transformer_placement`). None for a model without
    quantized activations (weight-only, dynamic): nothing to place."""
    quantization = _activation_quantization(model)
    if quantization is None:
        return None
    added = transformer_placement(path, out, calibration, ATTENTION_SCHEME, quantization[1])
    log.info("OpenVINO placement: %d Q/DQ pairs added on attention inputs", len(added))
    return Path(out)


def export_onnx(model: nn.Module, path: str | os.PathLike, example: torch.Tensor, *,
                dynamic_batch: bool = True, opset: int = OPSET,
                weight_dtype: str = "auto", sequence_dim: int | None = None,
                calibration: Iterable | None = None) -> Path:
    """Write ``model`` as an ONNX file (QDQ form if it is quantized by nnzip), atomically.

    ``example`` is one input batch; the batch dimension stays dynamic unless ``dynamic_batch`` is
    False; ``sequence_dim`` makes one more dimension of the input dynamic (the token dimension
    of a transformer's ``input_ids``, 1). ``weight_dtype`` stores the integer weights as
    ``int8`` or as ``uint8`` (the same integers shifted by 128); ``auto`` picks uint8 on this
    machine if it is an AVX2 CPU without VNNI, where ONNX Runtime's int8-weight kernels
    saturate and change the results
    (:func:`nnzip.evaluate.machine.int8_weights_saturate`).

    ``calibration`` (batches of training inputs, e.g. ``nnzip.data.calibration_batches(data,
    8)``) makes a statically quantized model's graph fully integer: the residual adds, pooling,
    layer outputs and the classifier get Q/DQ pairs too, with nnzip's scales where it has them and
    ranges observed by nnzip on these batches otherwise (:func:`nnzip.runtime.qdq_graph.
    integer_chain_proto`), so ONNX Runtime fuses the whole chain into integer kernels. Without
    it, only what nnzip quantized (each layer's input and weight) is in the file. Returns the
    path written.
    """
    path = Path(path)
    if weight_dtype == "auto":
        weight_dtype = "uint8" if int8_weights_saturate() else "int8"
    from nnzip.runtime.onnx_lowbit import lowbit_view  # int4 MatMulNBits, dynamic int8

    lowbit = lowbit_view(model, weight_dtype)
    translations = lowbit.translations if lowbit is not None else None
    view = (lowbit.view if lowbit is not None else export_view(model, weight_dtype)
            if is_quantized(model) else copy.deepcopy(model).eval())
    dims = {0: torch.export.Dim("batch", min=1)} if dynamic_batch else {}
    if sequence_dim is not None:
        dims[sequence_dim] = torch.export.Dim("sequence", min=2)
    shapes = (dims,) if dims else None
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed" is not the user's news
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's
        try:
            with torch.no_grad():
                torch.onnx.export(view, (example,), str(tmp), dynamo=True, opset_version=opset,
                                  dynamic_shapes=shapes, verbose=False, optimize=True,
                                  external_data=False, custom_translation_table=translations)
        except Exception as exc:  # the exporter raises many types; all mean "cannot export"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise NnzipError(f"cannot export {type(model).__name__} to ONNX "
                             f"({type(exc).__name__}: {first[:300]}); models must be traceable "
                             "by torch.export (no data-dependent Python control flow)") from exc
        finally:
            registration.setLevel(level)
        _strip_debug_metadata(tmp)
        if calibration is not None:
            chain_quantized(model, tmp, calibration)
    log.info("exported %s to %s", type(model).__name__, path)
    return path
