"""Low-bit and non-uniform weights: binary, ternary and power-of-two, one scale per channel.

- **binary** (BWN of XNOR-Net, Rastegari et al. 2016): w ≈ α · sign(w), α = mean |w| of the
  output channel, the α that minimises ‖w − α·sign(w)‖². 1 bit per weight.
- **ternary** (TWN, Li & Liu 2016): w ≈ α · t, t ∈ {−1, 0, +1}, t = 0 where |w| ≤ Δ with the
  paper's threshold Δ = 0.7 · mean |w| and α = mean |w| over the kept weights (|w| > Δ), the
  α that minimises the error for that Δ. 2 bits per weight.
- **pow2** (logarithmic, Miyashita et al. 2016): w ≈ sign(w) · 2^k, k one of 2^(b−1) − 1
  consecutive exponents whose top is the power of two nearest the channel's largest |w|, or 0.
  b bits per weight (a sign and b − 1 bits of exponent, zero included), and every value is an
  exact signed power of two, so a multiply becomes a shift. Each weight goes to its nearest
  level (the paper rounds log2 |w|; the nearest level has the smaller error).

Each format is a pure function ``weight → (codes, LowBitParams)`` with integer codes (int8, the
weight's shape) and a per-output-channel scale; :func:`lowbit_dequantize` maps them back,
:func:`pack_codes` stores them in exactly 1, 2 or b bits each, and :func:`lowbit_fake_quantize`
is the training-time forward with a straight-through gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from nnzip.codec.bitpack import pack_bits, unpack_bits
from nnzip.errors import NnzipError
from nnzip.quant.affine import MIN_SCALE

LowBitFormat = Literal["binary", "ternary", "pow2"]
WeightFormat = Literal["affine", "binary", "ternary", "pow2"]
WEIGHT_FORMATS: tuple[str, ...] = ("affine", "binary", "ternary", "pow2")
#: Bits per weight of the formats whose width is fixed.
FIXED_BITS: dict[str, int] = {"binary": 1, "ternary": 2}
#: TWN's threshold factor: Δ = 0.7 · mean |w| (Li & Liu 2016, eq. 9).
TERNARY_THRESHOLD = 0.7


@dataclass(frozen=True)
class LowBitScheme:
    """How a weight is quantized to a low-bit format: per output channel (axis 0).

    ``bits`` is 1 for binary and 2 for ternary (``None`` picks them); pow2 takes 2–8 bits.
    """

    format: LowBitFormat
    bits: int | None = None
    #: Always one scale per output channel (read like :attr:`QScheme.granularity`).
    granularity = "channel"

    def __post_init__(self) -> None:
        if self.format not in FIXED_BITS and self.format != "pow2":
            raise NnzipError(f"low-bit format must be 'binary', 'ternary' or 'pow2', got "
                             f"{self.format!r}")
        fixed = FIXED_BITS.get(self.format)
        if fixed is not None:
            if self.bits not in (None, fixed):
                raise NnzipError(f"{self.format} weights take {fixed} bit(s), got bits="
                                 f"{self.bits!r}: leave bits out")
            object.__setattr__(self, "bits", fixed)
        elif not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise NnzipError(f"pow2 weights take 2 to 8 bits (a sign and at least one exponent "
                             f"bit), got {self.bits!r}")

    @property
    def qmin(self) -> int:
        return -self.qmax

    @property
    def qmax(self) -> int:
        """The largest code: ±1 for binary and ternary, ±(2^(b−1) − 1) exponents for pow2."""
        return 1 if self.format in FIXED_BITS else 2 ** (self.bits - 1) - 1


@dataclass(frozen=True)
class LowBitParams:
    """The per-output-channel scale of a low-bit weight, shaped (channels, 1)."""

    scale: torch.Tensor
    scheme: LowBitScheme


def channel_rows(weight: torch.Tensor) -> torch.Tensor:
    """The weight viewed as (output channels, everything else)."""
    if weight.dim() < 2:
        raise NnzipError(f"low-bit weights need an output-channel axis, got a tensor of shape "
                         f"{tuple(weight.shape)}")
    return weight.reshape(weight.shape[0], -1)


def binary_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ±1 (sign, with 0 ↦ +1 so every code fits one bit) and α = mean |w| per channel."""
    rows = channel_rows(weight.detach().float())
    codes = torch.where(rows >= 0, 1, -1).to(torch.int8)
    scale = torch.clamp(rows.abs().mean(dim=1, keepdim=True), min=MIN_SCALE)
    return codes.reshape(weight.shape), scale


