"""ONNX export of the transformer path's integer forms that QDQ cannot hold, with nnzip's integers.

- **Group-wise int4 weights** (``weight-int4-rtn``/``weight-int4-gptq``: symmetric codes −7..7,
  one scale per ``group_size`` inputs of each output row) become ONNX Runtime's ``MatMulNBits``
  contrib op (domain ``com.microsoft``): two codes per byte and one fp32 scale per group, so the
  file is int4-sized and ORT runs its int4 kernel. The codes are nnzip's own, shifted by 8 to the
  op's unsigned nibbles (its default zero point is 8), so ``(code + 8 − 8) · scale`` is exactly
  nnzip's dequantized weight. The op's ``accuracy_level`` is 0 (fp32 activations): level 4 would
  also round the activations to int8, which nnzip did not measure.
- **Dynamic int8** (``dynamic-int8``, ``dynamic-int8-emb8``: int8 weights per output channel,
  uint8 activations ranged per batch) becomes ``DynamicQuantizeLinear`` → ``MatMulInteger`` →
  ``Cast`` → ``Mul`` by (activation scale × weight scale), the standard-ONNX pattern ORT's own
  ``quantize_dynamic`` writes and ORT fuses into ``DynamicQuantizeMatMul``. The activation range
  is that of the whole batch, widened to include 0, as nnzip computes it.

Each such layer is swapped, for the export only, for a small module calling a PyTorch custom op
(``nnzip::matmul_nbits``, ``nnzip::dynamic_matmul_int8``) that computes the same in eager mode
and that ``torch.onnx.export``'s ``custom_translation_table`` turns into the ONNX nodes above;
every other quantized layer (int8 embedding tables) takes its QDQ form
(:class:`~nnzip.runtime.onnx_export.QDQLayer`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from nnzip.errors import NnzipError
from nnzip.models.surgery import set_module
from nnzip.quant.affine import QParams
from nnzip.quant.modules import QuantizedLayer, quantized_layers

#: The one code width exported as MatMulNBits (int2/int8 blocks exist in ORT, not in nnzip).
NBITS = 4
#: MatMulNBits' default zero point for 4 bits: a nibble n stands for n − 8.
NBITS_ZERO_POINT = 8


# -- int4 group-wise -------------------------------------------------------------------------
def pack_nbits(codes: torch.Tensor, group_size: int) -> torch.Tensor:
    """Signed int4 codes of a Linear weight (N, K) in MatMulNBits' ``B`` layout:
    uint8 (N, K / group_size, group_size / 2), two codes per byte, the first in the low nibble.

    Hand-written because ORT's packer (``quantize_matmul_4bits``) rounds float weights on its own
    grid; nnzip's codes (GPTQ's among them) must be carried as they are.
    """
    rows, columns = codes.shape
    if codes.min() < -NBITS_ZERO_POINT or codes.max() > NBITS_ZERO_POINT - 1:
        raise NnzipError("int4 codes must lie in −8..7 to be stored as MatMulNBits nibbles")
    nibbles = (codes.to(torch.int16) + NBITS_ZERO_POINT).to(torch.uint8)
    nibbles = nibbles.reshape(rows, columns // group_size, group_size // 2, 2)
    return nibbles[..., 0] | (nibbles[..., 1] << 4)


def unpack_nbits(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_nbits`: signed codes (N, K), int8."""
    low, high = packed & 0x0F, packed >> 4
    nibbles = torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)
    return (nibbles.to(torch.int16) - NBITS_ZERO_POINT).to(torch.int8)


