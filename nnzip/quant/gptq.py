"""GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"): round a weight matrix column by column, each time moving the rounding
error onto the columns not yet rounded so that the layer's output on calibration data changes as
little as possible.

For a Linear layer y = W x and calibration inputs X, GPTQ minimises ‖W X − W_q X‖² row by row.
With H = X Xᵀ / n (the Hessian of that error, shared by every row), rounding column j to q_j and
updating the remaining columns by −(w_j − q_j) / [H⁻¹]_jj · [H⁻¹]_j,j+1: is the Optimal Brain
Surgeon step; GPTQ takes the columns in one fixed order for all rows, uses the upper Cholesky
factor of H⁻¹ for those rows of the inverse, and applies the updates in blocks of
``block_size`` columns (lazy batch updates). H is damped by ``damping`` · mean(diag H).
``act_order`` takes the columns by decreasing diag H (inputs with the most energy first).

The integers use nnzip's :class:`~nnzip.quant.affine.QScheme` grid: per-tensor and per-channel
scales come from the weight before GPTQ (min-max or MSE, the layer's ``weight_range``);
per-group scales are computed when GPTQ reaches each group, from the weights as updated so far
(with ``act_order`` a group's columns are not contiguous in the order taken, so group scales are
then computed up front). A convolution is the Linear layer of its unfolded input patches
(``F.unfold``): its weight viewed as (out channels, in channels · kernel elements).

:func:`gptq_quantize_weight` is the method on one matrix (any Linear, including a transformer's);
:func:`gptq` applies it to a frozen quantized model, layer by layer in model order, each layer's
Hessian gathered from the model with the earlier layers already GPTQ-quantized.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnzip.core.capture import feed_layer
from nnzip.core.obs import Hessian, inverse_hessian_factor, obs_sweep
from nnzip.data.splits import require_batches
from nnzip.errors import NnzipError
from nnzip.quant.affine import QParams, QScheme
from nnzip.quant.modules import QuantizedLayer, WeightRange, quantized_layers, weight_qparams


def layer_input_rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The inputs of ``layer`` as rows of the matrix its weight multiplies: (samples, columns).

    Linear: every position of ``x``'s last dimension. Conv2d: every kernel patch (unfolded), in
    the column order of ``weight.reshape(out_channels, -1)``.
    """
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(layer, nn.Conv2d) and layer.groups == 1:
        # Pad as the layer does (zeros, reflect, 'same', ...), then unfold without padding.
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        padded = F.pad(x, layer._reversed_padding_repeated_twice, mode=mode)
        patches = F.unfold(padded, layer.kernel_size, dilation=layer.dilation,
                           stride=layer.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    raise NnzipError(f"GPTQ handles Linear and Conv2d layers with groups=1, not "
                     f"{type(layer).__name__}{_groups(layer)}: skip this layer")


def _groups(layer: nn.Module) -> str:
    return f" with groups={layer.groups}" if getattr(layer, "groups", 1) != 1 else ""


def supports_gptq(layer: nn.Module) -> bool:
    """Whether :func:`layer_input_rows` can view ``layer`` as a matrix product."""
    return isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1)


