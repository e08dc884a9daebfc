"""Bit packing: n integers of b bits stored in ceil(n·b / 8) bytes, and back, exactly.

Values are offset to unsigned (``q − low``) and laid out as little-endian bit planes with
``numpy.packbits``: no per-value loops in Python, any width from 1 to 16 bits, and a 4-bit tensor
takes exactly half the bytes of its int8 form. Used for quantized weights and, later, the codes
of weight sharing in the .nnz file.
"""

from __future__ import annotations

import numpy as np
import torch

from nnzip.errors import NnzipError


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 16:
        raise NnzipError(f"bit width must be an integer from 1 to 16, got {bits!r}")


def packed_bytes(count: int, bits: int) -> int:
    """Bytes that ``count`` values of ``bits`` bits take packed."""
    return -(-count * bits // 8)


def pack_bits(values: torch.Tensor, bits: int, low: int = 0) -> torch.Tensor:
    """Pack integer ``values`` in [low, low + 2^bits − 1] into a flat uint8 tensor."""
    _check_bits(bits)
    flat = values.detach().reshape(-1).to(torch.int64).cpu().numpy() - low
    if flat.size and (flat.min() < 0 or flat.max() >= 2**bits):
        raise NnzipError(f"values outside [{low}, {low + 2**bits - 1}] do not fit in {bits} "
                         f"bits (found {flat.min() + low}..{flat.max() + low})")
    planes = ((flat[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_bits(packed: torch.Tensor, bits: int, count: int, low: int = 0) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``count`` int64 values."""
    _check_bits(bits)
    if packed.numel() != packed_bytes(count, bits):
        raise NnzipError(f"{packed.numel()} packed bytes cannot hold exactly {count} values of "
                         f"{bits} bits ({packed_bytes(count, bits)} expected): corrupt data")
    planes = np.unpackbits(packed.cpu().numpy(), count=count * bits, bitorder="little")
    weights = (1 << np.arange(bits)).astype(np.int64)
    values = planes.reshape(count, bits).astype(np.int64) @ weights
    return torch.from_numpy(values + low)
