"""The one place the .nnz codec touches nnzip.quant (whose internals other work is changing).

One function reads a quantized layer's integer weight out. It relies only on a few attributes
(``layer``, ``input_scheme``, ``weight_int``, ``weight_qparams.scale`` / ``.zero_point``,
``dequantized_weight()``) and checks, before trusting them, that ``(q − zero_point) · scale``
reproduces the layer's own float weight bit for bit. Anything else (group-wise or low-bit formats
whose decoding differs) is stored as that exact float weight instead, so a file never holds a
weight the model did not use. Decoding needs nothing from nnzip.quant.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from nnzip.codec.tensors import Integer
from nnzip.errors import NnzipError

log = logging.getLogger(__name__)


def integer_weight(module: nn.Module) -> tuple[nn.Module, Integer | torch.Tensor] | None:
    """(the wrapped float layer, its integer weight — or its exact float weight) for a
    weight-quantized layer of nnzip.quant; None for any other module."""
    from nnzip.quant.modules import QuantizedLayer

    if not isinstance(module, QuantizedLayer):
        return None
    if getattr(module, "input_scheme", None) is not None:
        raise NnzipError("the .nnz file stores integer weights, not quantized activations: "
                         "quantize with activation_bits: null (weights only), or deploy the "
                         "activation-quantized model as ONNX (nnzip deploy)")
    with torch.no_grad():
        weight = module.dequantized_weight().detach()
        try:
            values = module.weight_int.detach().to(torch.int64)
            scale = module.weight_qparams.scale.detach().float()
            zero_point = module.weight_qparams.zero_point.detach()
            low, high = int(values.min()), int(values.max())
            bits = max(1, (high - low).bit_length())
            for view in (None, (values.shape[0], -1)):
                integer = Integer(values=values, bits=bits, low=low, scale=scale,
                                  zero_point=zero_point, scheme={}, view=view)
                try:
                    decoded = integer.dequantize()
                except RuntimeError:  # the scale does not broadcast against this view
                    continue
                if torch.equal(decoded.reshape(-1).view(torch.int32),
                               weight.float().reshape(-1).view(torch.int32)):
                    return module.layer, integer
        except (AttributeError, RuntimeError, TypeError, ValueError) as error:
            log.debug("integer weight not representable as (q - zp) * scale: %s", error)
    log.info("quantized weight stored as its exact float values (format not affine per "
             "tensor/channel)")
    return module.layer, weight