def _column_qparams(scale: torch.Tensor, zero_point: torch.Tensor, column: int,
                    scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) per row for one column of the (rows, columns) matrix."""
    if scheme.granularity == "tensor":
        return scale.reshape(1), zero_point.reshape(1)
    if scheme.granularity == "channel":
        return scale[:, 0], zero_point[:, 0]
    group = column // scheme.group_size
    return scale[:, group, 0], zero_point[:, group, 0]


def gptq_quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, scheme: QScheme, *,
                         weight_range: WeightRange = "minmax", block_size: int = 128,
                         damping: float = 0.01, act_order: bool = False
                         ) -> tuple[torch.Tensor, QParams]:
    """GPTQ integers of a (rows, columns) weight and their quantization parameters.

    ``hessian`` is X Xᵀ / n of the layer's inputs (columns × columns); ``scheme`` a per-tensor,
    per-channel (axis 0) or per-group scheme of the matrix. Returns integers (int8, or uint8 for
    an unsigned scheme) and :class:`QParams` shaped for the matrix, so that
    ``dequantize(q, qparams)`` is the GPTQ weight.
    """
    if weight.dim() != 2:
        raise NnzipError(f"GPTQ quantizes a (rows, columns) matrix, got shape "
                         f"{tuple(weight.shape)}: reshape a convolution weight to "
                         "(out_channels, -1)")
    rows, columns = weight.shape
    if hessian.shape != (columns, columns):
        raise NnzipError(f"the Hessian must be {columns}×{columns} for a weight with {columns} "
                         f"columns, got {tuple(hessian.shape)}")
    if scheme.granularity == "channel" and scheme.axis != 0:
        raise NnzipError("GPTQ quantizes per output channel (axis 0), got axis "
                         f"{scheme.axis}")
    if scheme.granularity == "group" and columns % scheme.group_size:
        raise NnzipError(f"group_size {scheme.group_size} does not divide the {columns} inputs "
                         "of the layer: pick a divisor")
    if block_size < 1 or damping <= 0:
        raise NnzipError(f"GPTQ needs block_size ≥ 1 and damping > 0, got {block_size} and "
                         f"{damping}")
    original = weight.detach().float()
    order = (torch.argsort(torch.diagonal(hessian), descending=True) if act_order
             else torch.arange(columns))
    hessian = hessian.float()[order][:, order]
    inverse_factor = inverse_hessian_factor(hessian, damping)

    lazy_groups = scheme.granularity == "group" and not act_order
    qparams = weight_qparams(original, scheme, weight_range)
    scale, zero_point = qparams.scale.clone(), qparams.zero_point.clone()
    working = original[:, order].clone()
    codes = torch.zeros(rows, columns)

    def round_column(block: torch.Tensor, offset: int, position: int,
                     stop: int) -> torch.Tensor:
        column = int(order[position])
        if lazy_groups and column % scheme.group_size == 0:
            # The group's columns as updated so far (exact when groups align with blocks).
            size = scheme.group_size
            current = torch.cat([block[:, offset:offset + size],
                                 working[:, stop:position + size]], dim=1)
            group = weight_qparams(current, QScheme(
                bits=scheme.bits, symmetric=scheme.symmetric, signed=scheme.signed,
                granularity="channel"), weight_range)
            scale[:, column // size] = group.scale
            zero_point[:, column // size] = group.zero_point
        column_scale, column_zero = _column_qparams(scale, zero_point, column, scheme)
        levels = torch.clamp(torch.round(block[:, offset] / column_scale) + column_zero,
                             scheme.qmin, scheme.qmax)
        codes[:, column] = levels
        return (levels - column_zero) * column_scale

    obs_sweep(working, inverse_factor, round_column, block_size)
    dtype = torch.int8 if scheme.qmin < 0 else torch.uint8
    return codes.to(dtype), QParams(scale=scale, zero_point=zero_point, scheme=scheme)


def _layer_hessian(model: nn.Module, layer: QuantizedLayer, batches: list) -> torch.Tensor:
    columns = layer.layer.weight[0].numel()
    hessian = Hessian(columns)
    # The kernel multiplies the quantized input, divided first by the layer's per-channel
    # factors (SmoothQuant, AWQ) where it has them: that is the X whose product GPTQ preserves.
    feed_layer(model, layer, batches, lambda x: hessian.add(
        layer_input_rows(layer.layer, layer.quantize_input(layer.smooth_input(x)))))
    return hessian.value()


def gptq(model: nn.Module, batches: Iterable, *, block_size: int = 128, damping: float = 0.01,
         act_order: bool = False, layers: Sequence[str] | None = None) -> list[str]:
    """Re-round the weights of a converted model's QuantizedLayers with GPTQ, in place.

    Layers are taken in model order; each one's Hessian comes from ``batches`` (calibration
    inputs, tensors or (inputs, targets) pairs) run through the model with the earlier layers
    already GPTQ-quantized and activations quantized as calibrated. Each layer keeps its own
    scheme (bits, granularity, weight range). Linear and Conv2d layers with groups=1 and affine
    weights (not binary, ternary or pow2) are GPTQ-quantized (or only the named ``layers``);
    other layers keep round-to-nearest. Returns the names of the layers GPTQ quantized.
    """
    available = quantized_layers(model)
    if not available:
        raise NnzipError("the model has no QuantizedLayer: call prepare(), calibrate() and "
                         "convert() before GPTQ")
    unknown = sorted(set(layers or ()) - set(available))
    if unknown:
        raise NnzipError(f"unknown layers {unknown} for GPTQ; quantized layers are: "
                         f"{', '.join(available)}")
    chosen = {name: layer for name, layer in available.items()
              if (layers is None or name in layers) and supports_gptq(layer.layer)
              and isinstance(layer.weight_scheme, QScheme)}
    unfrozen = sorted(name for name, layer in chosen.items() if layer.mode != "quantize")
    if unfrozen:
        raise NnzipError(f"GPTQ needs calibrated, frozen layers, but {unfrozen} are not in "
                         "'quantize' mode: call convert() first")
    batches = require_batches(batches, "GPTQ")
    for layer in chosen.values():
        weight = layer.layer.weight
        codes, qparams = gptq_quantize_weight(
            weight.detach().reshape(weight.shape[0], -1), _layer_hessian(model, layer, batches),
            layer.weight_scheme, weight_range=layer.weight_range, block_size=block_size,
            damping=damping, act_order=act_order)
        if layer.weight_scheme.granularity == "tensor":
            qparams = QParams(scale=qparams.scale.reshape((1,) * weight.dim()),
                              zero_point=qparams.zero_point.reshape((1,) * weight.dim()),
                              scheme=qparams.scheme)
        layer.set_integer_weight(codes.reshape(weight.shape), qparams)
    return list(chosen)
