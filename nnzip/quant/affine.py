"""Affine (linear) quantization: x ≈ scale · (q − zero_point), q an integer of ``bits`` bits.

One scheme type, :class:`QScheme`, says how a tensor is quantized (bits, symmetric or not, signed
or not, per tensor / per channel / per group); everything else is small pure functions over it:
ranges → (scale, zero point) → integers → floats, and a fake-quantize whose gradient is the
straight-through estimator (Bengio et al. 2013), zeroed where the input was clipped.

Conventions (those of ONNX, TensorRT and PyTorch, so exported models need no conversion):

- symmetric: zero point 0 and a *narrow* signed range [−(2^(b−1) − 1), 2^(b−1) − 1], so that
  +r and −r both map exactly (−127..127 at 8 bits). Used for weights.
- asymmetric: the full range [0, 2^b − 1] (unsigned) or [−2^(b−1), 2^(b−1) − 1] (signed), with the
  zero point chosen so that 0.0 is exactly representable (padding and ReLU zeros stay exact).
- per channel: one (scale, zero point) per slice along ``axis`` (output channels for weights);
  per group: one per ``group_size`` consecutive elements along the last dimension of each channel
  (the row of a Linear weight, or the flattened in·kh·kw of a convolution filter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from nnzip.errors import NnzipError

Granularity = Literal["tensor", "channel", "group"]

#: The smallest scale used, so that a constant (all-equal) tensor does not divide by zero.
MIN_SCALE = 1e-12


@dataclass(frozen=True)
class QScheme:
    """How one tensor is quantized. ``bits`` 1–8 (1 bit: use :mod:`nnzip.quant.lowbit`)."""

    bits: int = 8
    symmetric: bool = True
    signed: bool = True
    granularity: Granularity = "tensor"
    axis: int = 0
    group_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise NnzipError(f"bits must be an integer from 2 to 8 for affine quantization, got "
                             f"{self.bits!r} (1 bit is binary: use the lowbit methods)")
        if self.symmetric and not self.signed:
            raise NnzipError("a symmetric scheme is signed (zero point 0, range ±(2^(b-1)-1)): "
                             "use symmetric=False for an unsigned range")
        if self.granularity not in ("tensor", "channel", "group"):
            raise NnzipError(f"granularity must be 'tensor', 'channel' or 'group', got "
                             f"{self.granularity!r}")
        if self.granularity == "group" and (self.group_size is None or self.group_size < 1):
            raise NnzipError(f"granularity 'group' needs group_size ≥ 1 (e.g. 32, 64, 128), got "
                             f"{self.group_size!r}")

    @property
    def qmin(self) -> int:
        if self.symmetric:
            return -(2 ** (self.bits - 1) - 1)
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin + 1


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of a quantized tensor, shaped to broadcast against its view.

    For per-group schemes the tensor is viewed as ``(channels, groups, group_size)``; see
    :func:`grouped` and :func:`ungrouped`.
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    scheme: QScheme


def grouped(x: torch.Tensor, scheme: QScheme) -> torch.Tensor:
    """The view of ``x`` whose trailing dimensions each (scale, zero point) covers.

    tensor: ``x`` itself; channel: ``axis`` moved first, the rest flattened to one dimension;
    group: ``(channels, groups, group_size)``.
    """
    if scheme.granularity == "tensor":
        return x
    if x.dim() == 0:
        raise NnzipError("a scalar has no channels: use granularity 'tensor'")
    rows = x.movedim(scheme.axis, 0).reshape(x.shape[scheme.axis], -1)
    if scheme.granularity == "channel":
        return rows
    size = scheme.group_size
    if rows.shape[1] % size:
        raise NnzipError(f"group_size {size} does not divide the {rows.shape[1]} elements per "
                         f"channel of a tensor of shape {tuple(x.shape)}: pick a divisor")
    return rows.reshape(rows.shape[0], -1, size)


def ungrouped(view: torch.Tensor, like: torch.Tensor, scheme: QScheme) -> torch.Tensor:
    """Inverse of :func:`grouped`: back to the shape of ``like``."""
    if scheme.granularity == "tensor":
        return view
    moved = like.movedim(scheme.axis, 0)
    return view.reshape(moved.shape).movedim(0, scheme.axis)


def reduce_dims(view: torch.Tensor, scheme: QScheme) -> tuple[int, ...]:
    """Dimensions of the grouped view that one (scale, zero point) spans."""
    if scheme.granularity == "tensor":
        return tuple(range(view.dim()))
    return (view.dim() - 1,)


def qparams_from_range(min_val: torch.Tensor, max_val: torch.Tensor,
                       scheme: QScheme) -> QParams:
    """Scale and zero point covering [min_val, max_val], which is widened to include 0.

    Symmetric: scale = max(|min|, |max|) / qmax, zero point 0. Asymmetric: scale = (max − min) /
    (qmax − qmin), zero point = qmin − round(min / scale), clamped into the integer range.
    """
    min_val = torch.clamp(min_val.detach().float(), max=0.0)
    max_val = torch.clamp(max_val.detach().float(), min=0.0)
    if scheme.symmetric:
        scale = torch.maximum(-min_val, max_val) / scheme.qmax
        scale = torch.clamp(scale, min=MIN_SCALE)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = torch.clamp((max_val - min_val) / (scheme.qmax - scheme.qmin), min=MIN_SCALE)
        zero_point = torch.clamp(scheme.qmin - torch.round(min_val / scale), scheme.qmin,
                                 scheme.qmax).to(torch.int32)
    return QParams(scale=scale, zero_point=zero_point, scheme=scheme)


def tensor_range(x: torch.Tensor, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of ``x`` at the scheme's granularity, keeping dims to broadcast on the view."""
    view = grouped(x.detach(), scheme)
    dims = reduce_dims(view, scheme)
    return view.amin(dim=dims, keepdim=True), view.amax(dim=dims, keepdim=True)