@torch.library.custom_op("nnzip::matmul_nbits", mutates_args=())
def matmul_nbits(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, in_features: int,
                 out_features: int, block_size: int) -> torch.Tensor:
    """``x @ Wᵀ`` with W the int4 codes of ``packed`` times one scale per block (MatMulNBits)."""
    codes = unpack_nbits(packed).to(torch.float32)
    blocks = codes.reshape(out_features, in_features // block_size, block_size)
    weight = (blocks * scales.reshape(out_features, -1, 1)).reshape(out_features, in_features)
    return x @ weight.t().to(x.dtype)


@matmul_nbits.register_fake
def _(x, packed, scales, in_features, out_features, block_size):
    return x.new_empty((*x.shape[:-1], out_features))


def _matmul_nbits_op():
    """ORT's MatMulNBits as an onnxscript op. The onnx package has no schema for ORT's contrib
    ops and the exporter needs one, so the part nnzip uses is declared here (ORT's
    ``ContribOperators.md``: inputs A, B, scales; attributes K, N, bits, block_size,
    accuracy_level)."""
    from onnx.defs import OpSchema
    from onnxscript.values import Op, Opset

    parameter = OpSchema.FormalParameter
    attribute = OpSchema.Attribute
    integer = OpSchema.AttrType.INT
    schema = OpSchema(
        "MatMulNBits", "com.microsoft", 1,
        inputs=[parameter("A", "T1"), parameter("B", "T2"), parameter("scales", "T1")],
        outputs=[parameter("Y", "T1")],
        type_constraints=[("T1", ["tensor(float)"], "activations and scales"),
                          ("T2", ["tensor(uint8)"], "packed codes")],
        attributes=[attribute("K", integer, "input features"),
                    attribute("N", integer, "output features"),
                    attribute("bits", integer, "bits per code"),
                    attribute("block_size", integer, "codes per scale"),
                    attribute("accuracy_level", integer, "0: fp32 activations")])
    return Op(Opset("com.microsoft", 1), "MatMulNBits", schema)


def _matmul_nbits_onnx(x, packed, scales, in_features: int, out_features: int, block_size: int):
    return _matmul_nbits_op()(x, packed, scales, K=in_features, N=out_features, bits=NBITS,
                  block_size=block_size, accuracy_level=0)


def nbits_refusal(layer: QuantizedLayer) -> str | None:
    """Why ``layer`` has no MatMulNBits form (None when it has one)."""
    params = layer.weight_qparams
    scheme = layer.weight_scheme
    if not isinstance(layer.layer, nn.Linear):
        return (f"group-wise weights export for Linear layers only (MatMulNBits), and this is a "
                f"{type(layer.layer).__name__}: quantize it per channel, or exclude it")
    if not isinstance(params, QParams) or scheme.granularity != "group" or scheme.bits != NBITS:
        return (f"{scheme.bits}-bit group-wise weights: ONNX holds group-wise weights at 4 bits "
                "only (MatMulNBits); use weight_bits 4, or granularity 'channel'")
    if layer.input_scheme is not None or layer.smoothing is not None:
        return "its input is quantized or smoothed (MatMulNBits is weight-only)"
    size = scheme.group_size
    if size < 16 or size & (size - 1):
        return (f"group_size {size}: MatMulNBits blocks are powers of two ≥ 16 (use 32, 64 or "
                "128)")
    if bool((params.zero_point != 0).any()):
        return "asymmetric codes (MatMulNBits' zero point here is 8)"
    return None


class NBitsLinear(nn.Module):
    """Export view of a group-wise int4 Linear: MatMulNBits with nnzip's codes and scales."""

    def __init__(self, quantized: QuantizedLayer, name: str = "") -> None:
        super().__init__()
        reason = nbits_refusal(quantized)
        if reason is not None:
            raise NnzipError(f"{name!r} has no MatMulNBits form: {reason}")
        layer = quantized.layer
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.block_size = quantized.weight_scheme.group_size
        self.register_buffer("packed", pack_nbits(quantized.weight_int, self.block_size))
        self.register_buffer("scales", quantized.weight_qparams.scale.float().reshape(-1)
                             .contiguous())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = matmul_nbits(x, self.packed, self.scales, self.in_features, self.out_features,
                         self.block_size)
        return y if self.bias is None else y + self.bias


# -- dynamic int8 ----------------------------------------------------------------------------
@torch.library.custom_op("nnzip::dynamic_matmul_int8", mutates_args=())
def dynamic_matmul_int8(x: torch.Tensor, weight_t: torch.Tensor, weight_scale: torch.Tensor,
                        weight_zero_point: torch.Tensor) -> torch.Tensor:
    """``x @ W`` with x rounded to uint8 on its own range (DynamicQuantizeLinear) and W (K, N)
    integers with one scale and zero point per output column (MatMulInteger)."""
    low = torch.clamp(x.min(), max=0.0)
    high = torch.clamp(x.max(), min=0.0)
    scale = (high - low) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.clamp(torch.round(-low / scale), 0, 255)
    x_int = torch.clamp(torch.round(x / scale) + zero_point, 0, 255)
    weight = (weight_t.to(torch.float32) - weight_zero_point.to(torch.float32)) * weight_scale
    return ((x_int - zero_point) * scale) @ weight


@dynamic_matmul_int8.register_fake
def _(x, weight_t, weight_scale, weight_zero_point):
    return x.new_empty((*x.shape[:-1], weight_t.shape[1]))


def _dynamic_matmul_int8_onnx(x, weight_t, weight_scale, weight_zero_point):
    from onnxscript import opset18 as op

    x_int, x_scale, x_zero_point = op.DynamicQuantizeLinear(x)
    product = op.MatMulInteger(x_int, weight_t, x_zero_point, weight_zero_point)
    return op.Mul(op.Cast(product, to=1), op.Mul(x_scale, weight_scale))  # to=1: FLOAT


class DynamicInt8Linear(nn.Module):
    """Export view of a dynamically quantized Linear, with nnzip's int8 weight integers.

    ``weight_dtype`` ``uint8`` stores q + 128 with zero point 128 (the same integers), for CPUs
    whose u8·s8 kernels saturate (AVX2 without VNNI).
    """

    def __init__(self, quantized: QuantizedLayer, weight_dtype: str = "int8",
                 name: str = "") -> None:
        super().__init__()
        scheme = quantized.weight_scheme
        params = quantized.weight_qparams
        layer = quantized.layer
        if not isinstance(layer, nn.Linear) or not isinstance(params, QParams) \
                or scheme.granularity == "group":
            raise NnzipError(f"{name!r} is dynamically quantized with {scheme}, which has no "
                             "MatMulInteger form: dynamic ONNX export takes Linear layers with "
                             "per-channel or per-tensor int8 weights")
        inputs = quantized.input_scheme
        if inputs is None or (inputs.bits, inputs.symmetric, inputs.signed) != (8, False, False):
            raise NnzipError(f"{name!r} rounds its activations to {inputs}, and ONNX's "
                             "DynamicQuantizeLinear rounds to asymmetric uint8 only: use "
                             "activation_bits 8 (asymmetric) for dynamic export")
        if weight_dtype not in ("int8", "uint8"):
            raise NnzipError(f"weight_dtype must be 'int8' or 'uint8', got {weight_dtype!r}")
        shift = 128 if weight_dtype == "uint8" else 0
        dtype = torch.uint8 if shift else torch.int8
        columns = layer.out_features
        weight_int = quantized.weight_int.to(torch.int16) + shift
        self.register_buffer("weight_t", weight_int.t().contiguous().to(dtype))
        scale = params.scale.float().reshape(-1).expand(columns)
        zero_point = params.zero_point.reshape(-1).to(torch.int16).expand(columns) + shift
        self.register_buffer("weight_scale", scale.contiguous())
        self.register_buffer("weight_zero_point", zero_point.contiguous().to(dtype))
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = dynamic_matmul_int8(x, self.weight_t, self.weight_scale, self.weight_zero_point)
        return y if self.bias is None else y + self.bias


# -- the export view -------------------------------------------------------------------------
#: What ``torch.onnx.export`` writes for nnzip's custom ops.
TRANSLATIONS = {torch.ops.nnzip.matmul_nbits.default: _matmul_nbits_onnx,
                torch.ops.nnzip.dynamic_matmul_int8.default: _dynamic_matmul_int8_onnx}


@dataclass
class LowBitExport:
    """A model's export view with its custom ops, and how many layers took each form."""

    view: nn.Module
    translations: dict
    nbits_layers: int
    dynamic_layers: int


def is_lowbit_layer(layer: QuantizedLayer) -> bool:
    """Whether ``layer`` needs this module's export: dynamic, or group-wise weight-only."""
    scheme = layer.weight_scheme
    return layer.mode == "dynamic" or (layer.input_scheme is None
                                       and getattr(scheme, "granularity", None) == "group")


def lowbit_kind(model: nn.Module) -> str | None:
    """What this module exports of ``model``: ``int4-matmulnbits``, ``int8-dynamic``, both
    joined by ``+``, or None (nothing: the QDQ export applies)."""
    layers = [layer for layer in quantized_layers(model).values() if is_lowbit_layer(layer)]
    kinds = [kind for kind, present in (
        ("int4-matmulnbits", any(layer.mode != "dynamic" for layer in layers)),
        ("int8-dynamic", any(layer.mode == "dynamic" for layer in layers))) if present]
    return "+".join(kinds) or None


def lowbit_view(model: nn.Module, weight_dtype: str = "int8") -> LowBitExport | None:
    """A copy of ``model`` whose int4 group-wise Linears are :class:`NBitsLinear`, dynamic ones
    :class:`DynamicInt8Linear` and other quantized layers QDQ; None when no layer needs it (the
    QDQ export then applies as it is). Raises NnzipError for a layer with no form."""
    from nnzip.quant.parametrized import quantized_weights
    from nnzip.runtime.onnx_export import QDQLayer, QDQTensor

    layers = quantized_layers(model)
    if not any(is_lowbit_layer(layer) for layer in layers.values()):
        return None
    view = copy.deepcopy(model).eval()
    counts = {"nbits": 0, "dynamic": 0}
    for name, layer in quantized_layers(view).items():
        if layer.mode == "dynamic":
            replacement = DynamicInt8Linear(layer, weight_dtype, name)
            counts["dynamic"] += 1
        elif is_lowbit_layer(layer):
            replacement = NBitsLinear(layer, name)
            counts["nbits"] += 1
        else:
            replacement = QDQLayer(layer, weight_dtype, name)
        set_module(view, name, replacement)
    # Weight-only tensors (tied, functional, RNN weights) take their QDQ form, one per tensor.
    exported = {id(quantizer): QDQTensor(quantizer, weight_dtype, name)
                for name, (quantizer, _) in quantized_weights(view).items()}
    for module in view.modules():
        if parametrize.is_parametrized(module):
            for plist in module.parametrizations.values():
                if id(plist[0]) in exported:
                    plist[0] = exported[id(plist[0])]
    return LowBitExport(view, TRANSLATIONS, counts["nbits"], counts["dynamic"])


__all__ = ["DynamicInt8Linear", "LowBitExport", "NBitsLinear", "dynamic_matmul_int8",
           "is_lowbit_layer", "lowbit_kind", "lowbit_view", "matmul_nbits", "nbits_refusal",
           "pack_nbits", "unpack_nbits"]