def ternary_weights(weight: torch.Tensor, threshold_factor: float = TERNARY_THRESHOLD
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes in {−1, 0, +1} with Δ = threshold_factor · mean |w| and α over |w| > Δ, per channel.

    A channel with no weight above Δ (all zero) gets the smallest scale and all-zero codes.
    """
    rows = channel_rows(weight.detach().float())
    magnitude = rows.abs()
    threshold = threshold_factor * magnitude.mean(dim=1, keepdim=True)
    kept = magnitude > threshold
    codes = (torch.sign(rows) * kept).to(torch.int8)
    kept_sum = (magnitude * kept).sum(dim=1, keepdim=True)
    kept_count = kept.sum(dim=1, keepdim=True).clamp(min=1)
    scale = torch.clamp(kept_sum / kept_count, min=MIN_SCALE)
    return codes.reshape(weight.shape), scale


def _nearest_pow2_exponent(magnitude: torch.Tensor) -> torch.Tensor:
    """The exponent k of the power of two nearest each positive magnitude (linear distance)."""
    exponent = torch.floor(torch.log2(magnitude.clamp(min=torch.finfo(torch.float32).tiny)))
    # Between 2^k and 2^(k+1) the midpoint is 1.5 · 2^k.
    return exponent + (magnitude >= 1.5 * torch.exp2(exponent)).float()


def pow2_weights(weight: torch.Tensor, bits: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed exponent codes and a power-of-two scale per channel.

    Code c ≠ 0 means sign(c) · scale · 2^(|c| − M) with M = 2^(bits−1) − 1, so the levels are
    scale · {2^(1−M), …, 1/2, 1}; code 0 is zero, taken below half the smallest level.
    """
    LowBitScheme("pow2", bits)  # validates bits
    top_code = 2 ** (bits - 1) - 1
    rows = channel_rows(weight.detach().float())
    magnitude = rows.abs()
    largest = magnitude.amax(dim=1, keepdim=True)
    scale = torch.exp2(_nearest_pow2_exponent(largest))
    scale = torch.where(largest > 0, scale, torch.ones_like(scale))  # all-zero channel: any
    relative = magnitude / scale
    exponent = torch.clamp(_nearest_pow2_exponent(relative), max=0)
    smallest = 2.0 ** (1 - top_code)
    magnitude_code = torch.clamp(exponent + top_code, min=1)
    magnitude_code = torch.where(relative >= smallest / 2, magnitude_code,
                                 torch.zeros_like(magnitude_code))
    codes = (torch.sign(rows) * magnitude_code).to(torch.int8)
    return codes.reshape(weight.shape), scale


def lowbit_quantize(weight: torch.Tensor, scheme: LowBitScheme
                    ) -> tuple[torch.Tensor, LowBitParams]:
    """Integer codes and scale of ``weight`` in ``scheme``'s format."""
    if scheme.format == "binary":
        codes, scale = binary_weights(weight)
    elif scheme.format == "ternary":
        codes, scale = ternary_weights(weight)
    else:
        codes, scale = pow2_weights(weight, scheme.bits)
    return codes, LowBitParams(scale=scale, scheme=scheme)


def lowbit_dequantize(codes: torch.Tensor, params: LowBitParams) -> torch.Tensor:
    """Codes back to float weights: scale · code, or scale · sign · 2^(|code| − M) for pow2."""
    rows = channel_rows(codes).float()
    if params.scheme.format == "pow2":
        top_code = params.scheme.qmax
        values = torch.sign(rows) * torch.exp2(rows.abs() - top_code)
    else:
        values = rows
    return (values * params.scale).reshape(codes.shape)


def lowbit_fake_quantize(weight: torch.Tensor, scheme: LowBitScheme) -> torch.Tensor:
    """The quantized weight in the forward pass, a straight-through gradient in the backward.

    Binary and ternary pass the gradient where |w| ≤ 1 and cancel it beyond (the sign STE of
    Hubara et al. 2016 that XNOR-Net trains with); the scale is a statistic of the weight and
    gets no gradient. pow2 passes it everywhere: its top level follows the largest weight, so
    no weight is ever clipped.
    """
    codes, params = lowbit_quantize(weight, scheme)
    rounded = lowbit_dequantize(codes, params).to(weight.dtype)
    if scheme.format == "pow2":
        inside = torch.ones_like(weight, dtype=torch.bool)
    else:
        inside = weight.detach().abs() <= 1
    return rounded + (weight - weight.detach()) * inside


def pack_codes(codes: torch.Tensor, scheme: LowBitScheme) -> torch.Tensor:
    """Codes bit-packed: 1 bit each for binary, 2 for ternary, ``bits`` for pow2."""
    if scheme.format == "binary":
        return pack_bits(codes > 0, 1)
    return pack_bits(codes, scheme.bits, scheme.qmin)


def unpack_codes(packed: torch.Tensor, scheme: LowBitScheme, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``count`` int8 codes, flat."""
    if scheme.format == "binary":
        return (unpack_bits(packed, 1, count) * 2 - 1).to(torch.int8)
    return unpack_bits(packed, scheme.bits, count, scheme.qmin).to(torch.int8)
