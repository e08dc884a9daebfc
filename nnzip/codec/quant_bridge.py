"""The one place the .nnz codec touches nnzip.quant (whose internals other work is changing).

Two functions: read a quantized layer's integer weight out, and turn stored integers back into
the float weight with the quantizer's own ``dequantize`` (so the result is bit-identical).
"""

from __future__ import annotations

from torch import nn

from nnzip.codec.tensors import Integer
from nnzip.errors import NnzipError


def integer_weight(module: nn.Module) -> tuple[nn.Module, Integer] | None:
    """(the wrapped float layer, its integer weight) for a frozen weight-only QuantizedLayer."""
    from dataclasses import asdict

    from nnzip.quant.modules import QuantizedLayer

    if not isinstance(module, QuantizedLayer):
        return None
    if module.input_scheme is not None:
        raise NnzipError("the .nnz file stores integer weights, not quantized activations: "
                         "quantize with activation_bits: null (weights only), or deploy the "
                         "activation-quantized model as ONNX (nnzip deploy)")
    if module.weight_int is None:
        module.freeze_weight()
    scheme = module.weight_scheme
    qparams = module.weight_qparams
    return module.layer, Integer(values=module.weight_int, bits=scheme.bits, low=scheme.qmin,
                                 scale=qparams.scale, zero_point=qparams.zero_point,
                                 scheme=asdict(scheme))


def dequantize_integer(value: Integer):
    """The float weight of an :class:`Integer` record, exactly as the quantized layer used it."""
    import torch

    from nnzip.quant.affine import QParams, QScheme, dequantize

    try:
        scheme = QScheme(**value.scheme)
    except TypeError as error:
        raise NnzipError(f"unknown quantization scheme in the file ({error}): corrupt data or "
                         "a newer nnzip") from error
    qparams = QParams(scale=value.scale, zero_point=value.zero_point, scheme=scheme)
    return dequantize(value.values.to(torch.int8 if scheme.bits <= 8 else torch.int32), qparams)