def minmax_qparams(x: torch.Tensor, scheme: QScheme) -> QParams:
    """Scale and zero point from the tensor's own min and max (the usual choice for weights)."""
    return qparams_from_range(*tensor_range(x, scheme), scheme)


def quantize(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """Round to the nearest integer level and clip: int8 for ≤ 8-bit signed, else uint8."""
    scheme = qparams.scheme
    view = grouped(x.detach(), scheme)
    q = torch.clamp(torch.round(view / qparams.scale) + qparams.zero_point, scheme.qmin,
                    scheme.qmax)
    dtype = torch.int8 if scheme.qmin < 0 else torch.uint8
    return ungrouped(q, x, scheme).to(dtype)


def dequantize(q: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """Integers back to floats: scale · (q − zero_point)."""
    scheme = qparams.scheme
    view = grouped(q.to(torch.float32), scheme)
    return ungrouped((view - qparams.zero_point) * qparams.scale, q, scheme)


def fake_quantize(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """Quantize then dequantize in float, differentiable by the straight-through estimator.

    Forward: the rounded value. Backward: gradient 1 where x fell inside the representable range
    and 0 where it was clipped (the clipped STE of Jacob et al. 2018).
    """
    scheme = qparams.scheme
    view = grouped(x, scheme)
    levels = torch.round(view / qparams.scale) + qparams.zero_point
    inside = (levels >= scheme.qmin) & (levels <= scheme.qmax)  # PyTorch's fake_quantize mask
    rounded = (torch.clamp(levels, scheme.qmin, scheme.qmax) - qparams.zero_point) * qparams.scale
    # Value of `rounded`, gradient of `view` masked to the unclipped elements.
    out = rounded.detach() + (view - view.detach()) * inside
    return ungrouped(out, x, scheme)


def quantization_error(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """Mean squared error of the round trip (the quantity MSE calibration minimises)."""
    return torch.mean((dequantize(quantize(x, qparams), qparams) - x) ** 2)
